"""Recurrence engines: the time loop ``v <- v + a (W r + drive_t - v)``, ``r = f(v)``.

Every engine takes the input drive for all steps at once (``W_in u + b``, noise folded in) and
returns the rates after each step; all must give the same values and gradients as ``reference``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "retanh": lambda x: torch.tanh(F.relu(x)),
}


def reference(
    drive: torch.Tensor,
    h0: torch.Tensor,
    w_rec: torch.Tensor,
    alpha: torch.Tensor,
    activation: str,
    return_preact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain autograd loop over time. ``drive`` (B, T, N), ``h0`` (B, N), ``alpha`` (N,)."""
    f = ACTIVATIONS[activation]
    w_t = w_rec.t()
    v, rates, preacts = h0, [], []
    r = f(v)
    for t in range(drive.shape[1]):
        v = torch.lerp(v, torch.addmm(drive[:, t], r, w_t), alpha)
        r = f(v)
        rates.append(r)
        preacts.append(v)
    return torch.stack(rates, 1), (torch.stack(preacts, 1) if return_preact else None)


ENGINES = {"reference": reference}
