"""benchmarks/step_bytes.py: the GPU step modelled from counted ops agrees with the exact counts it builds on."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import step_bytes  # noqa: E402

from scaling_study.bench import train_flops_per_example  # noqa: E402
from scaling_study.models import parse_model  # noqa: E402


def test_counted_gemm_flops_are_the_exact_training_flops_and_the_blockwise_loss_moves_less():
    name, classes, batch = "B-2/Wi-64", 1000, 512
    exact = batch * train_flops_per_example(parse_model(name, "test"), 3 * 32 * 32, classes)
    counts = {}
    for label, loss, pad in (("as written", step_bytes.old_loss, 1), ("now", step_bytes.mixed_loss, 64)):
        counts[label] = step_bytes.eager_step(name, classes, batch, 32, loss=loss, pad_classes_to=pad, lion="eager",
                                              x_dtype=torch.bfloat16)
    (old, old_update), (new, new_update) = counts["as written"], counts["now"]
    assert old.gemm_flops == exact  # every GEMM of the step seen, and nothing else counted as one
    assert new.gemm_flops == exact + 6 * batch * 64 * 24  # the padded head: 24 more classes in 3 products
    assert new.total < old.total - 2 * batch * classes * 4  # at least the fp32 copy of the logits, read and written
    parameters = sum(p.numel() for p in step_bytes.meta_model(name, classes, 32, 1).parameters())
    assert old_update.total == new_update.total == parameters * 4 * 17  # unfused LION: 17 fp32 passes


def test_cuda_autocast_policy_casts_as_cuda_autocast_does():
    x = torch.empty(4, 8, device="meta")
    w = torch.empty(8, 8, device="meta")
    with step_bytes.CudaAutocastPolicy():
        out = torch.nn.functional.linear(x, w)
        assert out.dtype == torch.bfloat16
        assert torch.nn.functional.layer_norm(out, (8,)).dtype == torch.float32
        assert torch.nn.functional.gelu(out).dtype == torch.bfloat16
