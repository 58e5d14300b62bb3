"""Training-step FLOP/s as a fraction of the same process's fp32 matmul FLOP/s (CPU or GPU).

    python benchmarks/train_mfu.py [--model B-6/Wi-256] [--classes 1000] [--batch 1024] [--rounds 5]

The step is train.py's own (Stepper: forward, MixUp + label-smoothing loss, backward, LION),
on a batch already on the device (data loading is measured by the loader's benchmark, not here).
FLOPs are counted exactly: 2 per multiply-accumulate; the forward costs 2*MACs and the backward
4*MACs minus the first layer's input gradient, which is never computed:
    train FLOPs per example = 2 * (3 * MACs - MACs_embedding).
The counting and the GEMM timing are scaling_study/bench.py's (what `study bench` uses).
The reference is torch.mm in fp32 in the same process, two ways: the model's own GEMM shapes
(forward, input- and weight-gradient of every layer, FLOP-weighted) and a large 4096^3 product.
Timings alternate reference and step for `rounds` rounds and keep each one's best (least
disturbed by other processes); the ratio is step FLOP/s over reference FLOP/s.

Where the step's time goes, measured in the same rounds:
  - GEMM chain: the same layers' products alone (no bias, norm, activation, loss or optimizer),
    forward and backward through autograd: the most any step built on torch.mm can reach;
  - activation: the model's GELU (ReLU for S-MLPs), forward and backward, at the step's shapes;
  - optimizer: the LION update alone, on the model's parameters and gradients;
  - rest: what is left (LayerNorm, bias and residual adds, the loss, autograd bookkeeping).
`bound` is the ratio the step would have if it cost only GEMM chain + activation: an upper
bound for any implementation of this model whose GEMMs are torch's.

    python benchmarks/train_mfu.py --gpu-model [--model B-12/Wi-1024 --classes 11230 --batch 16384]

models the paper's GPU step instead, on the CPU (benchmarks/step_bytes.py): its GEMM FLOPs and
the bytes its other ops move, counted from the code's own ops, as the step was written and as
CUDA's defaults run it now, and the fraction of the matmul peak they imply at --peak-tflops and
--bandwidth-tbs (an H100's dense bf16 798 TFLOP/s and a device-to-device copy's 3.0 TB/s).
Compiling the model on the CPU to count the fused kernels takes minutes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from results_file import write  # noqa: E402

from scaling_study.bench import best_time, gemm_shapes, matmul_rate, train_flops_per_example  # noqa: E402
from scaling_study.loader import Batch  # noqa: E402
from scaling_study.models import build, parse_model  # noqa: E402
from scaling_study.optim import Lion  # noqa: E402
from scaling_study.train import Stepper, keep_freed_memory  # noqa: E402


def layer_sizes(spec, input_dim: int, classes: int) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every linear layer, in order."""
    hidden = spec.width * spec.expansion if spec.kind == "bottleneck" else spec.width
    blocks = [(spec.width, hidden), (hidden, spec.width)] if spec.kind == "bottleneck" else [(spec.width, spec.width)]
    return [(input_dim, spec.width), *blocks * spec.depth, (spec.width, classes)]


def gemm_chain(spec, input_dim: int, classes: int, batch: int, device: torch.device):
    """A step of the model's matrix products only: bias-free linears, forward and backward."""
    chain = torch.nn.Sequential(*(torch.nn.Linear(i, o, bias=False) for i, o in layer_sizes(spec, input_dim, classes)))
    chain = chain.to(device)
    x = torch.randn(batch, input_dim, device=device)
    grad = torch.randn(batch, classes, device=device)

    def step() -> None:
        chain.zero_grad(set_to_none=True)
        chain(x).backward(grad)

    return step


