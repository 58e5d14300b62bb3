"""Evaluation: error rates, ReaL labels, the two linear-probe protocols, fine-tuning with TTA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scaling_study import evaluate
from scaling_study.data import load_split
from scaling_study.errors import StudyError
from scaling_study.grid import parse_grid
from scaling_study.plan import JobSpec, expand
from scaling_study.train import init_model, train

FASHION = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not Path(FASHION).exists(), reason="apt-get install dataset-fashion-mnist")


def grid_spec(downstream: str, evaluation: str = "", examples: int = 500) -> JobSpec:
    text = f"""
[study]
name = "evaluate-test"

[data.pretrain]
dataset = "fashion-mnist"
path = "{FASHION}"

{downstream}

[grid]
models = ["B-1/Wi-16"]
examples = [{examples}]
epochs = [1]

[train]
lr = 1e-3
batch_size = 100
precision = "fp32"

[evaluation]
{evaluation}
"""
    (spec,) = expand(parse_grid(text, "test.toml"))
    return spec


def test_topk_errors():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5], [0.0, 0.1, 0.2]])
    labels = torch.tensor([1, 2, 2, 0])
    top1, top2, top5 = evaluate.topk_errors(logits, labels, (1, 2, 5))
    assert top1 == pytest.approx(0.5)  # rows 0 and 2 right
    assert top2 == pytest.approx(0.25)  # row 1's label is its second guess; row 3's is last
    assert top5 == 0.0  # k beyond the classes counts every class


def test_real_error_uses_label_sets_and_skips_empty_ones(tmp_path):
    predictions = torch.tensor([3, 1, 4, 1, 5])
    sets = [[3, 7], [2], [], [1], [0, 4]]
    # Scored: images 0 (right), 1 (wrong), 3 (right), 4 (wrong); image 2 has no labels.
    assert evaluate.real_error(predictions, sets) == pytest.approx(0.5)
    path = tmp_path / "real.json"
    path.write_text(json.dumps(sets))
    assert evaluate.load_real_labels(str(path)) == sets
    path.write_text('{"not": "a list"}')
    with pytest.raises(StudyError, match="list of lists"):
        evaluate.load_real_labels(str(path))
    with pytest.raises(StudyError, match="4 images"):
        evaluate.real_error(predictions, sets[:4])


def clusters(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs with an offset and a scale far from standardized, as raw features are."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 1.5
    labels = torch.randint(0, classes, (n,), generator=g)
    return 5.0 + 3.0 * (centres[labels] + torch.randn(n, dim, generator=g)), labels


def test_both_probe_protocols_fit_separable_features():
    train_x, train_y = clusters(4000, 32, 5, seed=0)
    test_x, test_y = clusters(1000, 32, 5, seed=1)
    fast = evaluate.probe_fast(train_x, train_y, 5)
    paper = evaluate.probe_paper(train_x, train_y, 5, epochs=10, lr=1e-2, batch_size=1000, label_smoothing=0.3, seed=0)
    again = evaluate.probe_paper(train_x, train_y, 5, epochs=10, lr=1e-2, batch_size=1000, label_smoothing=0.3, seed=0)
    assert torch.equal(paper.weight, again.weight)  # seeded: the same head every time
    for head in (fast, paper):
        (error,) = evaluate.topk_errors(head(test_x), test_y, (1,))
        assert error < 0.05  # the Bayes error of these blobs is about 0.01
    # The fast head folds the standardization in: it reads raw features.
    assert not fast.weight.requires_grad and fast.weight.shape == (5, 32)


@needs_fashion
def test_finetune_tta_and_real_on_fashion_mnist(tmp_path):
    labels = [[int(y)] for y in load_split("fashion-mnist", FASHION, "test", 28).labels]
    real = tmp_path / "real.json"
    real.write_text(json.dumps(labels))
    spec = grid_spec(
        f'[[data.downstream]]\ndataset = "fashion-mnist"\npath = "{FASHION}"\nprotocol = "finetune"',
        f'upstream = false\nfinetune_epochs = 1\nfinetune_lr_head = 0.1\nfinetune_lr_body = 0.1\n'
        f'tta_crops = 3\nreal_labels = "{real}"',
    )
    model = init_model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = evaluate.evaluate(model, spec, torch.device("cpu"), epoch=1)
    assert set(metrics) == {"fashion-mnist/finetune", "fashion-mnist/tta", "fashion-mnist/real"}
    assert all(0 <= v <= 1 for v in metrics.values())
    # Measured: one epoch (15 steps) of fine-tuning an untrained B-1/Wi-16 at lr 0.1 gives 0.43
    # error, 0.42 with 3 test-time crops (chance: 0.9).
    assert metrics["fashion-mnist/finetune"] < 0.55
    assert metrics["fashion-mnist/tta"] < 0.55
    # With one correct label per image, ReaL accuracy is the TTA prediction's plain accuracy.
    assert metrics["fashion-mnist/real"] == metrics["fashion-mnist/tta"]
    # Fine-tuning works on a copy: the pre-trained model is untouched.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@needs_fashion
def test_a_downstream_dataset_with_other_channels_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "colour"
    folder.mkdir()
    for name, count in (("train_data_batch_1.npz", 40), ("val_data.npz", 20)):
        np.savez(folder / name, data=rng.integers(0, 256, (count, 3 * 8 * 8), dtype=np.uint8),
                 labels=rng.integers(1, 4, count))
    spec = grid_spec(f'[[data.downstream]]\ndataset = "colour-blobs"\npath = "{folder}"')
    with pytest.raises(StudyError) as error:
        train(spec, checkpoint=tmp_path / "ck.pt")
    message = str(error.value)
    assert "'colour-blobs'" in message and "3 channel" in message and "\n" not in message
    assert not (tmp_path / "ck.pt").exists()  # refused before any training


@needs_fashion
def test_probe_examples_fits_the_probe_on_a_stratified_subset():
    downstream = f'[[data.downstream]]\ndataset = "fashion-mnist"\npath = "{FASHION}"\nprotocol = "linear"'
    errors = {}
    for n in (0, 20):  # 0: all 60,000 training images; 20: two per class
        spec = grid_spec(downstream, f'upstream = false\nprobe = "fast"\nprobe_examples = {n}')
        metrics = evaluate.evaluate(init_model(spec), spec, torch.device("cpu"), epoch=1)
        errors[n] = metrics["fashion-mnist/linear"]
    # Measured on an untrained B-1/Wi-16: 0.300 with all, 0.616 with 20.
    assert errors[0] < 0.35 and errors[20] > errors[0] + 0.1
