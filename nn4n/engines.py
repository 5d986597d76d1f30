"""Recurrence engines: the time loop ``v <- v + a (W r + drive_t - v)``, ``r = f(v)``.

Every engine takes the input drive for all steps at once (``W_in u + b``, noise folded in) and
returns the rates after each step; all must give the same values and gradients as ``reference``.
Shapes are batch first, ``(B, T, N)``; ``reference`` and ``fused`` return them laid out time-major
(``(T, B, N)`` in memory, a transposed view), so that each step reads and writes one contiguous
``(B, N)`` block, and read a time-major ``drive`` without copying it.
"""
from __future__ import annotations

import importlib.util
import os
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


def _step_alpha(alpha: torch.Tensor, w_rec: torch.Tensor) -> torch.Tensor:
    """``alpha`` shaped to broadcast over one step's (B, N) or (K, B, N) state: (1, N) or (K, 1, N)."""
    return alpha.expand(*w_rec.shape[:-2], w_rec.shape[-1]).unsqueeze(-2)


def time_major(x: torch.Tensor) -> torch.Tensor:
    """``(..., B, T, N)`` -> ``(..., T, B, N)``: a view, contiguous for the engines' own buffers."""
    return x.transpose(-3, -2)


def _empty_time_major(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``(..., B, T, N)`` buffer shaped like ``like``, laid out time-major."""
    return time_major(like.new_empty(time_major(like).shape))


def _mm(base: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``base + x @ w`` (into ``out``, which may be ``base``), for one network (2-D) or a stack of networks (3-D)."""
    return (torch.addmm if w.dim() == 2 else torch.baddbmm)(base, x, w, out=out)


def reference(
    drive: torch.Tensor,
    h0: torch.Tensor,
    w_rec: torch.Tensor,
    alpha: torch.Tensor,
    activation: str,
    return_preact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Plain autograd loop over time. ``drive`` (B, T, N), ``h0`` (B, N), ``alpha`` (N,).

    K networks at once: a leading network dimension on every argument, ``drive`` (K, B, T, N),
    ``h0`` (K, B, N), ``w_rec`` (K, N, N), ``alpha`` (K, N).
    """
    f = ACTIVATIONS[activation]
    w_t, a = w_rec.mT, _step_alpha(alpha, w_rec)
    v, rates, preacts = h0, [], []
    r = f(v)
    for drive_t in drive.unbind(-2):  # unbind, not drive[..., t, :]: backward stays O(T)
        v = torch.lerp(v, drive_t + r @ w_t, a)
        r = f(v)
        rates.append(r)
        preacts.append(v)
    return time_major(torch.stack(rates, -3)), (time_major(torch.stack(preacts, -3)) if return_preact else None)


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


def _times_derivative_(name: str, grad: torch.Tensor, r: torch.Tensor, v: torch.Tensor | None) -> None:
    """``grad *= f'(v)`` in place, with autograd's own kernels (``r = f(v)``; softplus needs ``v``)."""
    aten = torch.ops.aten
    if name in ("tanh", "retanh"):
        aten.tanh_backward.grad_input(grad, r, grad_input=grad)
    elif name == "sigmoid":
        aten.sigmoid_backward.grad_input(grad, r, grad_input=grad)
    elif name == "softplus":
        aten.softplus_backward.grad_input(grad, v, 1, 20, grad_input=grad)
    if name in ("relu", "retanh"):  # r > 0 exactly where v > 0
        aten.threshold_backward.grad_input(grad, r, 0, grad_input=grad)


def _h0_alpha_grads(
    need: tuple[bool, ...], gv: torch.Tensor, act: str, h0: torch.Tensor, r0: torch.Tensor, w_a: torch.Tensor,
    alpha: torch.Tensor, preact: torch.Tensor | None, z_all: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``h0`` and ``alpha`` from ``gv = dL/dv_t`` (B, T, N), as the inputs need them."""
    g_h0 = g_alpha = None
    first = gv[..., 0, :]
    if need[1]:
        g_h0 = first @ w_a
        _times_derivative_(act, g_h0, r0, h0)
        g_h0.addcmul_(1 - _step_alpha(alpha, w_a), first)
    if need[3]:  # dv_t / da = z_t - v_{t-1}
        z_minus_v = z_all.clone()
        z_minus_v[..., 1:, :] -= preact[..., :-1, :]
        z_minus_v[..., 0, :] -= h0
        g_alpha = z_minus_v.mul_(gv).sum((-3, -2)).sum_to_size(alpha.shape)
    return g_h0, g_alpha


class _Fused(torch.autograd.Function):
    """Whole-sequence recurrence with hand-written BPTT; buffers are time-major (.., B, T, N) views, so a step is
    one contiguous slice, which the step's product writes directly (no separate pass copies the drive in)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, drive: torch.Tensor, h0: torch.Tensor, w_rec: torch.Tensor, alpha: torch.Tensor,
        activation: str, return_preact: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t_len = drive.shape[-2]
        a = _step_alpha(alpha, w_rec)
        need_z = ctx.needs_input_grad[3]  # d alpha needs z_t - v_{t-1}
        keep_v = return_preact or need_z or activation == "softplus"
        rates = _empty_time_major(drive)
        preact = _empty_time_major(drive) if keep_v else drive.new_empty(2, *h0.shape)
        z_all = _empty_time_major(drive) if need_z else None
        r0 = ACTIVATIONS[activation](h0)
        w_t = w_rec.mT
        vs = preact.unbind(-2) if keep_v else preact.unbind(0) * ((t_len + 1) // 2)
        zs = z_all if z_all is not None else rates  # z_t = r_{t-1} W^T + drive_t, where r_t will go
        v, r = h0, r0
        for d, z, v_new, r_new in zip(drive.unbind(-2), zs.unbind(-2), vs, rates.unbind(-2)):
            _mm(d, r, w_t, out=z)
            torch.lerp(v, z, a, out=v_new)
            _activate(activation, v_new, r_new)
            v, r = v_new, r_new
        ctx.activation = activation
        ctx.save_for_backward(h0, r0, w_rec, alpha, rates, preact if keep_v else None, z_all)
        return rates, (preact if return_preact else None)

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, g_rates: torch.Tensor, g_preact: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        h0, r0, w_rec, alpha, rates, preact, z_all = ctx.saved_tensors
        t_len = rates.shape[-2]
        a = _step_alpha(alpha, w_rec)
        one_minus_a = 1 - a
        w_a = a.mT * w_rec  # dL/dr_{t-1} = (a * dL/dv_t) W = dL/dv_t (diag(a) W)
        act = ctx.activation
        gv = _empty_time_major(rates)  # dL/dv_t, then dL/d drive_t = a dL/dv_t
        gvs, rs, grs = gv.unbind(-2), rates.unbind(-2), g_rates.unbind(-2)
        vs = preact.unbind(-2) if preact is not None else rs
        gps = g_preact.unbind(-2) if g_preact is not None else None
        for t in reversed(range(t_len)):
            g = gvs[t]
            if t + 1 < t_len:
                _mm(grs[t], gvs[t + 1], w_a, out=g)
            else:
                g.copy_(grs[t])
            _times_derivative_(act, g, rs[t], vs[t])
            if t + 1 < t_len:
                g.addcmul_(one_minus_a, gvs[t + 1])
            if gps is not None:
                g.add_(gps[t])
        need = ctx.needs_input_grad
        g_h0, g_alpha = _h0_alpha_grads(need, gv, act, h0, r0, w_a, alpha, preact, z_all)
        g_w = None
        gv.mul_(a.unsqueeze(-2))
        if need[2]:  # sum_t dz_t^T r_{t-1}: steps 1.. as one product over their (T-1) B rows, then step 0
            g_w = time_major(gv)[..., 1:, :, :].flatten(-3, -2).mT @ time_major(rates)[..., :-1, :, :].flatten(-3, -2)
            _mm(g_w, gv[..., 0, :].mT, r0, out=g_w)  # r_{-1} = f(h0)
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


def triton(
    drive: torch.Tensor,
    h0: torch.Tensor,
    w_rec: torch.Tensor,
    alpha: torch.Tensor,
    activation: str,
    return_preact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same as :func:`reference`, one Triton kernel per direction (:mod:`nn4n.triton_engine`, imported on use)."""
    from .triton_engine import TritonRecurrence

    return TritonRecurrence.apply(drive, h0, w_rec, alpha, activation, return_preact)


if importlib.util.find_spec("triton") is not None:  # CUDA builds of torch bring it
    ENGINES["triton"] = triton


def triton_runs_on(device: torch.device) -> bool:
    """Whether the triton engine can run on ``device``: CUDA, or anything under ``TRITON_INTERPRET=1``."""
    return "triton" in ENGINES and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