def activation(spec, batch: int, device: torch.device):
    """The model's activations alone, forward and backward, at the step's shapes (all blocks)."""
    hidden = spec.width * spec.expansion if spec.kind == "bottleneck" else spec.width
    fn = torch.nn.functional.gelu if spec.kind == "bottleneck" else torch.nn.functional.relu
    inputs = [torch.randn(batch, hidden, device=device, requires_grad=True) for _ in range(spec.depth)]
    grad = torch.randn(batch, hidden, device=device)

    def step() -> None:
        for u in inputs:
            u.grad = None
            fn(u).backward(grad)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="default: B-6/Wi-256 (B-12/Wi-1024 with --gpu-model)")
    parser.add_argument("--classes", type=int, help="default: 1000 (11230 with --gpu-model)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, help="default: 1024 (16384 with --gpu-model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps timed per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true",
                        help="as train.compile: torch.compile the model, and LION's update fused (Lion(fused=True))")
    parser.add_argument("--default-malloc", action="store_true", help="skip train.keep_freed_memory (CPU)")
    parser.add_argument("--lion-pytorch", action="store_true", help="lion-pytorch's Lion instead of ours, for comparison")
    parser.add_argument("--gpu-model", action="store_true",
                        help="model the GPU step from counted bytes instead (defaults: B-12/Wi-1024, 11230 classes, batch 16384)")
    parser.add_argument("--peak-tflops", type=float, default=798.0, help="--gpu-model: dense bf16 matmul rate")
    parser.add_argument("--bandwidth-tbs", type=float, default=3.0, help="--gpu-model: memory bandwidth")
    args = parser.parse_args()
    for key, cpu, gpu in (("model", "B-6/Wi-256", "B-12/Wi-1024"), ("classes", 1000, 11230), ("batch", 1024, 16384)):
        if getattr(args, key) is None:
            setattr(args, key, gpu if args.gpu_model else cpu)
    if args.gpu_model:
        gpu_model(args)
        return
    device = torch.device(args.device)
    if not args.default_malloc:
        keep_freed_memory(device)

    spec = parse_model(args.model, "benchmark")
    input_dim = 3 * args.resolution**2
    torch.manual_seed(0)
    model = build(spec, input_dim, args.classes).to(device)
    if args.lion_pytorch:
        import lion_pytorch

        optimizer = lion_pytorch.Lion(model.parameters(), lr=1e-5, weight_decay=1e-3)
    else:
        optimizer = Lion(model.parameters(), lr=1e-5, weight_decay=1e-3, fused=args.compile)
    forward = torch.compile(model) if args.compile else model
    stepper = Stepper(model, forward, optimizer, label_smoothing=0.3, grad_clip=0.0, precision="fp32",
                      device=device, micro_batch_size=0, notes=[])
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        x=torch.randn(args.batch, 3, args.resolution, args.resolution, generator=g).to(device),
        y=torch.randint(0, args.classes, (args.batch,), generator=g).to(device),
        y_mix=torch.randint(0, args.classes, (args.batch,), generator=g).to(device),
        lam=torch.rand(args.batch, generator=g).to(device),
    )

    def step() -> None:
        stepper.backward(batch)
        stepper.step(1e-5)

    flops_per_step = args.batch * train_flops_per_example(spec, input_dim, args.classes)
    shapes = gemm_shapes(spec, input_dim, args.classes, args.batch)
    assert sum(2.0 * m * k * n for m, k, n in shapes) == flops_per_step  # the count is the GEMMs' own

    chain_step = gemm_chain(spec, input_dim, args.classes, args.batch, device)
    activation_step = activation(spec, args.batch, device)
    step_s, shaped, large = float("inf"), 0.0, 0.0
    chain_s = activation_s = optimizer_s = float("inf")
    big = [(4096, 4096, 4096)]
    for _ in range(args.rounds):
        shaped = max(shaped, matmul_rate(shapes, device, 3))
        large = max(large, matmul_rate(big, device, 3))
        step_s = min(step_s, best_time(step, device, args.steps))
        chain_s = min(chain_s, best_time(chain_step, device, args.steps))
        activation_s = min(activation_s, best_time(activation_step, device, args.steps))
        optimizer_s = min(optimizer_s, best_time(lambda: optimizer.step(), device, args.steps))
    rate = flops_per_step / step_s
    rest_s = step_s - chain_s - activation_s - optimizer_s
    bound = flops_per_step / (chain_s + activation_s) / shaped
    figures = {
        "model": args.model, "classes": args.classes, "resolution": args.resolution, "batch": args.batch,
        "precision": "fp32", "optimizer": "lion", "threads": torch.get_num_threads(),
        "compile": args.compile, "keep_freed_memory": not args.default_malloc,
        "lion": "lion-pytorch" if args.lion_pytorch else "scaling_study.optim",
        "train_flops_per_example": flops_per_step / args.batch,
        "step_s": step_s, "images_per_s": args.batch / step_s, "step_flops_per_s": rate,
        "matmul_flops_per_s_model_shapes": shaped, "matmul_flops_per_s_4096": large,
        "ratio_vs_model_shapes": rate / shaped, "ratio_vs_4096": rate / large,
        "gemm_chain_s": chain_s, "activation_s": activation_s, "optimizer_s": optimizer_s, "rest_s": rest_s,
        "ratio_gemm_chain": flops_per_step / chain_s / shaped, "bound_gemm_chain_plus_activation": bound,
    }
    print(f"{args.model}, {args.classes} classes, {args.resolution}px, batch {args.batch}, fp32, LION on {device}:")
    print(f"  step {step_s * 1e3:.1f} ms = {args.batch / step_s:,.0f} img/s = {rate / 1e9:.1f} GFLOP/s "
          f"({flops_per_step / args.batch / 1e6:.2f} MFLOP per example)")
    print(f"  torch.mm: {shaped / 1e9:.1f} GFLOP/s on the step's shapes, {large / 1e9:.1f} GFLOP/s at 4096^3")
    print(f"  ratio: {rate / shaped:.1%} of matmul at the step's shapes, {rate / large:.1%} of the 4096^3 matmul")
    print(f"  step = GEMM chain {chain_s * 1e3:.1f} ms ({chain_s / step_s:.1%}) + activation {activation_s * 1e3:.1f} ms "
          f"({activation_s / step_s:.1%}) + optimizer {optimizer_s * 1e3:.1f} ms ({optimizer_s / step_s:.1%}) "
          f"+ rest {rest_s * 1e3:.1f} ms ({rest_s / step_s:.1%})")
    print(f"  the GEMM chain alone reaches {flops_per_step / chain_s / shaped:.1%}; "
          f"GEMM chain + activation, with everything else free, {bound:.1%}")
    variant = "" if not (args.compile or args.default_malloc or args.lion_pytorch or args.classes != 1000) else (
        "_" + "_".join(name for name, on in (("compile", args.compile), ("default-malloc", args.default_malloc),
                                             ("lion-pytorch", args.lion_pytorch),
                                             (f"{args.classes}-classes", args.classes != 1000)) if on))
    print(f"wrote {write('train_mfu' + variant, figures)}")


