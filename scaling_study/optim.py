"""Optimizers: LION (bit-for-bit lion-pytorch's update, without its per-step allocations), AdamW, SGD."""

from __future__ import annotations

from collections.abc import Callable

import torch


class Lion(torch.optim.Optimizer):
    """LION (Chen et al. 2023), bit-for-bit lion-pytorch's update with fewer passes over memory.

    lion-pytorch clones the momentum for every parameter at every step; this reuses one
    scratch buffer, so no memory is allocated (and page-faulted in) per step. Same state_dict.
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
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


def make_optimizer(name: str, params, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """LION, AdamW or SGD with momentum, by the grid's name."""
    if name == "lion":
        return Lion(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}")
