"""AdaBound (Luo, Xiong, Liu and Sun, "Adaptive Gradient Methods with Dynamic Bound of Learning Rate", ICLR 2019).

Adam whose per-parameter step size ``lr / (sqrt(v_hat) + eps)`` is clipped, at step t, to

    [final_lr * (1 - 1 / (gamma * t + 1)),  final_lr * (1 + 1 / (gamma * t))]

Both bounds start wide (0 and infinity: Adam) and converge to ``final_lr`` (SGD with momentum at that rate), so
training moves smoothly from Adam's fast start to SGD's generalisation. This is the authors' practical form (their
reference code, ``pip install adabound``): bias-corrected moments, L2 weight decay added to the gradient, and
``final_lr`` scaled by the learning-rate schedule (``final_lr * lr / base_lr``). It is re-implemented here
because that package (0.0.5, 2019) calls ``Tensor.add(scalar, tensor)`` signatures that torch deprecates (a
warning on every step) and reads ``p.data`` outside ``torch.no_grad()``; tests check that both give the same
weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

__all__ = ["AdaBound", "bounds"]


def bounds(step: int, final_lr: float, gamma: float) -> tuple[float, float]:
    """The clipping interval of the per-parameter step size at step ``step`` (1-based)."""
    return final_lr * (1 - 1 / (gamma * step + 1)), final_lr * (1 + 1 / (gamma * step))


class AdaBound(torch.optim.Optimizer):
    """AdaBound (``amsbound=True``: AMSBound). Defaults as the paper: lr 1e-3, final_lr 0.1, gamma 1e-3.

    Each parameter group may carry ``base_lr`` (its peak rate; default its ``lr`` at construction): when a
    schedule changes ``lr``, the final rate follows as ``final_lr * lr / base_lr``.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 final_lr: float = 0.1, gamma: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0.0,
                 amsbound: bool = False) -> None:
        if lr <= 0 or final_lr <= 0:
            raise ValueError(f"lr and final_lr must be > 0, got {lr} and {final_lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        defaults = {"lr": lr, "betas": tuple(betas), "final_lr": final_lr, "gamma": gamma, "eps": eps,
                    "weight_decay": weight_decay, "amsbound": amsbound}
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            final_lr = group["final_lr"] * group["lr"] / group["base_lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("AdaBound does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if group["amsbound"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                # Adam's moments
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["amsbound"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    denom = state["max_exp_avg_sq"].sqrt().add_(group["eps"])
                else:
                    denom = exp_avg_sq.sqrt().add_(group["eps"])
                # Adam's step size per parameter, clipped to the bounds, times the first moment
                step_size = group["lr"] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                lower, upper = bounds(t, final_lr, group["gamma"])
                # as float32 scalars: a tiny gamma's 1/(gamma t) overflowed them ("cannot be converted to type float")
                big = torch.finfo(denom.dtype).max
                step_size, lower, upper = min(step_size, big), min(lower, big), min(upper, big)
                eta = torch.full_like(denom, step_size).div_(denom).clamp_(lower, upper)
                p.sub_(eta.mul_(exp_avg))
        return loss
