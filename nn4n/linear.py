"""The input and readout products, ``x W^T + b``, with weight gradients ordered for CPU BLAS."""
from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .recurrence.step import addmm


def _narrow_first(narrow: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
    """``narrow^T wide`` for ``narrow`` (.., M, k) with few columns; fewer than 4 are padded with zeros to 4:
    CPU BLAS runs ``(k, M) @ (M, N)`` for k = 2, 3 about half as fast as for k = 4 once N >= 256."""
    k = narrow.shape[-1]
    if k < 4:
        narrow = torch.cat([narrow, narrow.new_zeros(*narrow.shape[:-1], 4 - k)], -1)
    return (narrow.mT @ wide)[..., :k, :]


class _Linear(torch.autograd.Function):
    """``x W^T + b`` for one network, ``x`` (M, in), ``w`` (out, in), or K stacked: ``x`` (K, M, in), ``w`` (K, out, in).

    The weight gradient puts the narrow side of ``w`` first: CPU BLAS runs ``(3, M) @ (M, N)`` several
    times faster than ``(N, M) @ (M, 3)``, and autograd's ``bmm`` backward would pick the slow one for
    the readout (and its ``mm`` backward, for the input weights, unless they are stored column-major).
    Where the inputs are the narrow side, the bias gradient is one more column of that product (of ones).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        return x @ w.mT if b is None else addmm(b.unsqueeze(-2), x, w.mT)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g_w = g_b = None
        if w.shape[-2] <= w.shape[-1]:  # few outputs (the readout)
            g_w = _narrow_first(g, x) if need_w else None
            g_b = g.sum(-2) if need_b else None
        elif need_w or need_b:  # few inputs
            both = _narrow_first(torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1) if need_b else x, g)
            g_w = both[..., : x.shape[-1], :].mT if need_w else None
            g_b = both[..., -1, :] if need_b else None
        return g @ w if need_x else None, g_w, g_b


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` over the last dimension; with a stacked ``w`` (K, out, in), ``x`` is (K, ..., in)."""
    flat = x.reshape(-1, x.shape[-1]) if w.dim() == 2 else x.reshape(x.shape[0], -1, x.shape[-1])
    return _Linear.apply(flat, w, b).view(*x.shape[:-1], w.shape[-2])
