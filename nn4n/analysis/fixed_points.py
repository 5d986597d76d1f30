"""Fixed points, slow points and the linearization of a trained network (Sussillo & Barak 2013).

For a constant input ``u`` the continuous-time network moves as ``tau dv/dt = G(v) = -v + W_rec f(v) + W_in u + b``.
Its fixed points are the roots of ``G``; they do not depend on tau, but how fast the network moves does:
its speed is ``q = 0.5 |dv/dt|^2`` (in 1/ms^2) and its Jacobian ``diag(1/tau) (-I + W_rec diag(f'(v)))``, whose
eigenvalues say whether a point is stable (every real part below 0), a saddle with k unstable directions, or
unstable. The Euler map the network is simulated with has the same fixed points and the Jacobian
``I + dt J``; nn4n reports the continuous-time one.

The search runs from many starts at once: Newton steps ``J_G d = -G`` with ``J_G = -I + W_rec diag(f'(v))``
(the analytic Jacobian, one product per point and step; no autograd), each checked to decrease ``|G|``, and a
Levenberg-Marquardt step where Newton's does not (near a kink of relu, or far from any root). Newton converges
quadratically once close, to saddles as readily as to attractors; a start that stops at a local minimum of
``q`` above the tolerance is a *slow point*, reported with its speed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from ..data import TrialBatch
from ..experiment import held_out
from ..model import CTRNN
from ..recurrence.rates import RATES

Q_TOL = 1e-20  # a point whose speed q (1/ms^2) is at most this is a fixed point: |dv/dt| <= 1.4e-10 /ms
MERGE_TOL = 1e-6  # points closer than this in max |v_i - v'_i| are one point
SLOW_Q = 1e-6  # a search that stops above this speed (|dv/dt| 1.4e-3 /ms) found neither a fixed nor a slow point
SLOW_MERGE_TOL = 1e-3  # a slow point is placed only as well as the search stops: closer slow points are one
MARGINAL = 1e-6  # |Re(eigenvalue)| (1/ms) below this: a marginal direction (a line attractor's)
CHUNK_ELEMENTS = 1 << 26  # at most this many Jacobian entries (float64) at once: 512 MiB
SHARPNESS = (10.0, 100.0, 1e3, 1e4, 1e5)  # softplus sharpness the kink is rounded off with, from smooth to sharp
HALVINGS = 30  # a Newton step is shortened at most this many times (to 1e-9 of itself) before another step is tried


@dataclass
class FixedPoints:
    """The fixed and slow points of one network, one row per distinct point.

    Arrays are ``(points, ...)``; ``eigenvalues`` are those of the continuous-time Jacobian (1/ms), sorted
    by real part, largest first; ``modes_right`` / ``modes_left`` hold the right and left eigenvectors of
    the ``n_modes`` slowest modes (smallest |real part|) where asked for.
    """

    v: np.ndarray  # (points, neurons) state
    rates: np.ndarray  # (points, neurons) f(v)
    q: np.ndarray  # (points,) speed 0.5 |dv/dt|^2, 1/ms^2
    converged: np.ndarray  # (points,) bool: q <= q_tol (a fixed point); False: a slow point
    iterations: np.ndarray  # (points,) iterations of the best start
    n_starts: np.ndarray  # (points,) how many starts ended at the point
    input_index: np.ndarray  # (points,) which input (see input_names)
    input_names: list[str]
    inputs: np.ndarray  # (inputs, features) the constant inputs
    eigenvalues: np.ndarray  # (points, neurons) complex, 1/ms
    n_unstable: np.ndarray  # (points,) eigenvalues with real part > MARGINAL
    n_marginal: np.ndarray  # (points,) |real part| <= MARGINAL
    readout: np.ndarray  # (points, outputs) W_out f(v) + b_out
    on_kink: np.ndarray  # (points,) neurons whose v is within kink_tol of the rate function's kink
    outlier: np.ndarray  # (points,) bool: farther from the start states than any of them is from their centre
    modes_right: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))  # (points, neurons, n_modes)
    modes_left: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.q)

    @property
    def stability(self) -> list[str]:
        """``stable``, ``saddle (k unstable)``, ``unstable`` (every direction), or ``slow point``; ``marginal``
        is added where a direction neither grows nor decays (within MARGINAL)."""
        out = []
        for k, n_marg, ok, n in zip(self.n_unstable, self.n_marginal, self.converged, (self.v.shape[1],) * len(self)):
            label = "slow point" if not ok else "stable" if k == 0 else "unstable" if k == n else f"saddle ({k} unstable)"
            out.append(label + (f", {n_marg} marginal" if n_marg and ok else ""))
        return out

    def counts(self) -> dict[str, int]:
        """Headline counts: fixed points, stable ones, saddles, slow points, outliers, and the searches that
        stopped faster than ``slow_q`` (found nothing)."""
        fixed = self.converged
        return {"fixed_points": int(fixed.sum()), "stable": int((fixed & (self.n_unstable == 0)).sum()),
                "saddles": int((fixed & (self.n_unstable > 0) & (self.n_unstable < self.v.shape[1])).sum()),
                "slow_points": int((~fixed).sum()), "outliers": int(self.outlier.sum()),
                "stopped": int(self.settings.get("stopped", 0))}

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as numpy arrays (the keys of ``fixed_points.npz``)."""
        return {"v": self.v, "rates": self.rates, "q": self.q, "converged": self.converged, "iterations": self.iterations,
                "n_starts": self.n_starts, "input_index": self.input_index, "input_names": np.array(self.input_names),
                "inputs": self.inputs, "eigenvalues": self.eigenvalues, "n_unstable": self.n_unstable,
                "n_marginal": self.n_marginal, "stability": np.array(self.stability), "readout": self.readout,
                "on_kink": self.on_kink, "outlier": self.outlier, "modes_right": self.modes_right,
                "modes_left": self.modes_left}


