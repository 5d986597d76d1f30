"""The default engine: the whole sequence as one autograd node with a hand-written backward (BPTT).

Buffers are time-major ``(.., B, T, N)`` views, so that a step is one contiguous slice, which the step's
product writes directly (no separate pass copies the drive in).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .rates import RATES
from .step import addmm, empty_time_major, h0_alpha_grads, step_alpha, time_major


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, drive: torch.Tensor, h0: torch.Tensor, w_rec: torch.Tensor, alpha: torch.Tensor,
        activation: str, return_preact: bool, keep: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if keep is not None and any(ctx.needs_input_grad[:4]):
            raise ValueError("perturb: the fused engine runs perturbations without gradients (torch.no_grad()); "
                             "the reference engine differentiates through them")
        t_len = drive.shape[-2]
        a = step_alpha(alpha, w_rec)
        rate = RATES[activation]
        need_z = ctx.needs_input_grad[3]  # d alpha needs z_t - v_{t-1}
        keep_v = return_preact or need_z or activation == "softplus"
        rates = empty_time_major(drive)
        preact = empty_time_major(drive) if keep_v else drive.new_empty(2, *h0.shape)
        z_all = empty_time_major(drive) if need_z else None
        r0 = rate.f(h0)
        w_t = w_rec.mT
        vs = preact.unbind(-2) if keep_v else preact.unbind(0) * ((t_len + 1) // 2)
        zs = z_all if z_all is not None else rates  # z_t = r_{t-1} W^T + drive_t, where r_t will go
        v, r = h0, r0
        keeps = keep.unbind(-2) if keep is not None else [None] * t_len
        for d, z, v_new, r_new, keep_t in zip(drive.unbind(-2), zs.unbind(-2), vs, rates.unbind(-2), keeps):
            addmm(d, r, w_t, out=z)
            torch.lerp(v, z, a, out=v_new)
            if keep_t is not None:
                v_new.mul_(keep_t)
            rate.into(v_new, r_new)
            if keep_t is not None:
                r_new.mul_(keep_t)
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
        a = step_alpha(alpha, w_rec)
        one_minus_a = 1 - a
        w_a = a.mT * w_rec  # dL/dr_{t-1} = (a * dL/dv_t) W = dL/dv_t (diag(a) W)
        times_derivative = RATES[ctx.activation].times_derivative
        gv = empty_time_major(rates)  # dL/dv_t, then dL/d drive_t = a dL/dv_t
        gvs, rs, grs = gv.unbind(-2), rates.unbind(-2), g_rates.unbind(-2)
        vs = preact.unbind(-2) if preact is not None else rs
        gps = g_preact.unbind(-2) if g_preact is not None else None
        for t in reversed(range(t_len)):
            g = gvs[t]
            if t + 1 < t_len:
                addmm(grs[t], gvs[t + 1], w_a, out=g)
            else:
                g.copy_(grs[t])
            times_derivative(g, rs[t], vs[t])
            if t + 1 < t_len:
                g.addcmul_(one_minus_a, gvs[t + 1])
            if gps is not None:
                g.add_(gps[t])
        need = ctx.needs_input_grad
        g_h0, g_alpha = h0_alpha_grads(need, gv, ctx.activation, h0, r0, w_a, alpha, preact, z_all)
        g_w = None
        gv.mul_(a.unsqueeze(-2))
        if need[2]:  # sum_t dz_t^T r_{t-1}: steps 1.. as one product over their (T-1) B rows, then step 0
            g_w = time_major(gv)[..., 1:, :, :].flatten(-3, -2).mT @ time_major(rates)[..., :-1, :, :].flatten(-3, -2)
            addmm(g_w, gv[..., 0, :].mT, r0, out=g_w)  # r_{-1} = f(h0)
        return gv, g_h0, g_w, g_alpha, None, None, None


def run(drive: torch.Tensor, h0: torch.Tensor, w_rec: torch.Tensor, alpha: torch.Tensor, activation: str,
        return_preact: bool = False, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same as :func:`nn4n.recurrence.reference.run`, as one autograd node with a hand-written backward
    (perturbed runs, ``keep``, without gradients)."""
    return _Fused.apply(drive, h0, w_rec, alpha, activation, return_preact, keep)
