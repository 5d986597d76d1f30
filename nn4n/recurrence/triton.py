"""The ``triton`` engine: the whole time loop in one GPU kernel launch, forward and backward.

One program owns a block of trials of one network for all T steps and keeps its state in
registers; the recurrent product ``r_{t-1} W^T`` reads ``r_{t-1}`` back from the rates it has just
written, in chunks, so any N fits. Same values and gradients as ``reference`` (tested on the CPU
through Triton's interpreter, ``TRITON_INTERPRET=1``); ``torch.set_float32_matmul_precision("high")``
(``train.matmul_precision=high``) makes its float32 products TF32.
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import ACTIVATIONS, triton_runs_on
from .rates import RATES
from .step import h0_alpha_grads, step_alpha

BLOCK_B = 16  # trials per program (the smallest tile tl.dot takes)
BLOCK_K = 16  # inner dimension of each chunk of the recurrent product


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _act(v, ACT: tl.constexpr):
    """``f(v)`` for the rate function at position ``ACT`` of ``nn4n.recurrence.ACTIVATIONS``."""
    if ACT == 0:
        r = tl.maximum(v, 0.0)
    elif ACT == 1:
        r = _tanh(v)
    elif ACT == 2:  # softplus, beta 1, threshold 20 (as torch)
        r = tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))
    elif ACT == 3:
        r = 1.0 / (1.0 + tl.exp(-v))
    else:
        r = _tanh(tl.maximum(v, 0.0))
    return r


@triton.jit
def _times_derivative(g, r, v, ACT: tl.constexpr):
    """``g f'(v)``, from ``r = f(v)`` (softplus from ``v``)."""
    if ACT == 0:
        g = tl.where(r > 0, g, 0.0)
    elif ACT == 1:
        g = g * (1.0 - r * r)
    elif ACT == 2:
        g = tl.where(v > 20.0, g, g / (1.0 + tl.exp(-v)))
    elif ACT == 3:
        g = g * r * (1.0 - r)
    else:
        g = tl.where(r > 0, g * (1.0 - r * r), 0.0)
    return g


