"""Figures for studying a trained network's activity record.

Every plotting function takes an activity record (see :func:`load_activity`) and
returns a :class:`matplotlib.figure.Figure` built without pyplot, so it works
under any backend (Agg included) and leaves pyplot's figure registry untouched.
"""

from __future__ import annotations

from os import PathLike

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .stats import logistic_fit

Record = dict[str, np.ndarray]  # an activity record: activity.npz, or activity_from_run's result


def load_activity(path: str | PathLike) -> Record:
    """Load an activity record saved as ``.npz`` into a plain dict."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def peak_order(rates_2d: np.ndarray) -> np.ndarray:
    """Neuron indices of a (time, neurons) array sorted by time of peak rate (stable); neurons whose rate
    never changes (silent ones among them) come last."""
    peak = np.argmax(rates_2d, axis=0)
    flat = np.ptp(rates_2d, axis=0) == 0
    return np.lexsort((peak, flat))


def _dt(act: Record) -> float:
    return float(act["dt"]) if "dt" in act else 1.0


def _length(act: Record, trial: int) -> int:
    return int(act["lengths"][trial]) if "lengths" in act else act["rates"].shape[1]


def _valid(act: Record) -> np.ndarray:
    """Boolean (trials, time): steps inside the trial (t < length) or with mask > 0."""
    n_trials, n_time = act["rates"].shape[:2]
    valid = np.zeros((n_trials, n_time), bool)
    if "lengths" in act:
        valid |= np.arange(n_time)[None, :] < np.asarray(act["lengths"])[:, None]
    if "mask" in act:
        valid |= np.asarray(act["mask"]) > 0
    if "lengths" not in act and "mask" not in act:
        valid[:] = True
    return valid


def _is_classification(act: Record) -> bool:
    """The record's task kind, as the trainer wrote it (``kind``: classification or regression)."""
    return str(act["kind"]) == "classification"


def _areas(act: Record) -> list[tuple[str, np.ndarray]]:
    """(name, neuron indices) per area in index order; a single 'all' group without area info."""
    n = act["rates"].shape[-1]
    if "area" not in act:
        return [("all", np.arange(n))]
    area = np.asarray(act["area"])
    names = act["area_names"] if "area_names" in act else list(dict.fromkeys(area))
    return [(str(a), np.flatnonzero(area == a)) for a in names]


def _epochs(act: Record, trial: int, length: int) -> list[tuple[str, int, int]]:
    """(name, start, end) of each task epoch of a trial, clipped to its length, by start."""
    out = []
    for key in act:
        if key.startswith("epoch_"):  # (rows, 2), or (rows, trials per row, 2)
            for start, end in np.asarray(act[key][trial]).reshape(-1, 2).tolist():
                if start < min(end, length):  # periods of zero length (absent in this trial) are not drawn
                    out.append((key[len("epoch_"):], start, min(end, length)))
    return sorted(out, key=lambda e: e[1])


def _name_epochs(ax: Axes, epochs: list[tuple[str, int, int]], dt: float) -> None:
    """Each epoch's name above ``ax`` at its start, every other one higher: short epochs stay legible."""
    for i, (name, start, _) in enumerate(epochs):
        ax.annotate(name, (start * dt, 1.0), xycoords=ax.get_xaxis_transform(), xytext=(0, 2 + 9 * (i % 2)),
                    textcoords="offset points", fontsize=8)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def activity_heatmap(act: Record, trial: int = 0) -> Figure:
    """Rates of one trial, one panel per area, neurons sorted by peak time; epochs marked."""
    length, dt = _length(act, trial), _dt(act)
    rates = np.asarray(act["rates"][trial, :length])
    areas = [(name, idx) for name, idx in _areas(act) if idx.size]
    fig = Figure(figsize=(8, 1.5 + 0.12 * rates.shape[1]), layout="constrained")
    axes = fig.subplots(len(areas), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [idx.size for _, idx in areas]})[:, 0]
    vmin, vmax = float(rates.min()), float(rates.max())
    epochs = _epochs(act, trial, length)
    for ax, (name, idx) in zip(axes, areas):
        sub = rates[:, idx]
        im = ax.imshow(sub[:, peak_order(sub)].T, aspect="auto", interpolation="nearest",
                       cmap="viridis", vmin=vmin, vmax=vmax,
                       extent=(0, length * dt, idx.size - 0.5, -0.5))
        ax.set_ylabel(f"{name}\nneuron (by peak)")
        for _, start, _ in epochs:
            ax.axvline(start * dt, color="w", lw=0.8, ls="--")
    _name_epochs(axes[0], epochs, dt)
    axes[-1].set_xlabel("time (ms)")
    fig.colorbar(im, ax=list(axes), label="rate")
    fig.suptitle(f"Activity, trial {trial}")
    return fig


