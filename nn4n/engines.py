"""Recurrence engines: the time loop ``v <- v + a (W r + drive_t - v)``, ``r = f(v)``.

Every engine takes the input drive for all steps at once (``W_in u + b``, noise folded in) and
returns the rates after each step; all must give the same values and gradients as ``reference``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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


def _activate(name: str, v: torch.Tensor, out: torch.Tensor) -> None:
    """``out = f(v)`` without allocating (``out`` may be a strided slice of a larger buffer)."""
    if name in ("relu", "retanh"):
        torch.clamp_min(v, 0, out=out)
        if name == "retanh":
            out.tanh_()
    elif name == "tanh":
        torch.tanh(v, out=out)
    elif name == "sigmoid":
        torch.sigmoid(v, out=out)
    else:
        torch._C._nn.softplus(v, 1, 20, out=out)


def _derivative(name: str, r: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    """``f'(v)`` from the rates ``r = f(v)`` (softplus needs ``v``), as autograd computes it."""
    if name == "relu":
        return (r > 0).to(r.dtype)
    if name == "tanh":
        return 1 - r * r
    if name == "sigmoid":
        return r * (1 - r)
    if name == "retanh":
        return (1 - r * r).mul_(r > 0)
    assert v is not None
    return torch.sigmoid(v).masked_fill_(v > 20, 1)  # softplus, threshold 20 as in F.softplus


class _Fused(torch.autograd.Function):
    """Whole-sequence recurrence with hand-written BPTT; buffers are (B, T, N), steps are slices."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, drive: torch.Tensor, h0: torch.Tensor, w_rec: torch.Tensor, alpha: torch.Tensor,
        activation: str, return_preact: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t_len, n = drive.shape
        a = alpha.expand(n)
        need_z = ctx.needs_input_grad[3]  # d alpha needs z_t - v_{t-1}
        keep_v = return_preact or need_z or activation == "softplus"
        rates = drive.new_empty(b, t_len, n)
        preact = drive.new_empty(b, t_len, n) if keep_v else drive.new_empty(2, b, n)
        z_all = drive.new_empty(b, t_len, n) if need_z else None
        r0 = ACTIVATIONS[activation](h0)
        w_t = w_rec.t()
        v, r = h0, r0
        for t in range(t_len):
            v_new = preact[:, t] if keep_v else preact[t % 2]
            z = z_all[:, t] if z_all is not None else v_new
            torch.addmm(drive[:, t], r, w_t, out=z)
            torch.lerp(v, z, a, out=v_new)
            v, r = v_new, rates[:, t]
            _activate(activation, v, r)
        ctx.activation = activation
        ctx.save_for_backward(h0, r0, w_rec, alpha, rates, preact if keep_v else None, z_all)
        return rates, (preact if return_preact else None)

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, g_rates: torch.Tensor, g_preact: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        h0, r0, w_rec, alpha, rates, preact, z_all = ctx.saved_tensors
        b, t_len, n = rates.shape
        a = alpha.expand(n)
        one_minus_a = 1 - a
        w_a = a[:, None] * w_rec  # dL/dr_{t-1} = (a * dL/dv_t) W = dL/dv_t (diag(a) W)
        deriv = _derivative(ctx.activation, rates, preact)
        gv = torch.empty_like(rates)  # dL/dv_t, then dL/dz_t = a dL/dv_t = dL/d drive_t
        torch.mul(g_rates[:, -1], deriv[:, -1], out=gv[:, -1])
        if g_preact is not None:
            gv[:, -1] += g_preact[:, -1]
        for t in range(t_len - 2, -1, -1):
            out = gv[:, t]
            torch.addmm(g_rates[:, t], gv[:, t + 1], w_a, out=out)
            out.mul_(deriv[:, t]).addcmul_(one_minus_a, gv[:, t + 1])
            if g_preact is not None:
                out += g_preact[:, t]
        need = ctx.needs_input_grad
        g_h0 = g_w = g_alpha = None
        if need[1]:
            g_h0 = (gv[:, 0] @ w_a).mul_(_derivative(ctx.activation, r0, h0)).addcmul_(one_minus_a, gv[:, 0])
        if need[3]:
            scratch = deriv
            torch.sub(z_all[:, 1:], preact[:, :-1], out=scratch[:, 1:])
            torch.sub(z_all[:, 0], h0, out=scratch[:, 0])
            g_alpha = scratch.mul_(gv).sum((0, 1)).sum_to_size(alpha.shape)
        gv.mul_(a)
        if need[2]:
            r_prev = deriv  # reuse the buffer: r_{t-1} for every step
            r_prev[:, 1:] = rates[:, :-1]
            r_prev[:, 0] = r0
            g_w = gv.reshape(-1, n).t() @ r_prev.reshape(-1, n)
        return gv, g_h0, g_w, g_alpha, None, None


def fused(
    drive: torch.Tensor,
    h0: torch.Tensor,
    w_rec: torch.Tensor,
    alpha: torch.Tensor,
    activation: str,
    return_preact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same as :func:`reference`, as one autograd node with a hand-written backward (BPTT)."""
    return _Fused.apply(drive, h0, w_rec, alpha, activation, return_preact)


ENGINES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor | None]]] = {"reference": reference, "fused": fused}