@triton.jit
def _times_matrix(acc, x_ptr, w_ptr, rows, row_ok, N, row_stride, PRECISION: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc + x @ w``: ``x`` (rows, N) at ``x_ptr + row * row_stride``; ``w`` (BLOCK_N, BLOCK_N) row-major,
    zero beyond N, so its loads need no mask (masked loads of a whole matrix spill registers)."""
    ks = tl.arange(0, BLOCK_K)
    w_tile = ks[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    for k0 in range(0, BLOCK_N, BLOCK_K):  # a loop, not unrolled: Triton pipelines its loads
        x = tl.load(x_ptr + rows[:, None] * row_stride + (k0 + ks)[None, :],
                    mask=row_ok[:, None] & (k0 + ks < N)[None, :], other=0.0)
        acc += tl.dot(x, tl.load(w_ptr + k0 * BLOCK_N + w_tile), input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _tile(alpha_ptr, B, T, N, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's network, trials (rows of a (K B, ...) buffer) and neurons, with their masks and alphas;
    offsets of (trial, t=0, neuron) in (K, B, T, N) and (K, B, T+1, N) buffers; the block's first trial in the latter."""
    blocks = tl.cdiv(B, BLOCK_B)
    net, blk = tl.program_id(0) // blocks, tl.program_id(0) % blocks
    rows = blk * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < B, cols < N
    ok = row_ok[:, None] & col_ok[None, :]
    a = tl.load(alpha_ptr + net * N + cols, mask=col_ok, other=0.0)[None, :]
    trials = net * B + rows
    seq = trials[:, None] * T * N + cols[None, :]
    ext = trials[:, None] * (T + 1) * N + cols[None, :]
    return net, trials, row_ok, cols, ok, a, seq, ext, (net * B + blk * BLOCK_B) * (T + 1) * N


@triton.jit
def _forward_kernel(drive_ptr, h0_ptr, wt_ptr, alpha_ptr, rates_ptr, preact_ptr, z_ptr, keep_ptr, B, T, N,
                    ACT: tl.constexpr, KEEP_V: tl.constexpr, KEEP_Z: tl.constexpr, HAS_KEEP: tl.constexpr,
                    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """rates (K, B, T+1, N): slot 0 holds f(h0), slot t+1 holds r_t; drive, preact and z are (K, B, T, N);
    keep (B, T, N), the same for every network: 0 where a neuron is silenced."""
    net, trials, row_ok, cols, ok, a, seq, ext, first = _tile(alpha_ptr, B, T, N, BLOCK_B, BLOCK_N)
    wt = wt_ptr + net * BLOCK_N * BLOCK_N
    v = tl.load(h0_ptr + trials[:, None] * N + cols[None, :], mask=ok, other=0.0)
    tl.store(rates_ptr + ext, _act(v, ACT), mask=ok)
    prev = rates_ptr + first  # r_{t-1} of this block's first trial
    for t in range(T):
        tl.debug_barrier()  # r_{t-1}, stored by other threads of this program, is read back in chunks
        z = tl.load(drive_ptr + seq + t * N, mask=ok, other=0.0)
        z = _times_matrix(z, prev + t * N, wt, tl.arange(0, BLOCK_B), row_ok, N, (T + 1) * N,
                          PRECISION, BLOCK_N, BLOCK_K)
        v = v + a * (z - v)
        if HAS_KEEP:
            keep = tl.load(keep_ptr + seq - net * B * T * N + t * N, mask=ok, other=1.0)
            v = v * keep
            tl.store(rates_ptr + ext + (t + 1) * N, _act(v, ACT) * keep, mask=ok)
        else:
            tl.store(rates_ptr + ext + (t + 1) * N, _act(v, ACT), mask=ok)
        if KEEP_V:
            tl.store(preact_ptr + seq + t * N, v, mask=ok)
        if KEEP_Z:
            tl.store(z_ptr + seq + t * N, z, mask=ok)


@triton.jit
def _backward_kernel(g_rates_ptr, g_preact_ptr, rates_ptr, preact_ptr, wa_ptr, alpha_ptr, gv_ptr, B, T, N,
                     ACT: tl.constexpr, HAS_GP: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """gv (K, B, T+1, N) = dL/dv_t, slot T zero on entry; rates as in the forward; the rest (K, B, T, N)."""
    net, trials, row_ok, cols, ok, a, seq, ext, first = _tile(alpha_ptr, B, T, N, BLOCK_B, BLOCK_N)
    wa = wa_ptr + net * BLOCK_N * BLOCK_N
    block_ext = gv_ptr + first
    g_next = tl.zeros((BLOCK_B, BLOCK_N), dtype=a.dtype)
    for i in range(T):
        t = T - 1 - i
        tl.debug_barrier()  # dL/dv_{t+1}, stored by other threads of this program, is read back in chunks
        g = tl.load(g_rates_ptr + seq + t * N, mask=ok, other=0.0)
        g = _times_matrix(g, block_ext + (t + 1) * N, wa, tl.arange(0, BLOCK_B), row_ok, N, (T + 1) * N,
                          PRECISION, BLOCK_N, BLOCK_K)
        r = tl.load(rates_ptr + ext + (t + 1) * N, mask=ok, other=0.0)
        v = r
        if ACT == 2:  # softplus' derivative needs v
            v = tl.load(preact_ptr + seq + t * N, mask=ok, other=0.0)
        g = _times_derivative(g, r, v, ACT) + (1.0 - a) * g_next
        if HAS_GP:
            g += tl.load(g_preact_ptr + seq + t * N, mask=ok, other=0.0)
        tl.store(gv_ptr + ext + t * N, g, mask=ok)
        g_next = g


def _block_n(n: int) -> int:
    """Neurons per tile: N rounded up to a power of two (at least 16)."""
    return max(16, triton.next_power_of_2(n))


def _launch_args(dtype: torch.dtype, n: int) -> dict[str, Any]:
    """Tile sizes, warps and matmul precision for this problem. Chosen so that no thread spills registers in
    float32 or TF32 up to N=256 on sm_80 and sm_90 (``scripts/triton_compile_check.py``)."""
    block_n = _block_n(n)
    tf32 = dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
    return {"PRECISION": "tf32" if tf32 else "ieee", "BLOCK_B": BLOCK_B, "BLOCK_N": block_n,
            "BLOCK_K": BLOCK_K, "num_warps": 4 if block_n <= 64 else 8}


def _padded(w: torch.Tensor) -> torch.Tensor:
    """(N, N) or (K, N, N) weights as (K, BLOCK_N, BLOCK_N), zero beyond N, contiguous."""
    pad = _block_n(w.shape[-1]) - w.shape[-1]
    return torch.nn.functional.pad(_stacked(w, 3), (0, pad, 0, pad)).contiguous()


def _stacked(x: torch.Tensor, dims: int) -> torch.Tensor:
    """``x`` with a leading network dimension (K=1 when it has none), contiguous."""
    return (x if x.dim() == dims else x.unsqueeze(0)).contiguous()


class TritonRecurrence(torch.autograd.Function):
    """Whole-sequence recurrence: the two kernels above, then the weight gradient as one product."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, drive: torch.Tensor, h0: torch.Tensor, w_rec: torch.Tensor, alpha: torch.Tensor,
        activation: str, return_preact: bool, keep: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if keep is not None and any(ctx.needs_input_grad[:4]):
            raise ValueError("perturb: the triton engine runs perturbations without gradients (torch.no_grad()); "
                             "the reference engine differentiates through them")
        if not triton_runs_on(drive.device):
            raise ValueError(f"engine 'triton' runs on CUDA tensors (or under TRITON_INTERPRET=1), not {drive.device}")
        d = _stacked(drive, 4)
        k, b, t_len, n = d.shape
        if k * b * (t_len + 1) * n >= 2**31:  # the kernels index with 32-bit offsets
            raise ValueError(f"engine 'triton': {k} x {b} x {t_len} x {n} activity buffers are too large; use fused")
        need_z = ctx.needs_input_grad[3]
        keep_v = return_preact or need_z or activation == "softplus"
        rates = d.new_empty(k, b, t_len + 1, n)
        preact = torch.empty_like(d) if keep_v else d
        z_all = torch.empty_like(d) if need_z else d
        _forward_kernel[(k * triton.cdiv(b, BLOCK_B),)](
            d, _stacked(h0, 3), _padded(w_rec.mT), _stacked(alpha.expand(w_rec.shape[:-1]), 2), rates, preact, z_all,
            d if keep is None else keep.contiguous(), b, t_len, n, ACT=ACTIVATIONS.index(activation), KEEP_V=keep_v,
            KEEP_Z=need_z, HAS_KEEP=keep is not None, **_launch_args(d.dtype, n),
        )
        ctx.activation, ctx.shape = activation, drive.shape
        ctx.save_for_backward(h0, w_rec, alpha, rates, preact if keep_v else None, z_all if need_z else None)
        out = rates[:, :, 1:] if drive.dim() == 4 else rates[0, :, 1:]
        return out, (preact.view(drive.shape) if return_preact else None)

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, g_rates: torch.Tensor, g_preact: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        h0, w_rec, alpha, rates, preact, z_all = ctx.saved_tensors
        k, b, t_ext, n = rates.shape
        act, shape = ctx.activation, ctx.shape
        a = step_alpha(alpha, w_rec)
        w_a = a.mT * w_rec  # dL/dr_{t-1} = (a * dL/dv_t) W
        gv = rates.new_zeros(k, b, t_ext, n)
        g_r = g_rates.reshape(k, b, t_ext - 1, n).contiguous()
        g_p = g_preact.reshape(k, b, t_ext - 1, n).contiguous() if g_preact is not None else g_r
        _backward_kernel[(k * triton.cdiv(b, BLOCK_B),)](
            g_r, g_p, rates, preact if preact is not None else g_r, _padded(w_a),
            _stacked(alpha.expand(w_rec.shape[:-1]), 2), gv, b, t_ext - 1, n,
            ACT=ACTIVATIONS.index(act), HAS_GP=g_preact is not None, **_launch_args(rates.dtype, n),
        )
        need = ctx.needs_input_grad
        stacked = len(shape) == 4
        unstack = (lambda x: x) if stacked else (lambda x: x[0])
        r0 = RATES[act].f(h0)
        preact_s = preact.view(shape) if preact is not None else None
        z_s = z_all.view(shape) if z_all is not None else None
        g_h0, g_alpha = h0_alpha_grads(need, unstack(gv)[..., :-1, :], act, h0, r0, w_a, alpha, preact_s, z_s)
        gv.mul_(_stacked(a, 3).unsqueeze(-2))  # dL/d drive_t = a dL/dv_t; slot T stays zero
        g_w = None
        if need[2]:  # slot t of gv pairs with slot t of rates (r_{t-1}); slot T is zero
            g_w = unstack(gv.flatten(1, 2).mT @ rates.flatten(1, 2))
        return unstack(gv[:, :, :-1]), g_h0, g_w, g_alpha, None, None, None



def run(drive: torch.Tensor, h0: torch.Tensor, w_rec: torch.Tensor, alpha: torch.Tensor, activation: str,
        return_preact: bool = False, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same as :func:`nn4n.recurrence.reference.run`, one Triton kernel per direction (perturbed runs, ``keep``,
    without gradients)."""
    return TritonRecurrence.apply(drive, h0, w_rec, alpha, activation, return_preact, keep)