def gpu_model(args: argparse.Namespace) -> None:
    """The modelled GPU step, before and after, from bytes counted on the CPU (benchmarks/step_bytes.py)."""
    import step_bytes

    name, classes, batch = args.model, args.classes, args.batch
    peak, bandwidth = args.peak_tflops * 1e12, args.bandwidth_tbs * 1e12
    reads = step_bytes.streamed_read_rate(args.resolution)  # first: compiling leaves worker processes behind
    rows = step_bytes.model_step(name, classes, batch, args.resolution, peak, bandwidth)
    print(f"{name}, {classes} classes, {args.resolution}px, batch {batch}, bf16, LION, resident data; modelled at "
          f"{args.peak_tflops:g} TFLOP/s and {args.bandwidth_tbs:g} TB/s:")
    for row in rows:
        parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in row.parts.items())
        print(f"  {row.label}:\n    non-GEMM {row.bytes / 1e9:.1f} GB ({parts}); GEMMs {row.gemm_flops / 1e12:.2f} TFLOP; "
              f"step {row.step_s * 1e3:.1f} ms = {row.fraction_of_peak:.3f} of the matmul peak")
    step_rate = batch / rows[-1].step_s
    print(f"  streamed loader's reads on this CPU ({reads['threads']} threads, {reads['cores']} cores), "
          f"against the modelled step's {step_rate:,.0f} img/s (the copy to the GPU, on its own stream, not included):\n"
          f"    epochs after the first {reads['images_per_s']:,.0f} img/s = {reads['images_per_s'] / step_rate:.2f}x; "
          f"first epoch (pages mapped as they are read) {reads['first_epoch_images_per_s']:,.0f} img/s = "
          f"{reads['first_epoch_images_per_s'] / step_rate:.2f}x")
    figures = {"model": name, "classes": classes, "resolution": args.resolution, "batch": batch, "precision": "bf16",
               "peak_flops_per_s": peak, "bandwidth_bytes_per_s": bandwidth, "method": step_bytes.__doc__.strip(),
               "configurations": [row.row() for row in rows], "streamed_reads": reads,
               "streamed_reads_over_step": reads["images_per_s"] / step_rate,
               "streamed_first_epoch_over_step": reads["first_epoch_images_per_s"] / step_rate}
    print(f"wrote {write('train_mfu_gpu_model', figures)}")


if __name__ == "__main__":
    main()
