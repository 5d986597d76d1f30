"""Step math every engine shares: time-major buffers, per-neuron alpha, and the gradients of ``h0`` and ``alpha``."""
from __future__ import annotations

import torch

from .rates import RATES


def time_major(x: torch.Tensor) -> torch.Tensor:
    """``(..., B, T, N)`` -> ``(..., T, B, N)``: a view, contiguous for the engines' own buffers."""
    return x.transpose(-3, -2)


def empty_time_major(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``(..., B, T, N)`` buffer shaped like ``like``, laid out time-major."""
    return time_major(like.new_empty(time_major(like).shape))


def step_alpha(alpha: torch.Tensor, w_rec: torch.Tensor) -> torch.Tensor:
    """``alpha`` shaped to broadcast over one step's (B, N) or (K, B, N) state: (1, N) or (K, 1, N)."""
    return alpha.expand(*w_rec.shape[:-2], w_rec.shape[-1]).unsqueeze(-2)


def addmm(base: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``base + x @ w`` (into ``out``, which may be ``base``), for one network (2-D) or a stack of networks (3-D)."""
    return (torch.addmm if w.dim() == 2 else torch.baddbmm)(base, x, w, out=out)


def h0_alpha_grads(
    need: tuple[bool, ...], gv: torch.Tensor, activation: str, h0: torch.Tensor, r0: torch.Tensor, w_a: torch.Tensor,
    alpha: torch.Tensor, preact: torch.Tensor | None, z_all: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``h0`` and ``alpha`` from ``gv = dL/dv_t`` (B, T, N), as the inputs need them
    (``need``: the engine's ``ctx.needs_input_grad``; ``w_a = diag(a) W``; ``z_t = r_{t-1} W^T + drive_t``)."""
    g_h0 = g_alpha = None
    first = gv[..., 0, :]
    if need[1]:
        g_h0 = first @ w_a
        RATES[activation].times_derivative(g_h0, r0, h0)
        g_h0.addcmul_(1 - step_alpha(alpha, w_a), first)
    if need[3]:  # dv_t / da = z_t - v_{t-1}
        z_minus_v = z_all.clone()
        z_minus_v[..., 1:, :] -= preact[..., :-1, :]
        z_minus_v[..., 0, :] -= h0
        g_alpha = z_minus_v.mul_(gv).sum((-3, -2)).sum_to_size(alpha.shape)
    return g_h0, g_alpha