def connectivity_matrix(act: Record) -> Figure:
    """Recurrent weights (post × pre) with area (thick) and E/I (thin) boundaries."""
    w = np.asarray(act["w_rec"])
    lim = float(np.abs(w).max()) or 1.0
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    areas = _areas(act)
    sign = np.asarray(act["sign"]) if "sign" in act else np.zeros(len(w), int)
    for i, (_, idx) in enumerate(areas):
        if i:
            for line in (ax.axhline, ax.axvline):
                line(idx[0] - 0.5, color="k", lw=1.5)
        for b in idx[1:][np.diff(sign[idx]) != 0]:
            for line in (ax.axhline, ax.axvline):
                line(b - 0.5, color="k", lw=0.5, ls="--")
    centres = [(idx[0] + idx[-1]) / 2 for _, idx in areas if idx.size]
    names = [name for name, idx in areas if idx.size]
    ax.set_xticks(centres, names)
    ax.set_yticks(centres, names, rotation=90, va="center")
    ax.set_xlabel("presynaptic neuron (pre)")
    ax.set_ylabel("postsynaptic neuron (post)")
    ax.set_title("Recurrent weights $W_{rec}$")
    fig.colorbar(im, ax=ax, label="weight")
    return fig


def pca_trajectories(act: Record, color_by: str | None = None, max_trials: int = 64) -> Figure:
    """PC1–PC2 trajectories (PCA, eigendecomposition of the covariance over all valid steps of all trials) of up to ``max_trials`` trials,
    coloured by a condition (``cond_<color_by>``; by default the ground truth where the task has one); starts marked."""
    conditions = [k.removeprefix("cond_") for k in act if k.startswith("cond_")]
    if color_by is not None and color_by not in conditions:
        raise ValueError(f"color_by: no condition {color_by!r} in this record; conditions: {', '.join(conditions) or 'none'}")
    color_by = color_by or "ground_truth"
    rates, valid = np.asarray(act["rates"]), _valid(act)
    x = rates[valid]
    mean = x.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.atleast_2d(np.cov(x, rowvar=False)))  # neurons x neurons: cheap for many steps
    eigval, vt = np.pad(eigval[::-1], (0, 1)), np.pad(eigvec[:, ::-1].T, ((0, 1), (0, 0)))  # a zero PC2 for one neuron
    var = eigval / eigval.sum() if eigval.sum() > 0 else eigval  # a silent network has no variance to share out
    cond = act.get(f"cond_{color_by}")
    if cond is not None and np.ndim(cond) == 2:  # rows of several trials: each row by its first trial's condition
        cond = cond[:, 0]
    values = np.unique(cond) if cond is not None else np.array([None])
    n_val = len(values)
    colours = {v: f"C{j}" if n_val <= 10 else matplotlib.colormaps["viridis"](j / (n_val - 1))
               for j, v in enumerate(values.tolist())}
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    lines, starts, start_colours = {}, [], []  # one line per condition value, for the legend
    for i in range(min(len(rates), max_trials)):
        pcs = (rates[i][valid[i]] - mean) @ vt[:2].T
        if not len(pcs):
            continue
        key = cond[i].item() if cond is not None else None
        lines[key], = ax.plot(pcs[:, 0], pcs[:, 1], color=colours[key], lw=1, alpha=0.8)
        starts.append(pcs[0])
        start_colours.append(colours[key])
    if starts:
        ax.scatter(*np.array(starts).T, c=start_colours, marker="o", s=15, zorder=3)
    if cond is not None:  # in the order of the values (numeric), not of the trials
        shown = [v for v in values.tolist() if v in lines]
        ax.legend([lines[v] for v in shown], [f"{color_by}={v}" for v in shown], fontsize=8)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title(f"PC1 {100 * var[0]:.1f}% · PC2 {100 * var[1]:.1f}% variance (o = start)")
    return fig