def _derivative(activation: str, v: torch.Tensor) -> torch.Tensor:
    """f'(v), with autograd's own kernels (1 at relu's kink from the right, 0 from the left)."""
    rate = RATES[activation]
    grad = torch.ones_like(v)
    rate.times_derivative(grad, rate.f(v), v)
    return grad


@dataclass
class _Problem:
    """``G(v) = -v + W f(v) + c`` for one network and a batch of constant drives ``c`` (one per start)."""

    w: torch.Tensor  # (N, N)
    c: torch.Tensor  # (S, N)
    tau: torch.Tensor  # (N,)
    activation: str
    beta: float | None = None  # the kink rounded off (RateFunction.smoothed), or the exact rate function

    def rates(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(v) and f'(v)."""
        if self.beta is not None:
            return RATES[self.activation].smoothed(v, self.beta)
        return RATES[self.activation].f(v), _derivative(self.activation, v)

    def g(self, v: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """G at the states ``v`` of the starts ``rows``."""
        rates = RATES[self.activation].f(v) if self.beta is None else self.rates(v)[0]
        return -v + rates @ self.w.mT + self.c[rows]

    def jacobian(self, v: torch.Tensor) -> torch.Tensor:
        """dG/dv: (S, N, N)."""
        eye = torch.eye(v.shape[-1], dtype=v.dtype, device=v.device)
        return self.w * self.rates(v)[1][:, None, :] - eye

    def q(self, g: torch.Tensor) -> torch.Tensor:
        return 0.5 * (g / self.tau).square().sum(-1)


def _solve(problem: _Problem, v: torch.Tensor, q_tol: float, max_iter: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped Newton from every start at once: the step ``J_G d = -G``, halved (up to ``HALVINGS`` times) until
    ``|G|^2`` drops by Armijo's rule; where no length does (``J_G`` singular, or a local minimum of ``|G|``), a
    Levenberg-Marquardt step. A start that stops descending is left where it is: a slow point."""
    n_starts, n = v.shape
    lam = torch.full((n_starts,), 1e-3, dtype=v.dtype, device=v.device)
    iterations = torch.zeros(n_starts, dtype=torch.long, device=v.device)
    g = problem.g(v)
    merit = g.square().sum(-1)
    stalled = torch.zeros(n_starts, dtype=torch.bool, device=v.device)
    bar = tqdm(range(max_iter), desc="fixed points", disable=not progress, leave=False)
    for _ in bar:
        active = (problem.q(g) > q_tol) & ~stalled
        if not active.any():
            break
        idx = active.nonzero().flatten()
        va, ga, ma = v[idx], g[idx], merit[idx]
        jac = problem.jacobian(va)
        step, info = torch.linalg.solve_ex(jac, -ga)
        new_v, new_g, new_m = va.clone(), ga.clone(), ma.clone()
        pending = info == 0
        for halving in range(HALVINGS):  # the longest step that decreases |G|^2 enough (Armijo, c = 1e-4)
            if not pending.any():
                break
            rows = pending.nonzero().flatten()
            alpha = 0.5 ** halving
            trial = va[rows] + alpha * step[rows]
            g_trial = problem.g(trial, idx[rows])
            m_trial = g_trial.square().sum(-1)
            ok = m_trial <= (1 - 2e-4 * alpha) * ma[rows]
            new_v[rows[ok]], new_g[rows[ok]], new_m[rows[ok]] = trial[ok], g_trial[ok], m_trial[ok]
            pending[rows[ok]] = False
        stuck = pending | (info != 0)
        if stuck.any():  # Levenberg-Marquardt: (J^T J + lam diag(J^T J)) d = -J^T G
            rows = stuck.nonzero().flatten()
            j = jac[rows]
            jtj = j.mT @ j
            damp = lam[idx[rows], None] * torch.diagonal(jtj, dim1=-2, dim2=-1).clamp_min(1e-12)
            d = torch.linalg.solve(jtj + torch.diag_embed(damp), -(j.mT @ ga[rows, :, None])[..., 0])
            trial = va[rows] + d
            g_trial = problem.g(trial, idx[rows])
            m_trial = g_trial.square().sum(-1)
            better = m_trial < ma[rows]
            new_v[rows[better]], new_g[rows[better]], new_m[rows[better]] = trial[better], g_trial[better], m_trial[better]
            lam_rows = lam[idx[rows]]
            lam[idx[rows]] = torch.where(better, lam_rows / 3, lam_rows * 10)
            stalled[idx[rows]] = ~better & (lam_rows * 10 > 1e12)  # no descent at any damping: a local minimum
        stalled[idx] |= new_m > (1 - 1e-12) * ma  # no progress at all: where descent ends above the tolerance
        v[idx], g[idx], merit[idx] = new_v, new_g, new_m
        iterations[idx] += 1
        bar.set_postfix_str(f"{int(active.sum())} moving")
    return v, iterations


def merge_points(v: np.ndarray, q: np.ndarray, key: np.ndarray, tol: float, fixed: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy: the slowest point of each group of points within ``tol`` (max-abs) of each other, per ``key``
    (the input); a pair that is not two fixed points (``fixed``) within ``SLOW_MERGE_TOL``. Returns the kept
    indices and, for each, how many points it stands for."""
    fixed = np.ones(len(q), bool) if fixed is None else fixed
    order = np.lexsort((q, key))
    kept: list[int] = []
    counts: list[int] = []
    for i in order:
        for j, k in enumerate(kept):
            near = tol if fixed[k] and fixed[i] else max(tol, SLOW_MERGE_TOL)
            if key[k] == key[i] and np.abs(v[k] - v[i]).max() <= near:
                counts[j] += 1
                break
        else:
            kept.append(i)
            counts.append(1)
    return np.array(kept, dtype=int), np.array(counts, dtype=int)


@torch.no_grad()
def find_fixed_points(
    net: CTRNN,
    inputs: Mapping[str, Sequence[float] | np.ndarray],
    starts: np.ndarray,
    *,
    q_tol: float = Q_TOL,
    slow_q: float = SLOW_Q,
    max_iter: int = 200,
    merge_tol: float = MERGE_TOL,
    kink_tol: float = 1e-6,
    n_modes: int = 0,
    progress: bool = False,
) -> FixedPoints:
    """The fixed and slow points of ``net`` for each named constant input (``{"fixation": u, ...}``, ``u`` of
    ``input_size`` features), searched from every state of ``starts`` (starts, neurons) for every input.

    A point with ``q <= q_tol`` is a fixed point, one with ``q <= slow_q`` a slow point; a search that stopped
    faster found neither (counted in ``settings["stopped"]``). Points closer than ``merge_tol`` (max-abs on
    ``v``; slow points ``SLOW_MERGE_TOL``) are merged. Eigen-decompositions are made of the merged points only; ``n_modes`` > 0
    also keeps the right and left eigenvectors of the slowest modes. Deterministic for given starts.
    """
    for key, value in (("q_tol", q_tol), ("slow_q", slow_q), ("merge_tol", merge_tol), ("kink_tol", kink_tol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key}: must be a finite number > 0, got {value!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter: must be an integer > 0, got {max_iter!r}")
    names = list(inputs)
    if not names:
        raise ValueError("inputs: give at least one constant input")
    n_in, n = net.config.input_size, net.structure.n_neurons
    vectors = np.stack([np.asarray(inputs[name], dtype=float).reshape(-1) for name in names])
    if vectors.shape[1] != n_in:
        raise ValueError(f"inputs: each input must have {n_in} features (the network's input_size), got {vectors.shape[1]}")
    starts = np.asarray(starts, dtype=float)
    if starts.ndim != 2 or starts.shape[1] != n or len(starts) == 0:
        raise ValueError(f"starts: must be (starts, {n}) states, got shape {starts.shape}")
    device = net.w_rec.device
    as64 = dict(dtype=torch.float64, device=device)
    w_in, w_rec, w_out = (net.weights()[k].to(**as64) for k in ("w_in", "w_rec", "w_out"))
    b_rec = net.b_rec.detach().to(**as64) if net.b_rec is not None else torch.zeros(n, **as64)
    b_out = net.b_out.detach().to(**as64) if net.b_out is not None else torch.zeros(w_out.shape[0], **as64)
    tau = net.tau.detach().to(**as64)
    drive = torch.as_tensor(vectors, **as64) @ w_in.mT + b_rec  # (inputs, N)
    v0 = torch.as_tensor(starts, **as64)
    index = torch.arange(len(names), device=device).repeat_interleave(len(starts))
    problem = _Problem(w_rec, drive[index], tau, net.config.activation)
    v, iterations = v0.repeat(len(names), 1), torch.zeros(len(index), dtype=torch.long, device=device)
    chunk = max(1, CHUNK_ELEMENTS // n**2)  # starts solved together: their Jacobians take chunk x N^2 floats
    for rows in torch.arange(len(index), device=device).split(chunk):
        part = _Problem(w_rec, problem.c[rows], tau, net.config.activation)
        v[rows], iterations[rows] = _solve(part, v[rows], q_tol, max_iter, progress)
    if RATES[net.config.activation].kink is not None:  # starts stuck at a kink: from the rounded-off function back to it
        stuck = (problem.q(problem.g(v)) > q_tol).nonzero().flatten()
        for rows in stuck.split(chunk):
            for beta in SHARPNESS:
                part = _Problem(w_rec, problem.c[rows], tau, net.config.activation, beta)
                v[rows], more = _solve(part, v[rows], q_tol, max_iter, progress)
                iterations[rows] += more
            v[rows], more = _solve(_Problem(w_rec, problem.c[rows], tau, net.config.activation), v[rows], q_tol, max_iter, progress)
            iterations[rows] += more
    q = problem.q(problem.g(v))
    v_np, q_np, key = v.cpu().numpy(), q.cpu().numpy(), index.cpu().numpy()
    found = np.flatnonzero(q_np <= slow_q)  # the starts whose search stopped faster found nothing
    kept, n_starts = merge_points(v_np[found], q_np[found], key[found], merge_tol, q_np[found] <= q_tol)
    kept = found[kept]
    # the linearization of the distinct points only
    vk = v[kept]
    jac = (problem.jacobian(vk) / tau[:, None])  # diag(1/tau) (-I + W diag(f'(v)))
    eigenvalues, right = torch.linalg.eig(jac)
    order = torch.argsort(eigenvalues.real, dim=-1, descending=True)
    eigenvalues = torch.gather(eigenvalues, -1, order)
    re = eigenvalues.real
    modes_right = modes_left = np.zeros((len(kept), n, 0))
    if n_modes > 0:
        slow = torch.argsort(re.abs(), dim=-1)[:, :n_modes]
        right_sorted = torch.gather(right, -1, order[:, None, :].expand_as(right))
        left_all = torch.linalg.inv(right_sorted).mH  # rows of V^-1: left eigenvectors, conjugated to columns
        pick = slow[:, None, :].expand(-1, n, -1)
        modes_right = torch.gather(right_sorted, -1, pick).cpu().numpy()
        modes_left = torch.gather(left_all, -1, pick).cpu().numpy()
    rates = RATES[net.config.activation].f(vk)
    kink = RATES[net.config.activation].kink
    on_kink = ((vk - kink).abs() <= kink_tol).sum(-1) if kink is not None else torch.zeros(len(kept), dtype=torch.long)
    centre = starts.mean(0)
    reach = np.abs(starts - centre).max()
    return FixedPoints(
        v=v_np[kept], rates=rates.cpu().numpy(), q=q_np[kept], converged=q_np[kept] <= q_tol,
        iterations=iterations.cpu().numpy()[kept], n_starts=n_starts, input_index=key[kept], input_names=names,
        inputs=vectors, eigenvalues=eigenvalues.cpu().numpy(),
        n_unstable=(re > MARGINAL).sum(-1).cpu().numpy(), n_marginal=(re.abs() <= MARGINAL).sum(-1).cpu().numpy(),
        readout=(rates @ w_out.mT + b_out).cpu().numpy(), on_kink=on_kink.cpu().numpy(),
        outlier=np.abs(v_np[kept] - centre).max(1) > 2 * reach,
        modes_right=modes_right, modes_left=modes_left,
        settings={"q_tol": q_tol, "slow_q": slow_q, "max_iter": max_iter, "merge_tol": merge_tol, "kink_tol": kink_tol,
                  "n_starts": len(starts), "stopped": int(len(q_np) - len(found))},
    )


# ----------------------------------------------------------------------------- a trained run's network
def input_vectors(batch: TrialBatch, specs: Sequence[Any]) -> dict[str, np.ndarray]:
    """The constant inputs ``specs`` name, from a batch of trials: ``zero``; a period (``delay``: the mean input
    over its steps in every trial); a period of the trials of one condition (``stimulus[coh=51.2,ground_truth=1]``);
    or a vector of input features. One-line ValueErrors name a bad period, condition or size."""
    inputs, n_in = batch.inputs.cpu().numpy(), batch.inputs.shape[-1]
    steps = np.arange(inputs.shape[1])
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if not isinstance(spec, str):
            vector = np.asarray(spec, dtype=float).reshape(-1)
            if vector.size != n_in:
                raise ValueError(f"analysis.inputs: a vector must have the task's {n_in} input features, got {vector.size}")
            out[f"[{', '.join(f'{x:g}' for x in vector)}]"] = vector
            continue
        if spec == "zero":
            out[spec] = np.zeros(n_in)
            continue
        period, _, where = spec.partition("[")
        if period not in batch.epochs:
            raise ValueError(f"analysis.inputs: {period!r} is not a period of the task (periods: "
                             f"{', '.join(batch.epochs)}); give zero, a period, period[key=value] or a vector")
        trials = np.ones(len(inputs), bool)
        for condition in filter(None, where.rstrip("]").split(",")):
            key, _, value = condition.partition("=")
            if f"{key}" not in batch.conditions:
                raise ValueError(f"analysis.inputs: {spec!r}: no condition {key!r} (conditions: {', '.join(batch.conditions)})")
            trials &= np.isclose(np.asarray(batch.conditions[key], float), float(value))
        start, end = np.asarray(batch.epochs[period]).reshape(len(inputs), -1, 2)[:, 0].T
        during = trials[:, None] & (steps >= start[:, None]) & (steps < end[:, None])
        if not during.any():
            raise ValueError(f"analysis.inputs: {spec!r}: no trial has that period with those conditions")
        out[spec] = inputs[during].mean(0)
    return out


def start_states(v: np.ndarray, valid: np.ndarray, n_starts: int, noise: float, seed: int) -> np.ndarray:
    """``n_starts`` states drawn from the trajectories ``v`` (trials, time, neurons) at valid steps, plus Gaussian
    noise of standard deviation ``noise``; the same for the same seed."""
    rng = np.random.default_rng(seed)
    trial, step = np.nonzero(valid)
    pick = rng.choice(len(trial), n_starts, replace=len(trial) < n_starts)
    states = v[trial[pick], step[pick]]
    return states + noise * rng.standard_normal(states.shape) if noise > 0 else states


def figures(points: FixedPoints, rates: np.ndarray, valid: np.ndarray, area: np.ndarray, area_names: Sequence[str]) -> dict[str, Figure]:
    """The points in the PCA space of the trajectories' rates, the eigenvalue spectra against the stability line,
    and each area's share of the slowest modes."""
    x = rates[valid]
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    pcs = vt[:2]
    kinds = np.array(["slow" if not ok else "stable" if k == 0 else "saddle" for ok, k in zip(points.converged, points.n_unstable)])
    markers = {"stable": ("o", "C2"), "saddle": ("x", "C3"), "slow": (".", "C7")}
    pca = Figure(figsize=(6, 5), layout="constrained")
    ax = pca.subplots()
    for trial in range(min(len(rates), 32)):
        traj = (rates[trial][valid[trial]] - mean) @ pcs.T
        ax.plot(traj[:, 0], traj[:, 1], color="0.8", lw=0.6)
    shown = (points.rates - mean) @ pcs.T
    for kind, (marker, color) in markers.items():
        for i, name in enumerate(points.input_names):
            pick = (kinds == kind) & (points.input_index == i)
            if pick.any():
                ax.scatter(*shown[pick].T, marker=marker, color=color, edgecolors=f"C{i}" if marker == "o" else None,
                           s=40 if kind != "slow" else 10, label=f"{kind} ({name})", zorder=3)
    ax.set_xlabel("PC1 of the rates")
    ax.set_ylabel("PC2")
    ax.set_title(f"{int(points.converged.sum())} fixed points, {int((~points.converged).sum())} slow points")
    ax.legend(fontsize=7)
    spectrum = Figure(figsize=(6, 4.5), layout="constrained")
    ax = spectrum.subplots()
    for kind, (marker, color) in markers.items():
        pick = kinds == kind
        if pick.any():
            eig = points.eigenvalues[pick].ravel()
            ax.scatter(eig.real, eig.imag, s=6, color=color, label=kind, alpha=0.6)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("Re(eigenvalue) (1/ms): > 0 grows, < 0 decays")
    ax.set_ylabel("Im (1/ms)")
    ax.set_title("Jacobian spectra of dv/dt at the points")
    ax.legend(fontsize=8)
    out = {"pca": pca, "spectrum": spectrum}
    if points.modes_right.size:
        shares = np.stack([(np.abs(points.modes_right[:, area == a, :]) ** 2).sum(1) for a in area_names], -1)
        shares = shares / shares.sum(-1, keepdims=True)  # (points, modes, areas)
        rows = shares[: 8].reshape(-1, len(area_names))
        modes = Figure(figsize=(7, 0.3 * len(rows) + 1.5), layout="constrained")
        ax = modes.subplots()
        left = np.zeros(len(rows))
        for j, name in enumerate(area_names):
            ax.barh(np.arange(len(rows)), rows[:, j], left=left, label=name)
            left += rows[:, j]
        ax.set_yticks(np.arange(len(rows)), [f"point {p} mode {m}" for p in range(min(8, len(shares)))
                                             for m in range(shares.shape[1])], fontsize=6)
        ax.set_xlabel("share of the slow mode's squared amplitude per area")
        ax.legend(fontsize=7)
        out["slow_modes"] = modes
    return out


def table(points: FixedPoints) -> tuple[list[str], list[list[Any]]]:
    """One row per point for ``fixed_points.csv``."""
    n_out = points.readout.shape[1]
    header = ["point", "input", "stability", "q", "converged", "n_starts", "iterations", "n_unstable",
              "largest_real_eigenvalue", "slowest_real_eigenvalue", "on_kink", "outlier", *[f"readout_{k}" for k in range(n_out)]]
    rows = []
    for i, label in enumerate(points.stability):
        re = points.eigenvalues[i].real
        rows.append([i, points.input_names[points.input_index[i]], label, f"{points.q[i]:.3g}", bool(points.converged[i]),
                     int(points.n_starts[i]), int(points.iterations[i]), int(points.n_unstable[i]), f"{re.max():.4g}",
                     f"{re[np.abs(re).argmin()]:.4g}", int(points.on_kink[i]), bool(points.outlier[i]),
                     *[f"{x:.4g}" for x in points.readout[i]]])
    return header, rows


@dataclass
class RunFixedPoints:
    """The fixed points of a run's network, and the held-out trajectories they were searched from."""

    points: FixedPoints
    rates: np.ndarray  # (trials, time, neurons)
    valid: np.ndarray  # (trials, time)
    area: np.ndarray  # (neurons,) area names
    area_names: list[str]

    def figures(self) -> dict[str, Figure]:
        return figures(self.points, self.rates, self.valid, self.area, self.area_names)


def of_run(run_dir: str | Path, network: int = 0, checkpoint: str = "best", *, inputs: Sequence[Any] = ("fixation",),
           n_starts: int = 1024, start_noise: float = 0.0, n_trials: int = 256, seed: int = 0,
           trust_task_code: bool = False, device: str = "cpu", progress: bool = False, **solver: Any) -> RunFixedPoints:
    """The fixed points of network ``network`` of the run in ``run_dir``, for the constant ``inputs`` (see
    :func:`input_vectors`), from ``n_starts`` states of its noise-free held-out trajectories (``n_trials`` of
    them, ``start_noise`` added), on ``device`` (``auto``: CUDA where there is one); ``solver`` as
    :func:`find_fixed_points`'s keywords."""
    from ..machine import available_device
    from .runs import load_run  # the run's files, read as data

    for key, value in (("n_starts", n_starts), ("n_trials", n_trials)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"analysis.{key}: must be an integer > 0, got {value!r}")
    if not (isinstance(start_noise, (int, float)) and math.isfinite(start_noise) and start_noise >= 0):
        raise ValueError(f"analysis.start_noise: must be a finite number >= 0, got {start_noise!r}")
    model, cfg = load_run(run_dir, checkpoint, network, trust_task_code=trust_task_code)
    model.to(available_device(device, "device"))
    batch = held_out(cfg, n_trials).batch(0).to(model.w_rec.device)
    vectors = input_vectors(batch, inputs)
    with torch.no_grad():
        model.eval()
        _, activity = model(batch.inputs, noise=False, return_preact=True)
    valid = batch.valid.cpu().numpy()
    starts = start_states(activity.preact.cpu().numpy(), valid, n_starts, start_noise, seed)
    points = find_fixed_points(model, vectors, starts, progress=progress, **solver)
    points.settings |= {"inputs": list(map(str, inputs)), "n_starts": n_starts, "start_noise": start_noise, "seed": seed}
    st = model.structure
    return RunFixedPoints(points, activity.rates.cpu().numpy(), valid, st.area, st.area_names)
