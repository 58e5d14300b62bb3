"""Optimizers: LION (bit-for-bit lion-pytorch's update, without its per-step allocations), AdamW, SGD."""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable

import torch


class Lion(torch.optim.Optimizer):
    """LION (Chen et al. 2023), bit-for-bit lion-pytorch's update with fewer passes over memory.

    lion-pytorch clones the momentum for every parameter at every step; this reuses one
    scratch buffer, so no memory is allocated (and page-faulted in) per step. Same state_dict.
    `fused=True` runs each parameter's update as one torch.compile'd kernel (one pass over
    memory instead of seven, one launch instead of seven), still bit for bit lion-pytorch's.
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, fused: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        self.fused = fused
        self._scratch: torch.Tensor | None = None

    def _buffer(self, p: torch.Tensor) -> torch.Tensor:
        s = self._scratch
        if s is None or s.numel() < p.numel() or s.device != p.device or s.dtype != p.dtype:
            s = self._scratch = torch.empty(p.numel(), device=p.device, dtype=p.dtype)
        return s[: p.numel()].view_as(p)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update: p *= 1 - lr*wd; p -= lr*sign(b1*m + (1-b1)*g); m = b2*m + (1-b2)*g."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if self.fused:
                self._fused_step(group)
                continue
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg, grad = state["exp_avg"], p.grad
                update = self._buffer(p)
                p.mul_(1.0 - lr * wd)
                torch.mul(exp_avg, beta1, out=update)
                update.add_(grad, alpha=1.0 - beta1).sgn_()
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(grad, alpha=1.0 - beta2)
        return loss

    def _fused_step(self, group: dict) -> None:
        lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
        update = _compiled_lion()
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # never a silent, inexact eager fallback
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                # Scalars rounded to the parameter's dtype first, as eager rounds them (inductor would round
                # 1 - lr*wd differently); Python floats, so no tensor is made or read on the host.
                decay, step = _rounded(1.0 - lr * wd, p.dtype), _rounded(-lr, p.dtype)
                update(p.view(-1), p.grad.view(-1), m.view(-1), decay, step, beta1, beta2)


def _rounded(value: float, dtype: torch.dtype) -> float:
    """`value` rounded to `dtype`, as eager PyTorch rounds a Python scalar for a tensor of that dtype."""
    if dtype == torch.float32:
        return struct.unpack("f", struct.pack("f", value))[0]
    if dtype == torch.float64:
        return value
    return torch.tensor(value, dtype=dtype).item()


@functools.cache
def _compiled_lion() -> Callable:
    """LION's update of one flattened parameter, compiled once for every size (dynamic=True):
    inductor fuses it into one pass over memory (read p, g, m; write p, m), and any model, in
    any number of processes' jobs, reuses the one graph instead of compiling per list of shapes.

    Eager PyTorch computes `m * b + g * (1 - b)` (`add_` with alpha) as one fused multiply-add;
    inductor's prims.fma keeps that rounding in compiled code on the CPU and on CUDA, where a
    plain expression would round twice and drift from lion-pytorch.
    """
    import torch._inductor.inductor_prims  # noqa: F401  (registers torch.ops.prims.fma)

    fma = torch.ops.prims.fma

    def update(p, g, m, decay, step, beta1: float, beta2: float) -> None:
        p.mul_(decay)
        p.add_(fma(g, 1.0 - beta1, m * beta1).sign() * step)
        m.copy_(fma(g, 1.0 - beta2, m * beta2))

    return torch.compile(update, dynamic=True)


def make_optimizer(name: str, params, *, lr: float, weight_decay: float, momentum: float,
                   compile: bool = False) -> torch.optim.Optimizer:
    """LION, AdamW or SGD with momentum, by the grid's name; `compile`: LION's update fused."""
    if name == "lion":
        return Lion(params, lr=lr, weight_decay=weight_decay, fused=compile)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}")