def _labels(act: Record, key: str, unnamed: str, n: int) -> list[str]:
    """The task's channel names the record carries (``input_labels``, ``output_labels``), else ``<unnamed> k``."""
    return [str(label) for label in act[key]] if key in act else [f"{unnamed} {k}" for k in range(n)]


def trial_io(act: Record, trial: int = 0) -> Figure:
    """Inputs, targets and outputs (softmax probabilities for classification, sigmoid units for a ring
    read-out) of one trial."""
    length, dt = _length(act, trial), _dt(act)
    t = np.arange(length) * dt
    inputs = np.asarray(act["inputs"][trial, :length])
    targets = np.asarray(act["targets"][trial, :length])
    outputs = np.asarray(act["outputs"][trial, :length])
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax_in, ax_tgt, ax_out = fig.subplots(3, 1, sharex=True)
    for k, label in enumerate(_labels(act, "input_labels", "in", inputs.shape[-1])):
        ax_in.plot(t, inputs[:, k], lw=1, label=label)
    if _is_classification(act):  # the target class as a one-hot trace per class, beside p(class)
        probs = _softmax(outputs)
        for k, label in enumerate(_labels(act, "output_labels", "class", probs.shape[-1])):
            ax_tgt.step(t, targets == k, where="post", lw=1.2, color=f"C{k}", label=label)
            ax_out.plot(t, probs[:, k], lw=1.2, color=f"C{k}", label=label)
        ax_tgt.set_ylabel("target (1 = this class)")
        ax_out.set_ylabel("p(class)")
        for ax in (ax_tgt, ax_out):
            ax.set_ylim(-0.05, 1.05)
    elif str(act["kind"]) == "ring":  # a fixation unit and a ring: the target class and the sigmoid units as images
        extent = (0, length * dt, outputs.shape[-1] - 0.5, -0.5)
        ax_tgt.imshow(np.eye(outputs.shape[-1])[targets].T, aspect="auto", cmap="Greys", extent=extent, interpolation="nearest")
        ax_out.imshow(1 / (1 + np.exp(-outputs.T)), aspect="auto", cmap="hot", vmin=0, vmax=1, extent=extent,
                      interpolation="nearest")
        ax_tgt.set_ylabel("target unit (0: fixation)")
        ax_out.set_ylabel("sigmoid(output)")
    else:
        for k, label in enumerate(_labels(act, "output_labels", "out", outputs.shape[-1])):
            ax_tgt.plot(t, targets[:, k], lw=1, color=f"C{k}", label=label)
            ax_out.plot(t, outputs[:, k], lw=1.2, color=f"C{k}", label=label)
            ax_out.plot(t, targets[:, k], lw=1, ls="--", color=f"C{k}")
        ax_tgt.set_ylabel("target")
        ax_out.set_ylabel("output (-- target)")
    ax_in.set_ylabel("input")
    for ax in (ax_in, ax_out):  # beside the axes, where no trace hides under it
        if len(ax.get_lines()) <= 12:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    epochs = _epochs(act, trial, length)
    for i, (_, start, end) in enumerate(epochs):
        for ax in (ax_in, ax_tgt, ax_out):
            ax.axvspan(start * dt, end * dt, color=f"C{i}", alpha=0.08, lw=0)
    _name_epochs(ax_in, epochs, dt)
    ax_out.set_xlabel("time (ms)")
    fig.suptitle(f"Trial {trial}")
    return fig


