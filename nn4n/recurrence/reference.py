"""The plain autograd loop over time, which every other engine must match."""
from __future__ import annotations

import torch

from .rates import RATES
from .step import step_alpha, time_major


def run(drive: torch.Tensor, h0: torch.Tensor, w_rec: torch.Tensor, alpha: torch.Tensor, activation: str,
        return_preact: bool = False, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rates (and on request ``v``) after each step. ``drive`` (B, T, N), ``h0`` (B, N), ``w_rec`` (N, N)
    ``[post, pre]``, ``alpha`` (N,); results (B, T, N), laid out time-major. ``keep`` (B, T, N), 0 or 1:
    where 0, the step's ``v`` and rate are 0 (silenced neurons, :mod:`nn4n.perturb`).

    K networks at once: a leading network dimension on every argument, ``drive`` (K, B, T, N),
    ``h0`` (K, B, N), ``w_rec`` (K, N, N), ``alpha`` (K, N).
    """
    f = RATES[activation].f
    w_t, a = w_rec.mT, step_alpha(alpha, w_rec)
    v, rates, preacts = h0, [], []
    r = f(v)
    keeps = keep.unbind(-2) if keep is not None else [None] * drive.shape[-2]
    for drive_t, keep_t in zip(drive.unbind(-2), keeps):  # unbind, not drive[..., t, :]: backward stays O(T)
        v = torch.lerp(v, drive_t + r @ w_t, a)
        r = f(v)
        if keep_t is not None:
            v, r = v * keep_t, r * keep_t
        rates.append(r)
        preacts.append(v)
    return time_major(torch.stack(rates, -3)), (time_major(torch.stack(preacts, -3)) if return_preact else None)