def psychometric_data(act: Record, strength: str = "coh") -> tuple[np.ndarray, np.ndarray] | None:
    """Per trial, the signed stimulus strength (negative when the correct choice is class 1) and whether the
    network chose class 2 (1.0, else 0.0: aborted trials count as not choosing 2). None unless this is a
    2-choice classification record with one response per trial (``choice``, ``target_choice``: the correct
    class) and ``cond_<strength>``."""
    key = f"cond_{strength}"
    if not (_is_classification(act) and "choice" in act and key in act and np.shape(act["choice"])[1:] == (1,)):
        return None
    gt = np.asarray(act["target_choice"])[:, 0]
    if not set(np.unique(gt).tolist()) <= {1, 2}:
        return None
    signed = np.where(gt == 1, -1.0, 1.0) * np.asarray(act[key], float)
    return signed, (np.asarray(act["choice"])[:, 0] == 2).astype(float)


def psychometric_fit(signed: np.ndarray, chose2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The logistic fit of :func:`psychometric_data`, ``(bias, slope)`` per unit of strength, and their covariance."""
    scale = float(np.abs(signed).max()) or 1.0
    beta, cov = logistic_fit(signed / scale, chose2)
    unscale = np.array([1.0, 1.0 / scale])
    return beta * unscale, cov * np.outer(unscale, unscale)


def psychometric_axes(ax: Axes, signed: np.ndarray, chose2: np.ndarray, color: str = "C0", label: str = "") -> None:
    """The fraction choosing class 2 at each signed strength (points) and its logistic fit (line) on ``ax``."""
    levels = np.unique(signed)
    frac = np.array([chose2[signed == lv].mean() for lv in levels])
    (bias, slope), _ = psychometric_fit(signed, chose2)
    xs = np.linspace(levels[0], levels[-1], 200)
    ax.plot(xs, 1 / (1 + np.exp(-(bias + slope * xs))), color=color, label=f"{label} logistic fit".strip())
    ax.plot(levels, frac, "o", color=color, ms=4, label=f"{label} data".strip())
    ax.set_ylim(-0.05, 1.05)


def psychometric_curve(act: Record, strength: str = "coh") -> Figure | None:
    """Fraction of trials choosing class 2 vs signed strength (:func:`psychometric_data`); the axes name the
    classes by the record's ``output_labels``. None where the record has no such curve."""
    data = psychometric_data(act, strength)
    if data is None:
        return None
    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.subplots()
    psychometric_axes(ax, *data)
    name_psychometric_axes(ax, act, strength)
    ax.set_title(f"Psychometric curve (n={len(data[0])} trials)")
    return fig


def name_psychometric_axes(ax: Axes, act: Record, strength: str) -> None:
    """Axis labels naming the two classes by the record's ``output_labels``, and the legend."""
    one, two = _labels(act, "output_labels", "class", 3)[1:3]
    ax.set_xlabel(f"signed {strength} (− = correct {one}, + = {two})")
    ax.set_ylabel(f"fraction choosing {two}")
    ax.legend(fontsize=8)


def produced_intervals(act: Record) -> Figure | None:
    """Timing tasks: each response's produced interval against its target interval (the diagonal is a perfect
    one), coloured by its outcome (correct: within ``prod_margin * interval + 25`` ms). None for a record
    without intervals."""
    if "produced_interval" not in act:
        return None
    produced, target = np.asarray(act["produced_interval"], float).ravel(), np.asarray(act["target_interval"], float).ravel()
    correct = np.asarray(act["outcome"]).ravel() == 1
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(target[correct], produced[correct], s=12, color="C2", label="correct")
    ax.scatter(target[~correct], produced[~correct], s=12, color="C3", label="wrong (no response: not drawn)")
    lim = np.nanmax(np.r_[target, produced, 1.0]) * 1.05
    ax.plot([0, lim], [0, lim], color="k", lw=0.8, ls="--")
    ax.set_xlabel("target interval (ms)")
    ax.set_ylabel("produced interval (ms)")
    ax.set_title(f"Produced intervals ({int(np.isfinite(produced).sum())} responses)")
    ax.legend(fontsize=8)
    return fig


def all_figures(act: Record) -> dict[str, Figure]:
    """All standard figures by name; 'psychometric' and 'intervals' only where they apply."""
    figs = {"activity": activity_heatmap(act), "connectivity": connectivity_matrix(act),
            "pca": pca_trajectories(act), "trial_io": trial_io(act)}
    for name, fig in (("psychometric", psychometric_curve(act)), ("intervals", produced_intervals(act))):
        if fig is not None:
            figs[name] = fig
    return figs
