"""How a network trained on a task set divides its neurons among the tasks (Yang et al. 2019, Figs. 2-3).

- Trials: ``n_trials`` held-out trials of each task of the run's set, the network's noise off (the tasks' own
  stimulus noise kept: NeuroGym's trials).
- A unit's *task variance*: the variance of its rate across the task's trials at each step after fixation,
  averaged over those steps. Trials are aligned at the end of their fixation period (NeuroGym draws its length)
  and cut at the shortest trial's end.
- Units whose variance summed over the tasks is at most ``min_variance`` (1e-3, the paper's) are dropped; each
  kept unit's profile over the tasks is divided by its maximum.
- Clusters: k-means on the profiles (scikit-learn, 20 initialisations) for k = 2 .. ``max_clusters``, k chosen by
  the largest mean silhouette (scikit-learn). Clusters are numbered by their preferred task (the task of their
  largest summed profile), units sorted by cluster.
- Lesions (``lesion``): each cluster silenced for the whole trial (:mod:`nn4n.perturb`), every task's accuracy
  against the control on the same trials.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate import evaluate
from ..experiment import held_out
from ..model import CTRNN
from ..perturb import Perturbation


def task_variance(rates: np.ndarray, lengths: np.ndarray, start: np.ndarray, task: np.ndarray, n_tasks: int) -> np.ndarray:
    """(units, tasks): each unit's rate variance across a task's trials, per step from ``start`` (each trial's
    first step after fixation) to the shortest trial's end, averaged over the steps. ``rates`` (B, T, N)."""
    variance = np.full((rates.shape[2], n_tasks), np.nan)
    for k in range(n_tasks):
        trials = np.flatnonzero(task == k)
        if trials.size < 2:
            continue
        steps = int((lengths[trials] - start[trials]).min())
        aligned = np.stack([rates[b, start[b]:start[b] + steps] for b in trials])  # (trials, steps, N)
        variance[:, k] = aligned.var(0).mean(0)
    return variance


@dataclass
class Clusters:
    """Units clustered by their normalised task-variance profiles."""

    kept: np.ndarray  # (kept,) the units with total variance above the threshold
    profiles: np.ndarray  # (kept, tasks) each divided by its maximum
    labels: np.ndarray  # (kept,) cluster of each kept unit, 0.. numbered by preferred task
    preferred: np.ndarray  # (clusters,) each cluster's preferred task
    ks: np.ndarray  # the numbers of clusters tried
    silhouette: np.ndarray  # mean silhouette of each

    @property
    def n_clusters(self) -> int:
        return len(self.preferred)

    @property
    def order(self) -> np.ndarray:
        """The kept units (indices into ``kept``) sorted by cluster."""
        return np.argsort(self.labels, kind="stable")


def cluster_units(variance: np.ndarray, min_variance: float = 1e-3, max_clusters: int = 29, seed: int = 0) -> Clusters:
    """Drop units with total variance at most ``min_variance``, normalise each profile by its maximum, k-means for
    k = 2 .. ``max_clusters`` (at most the units kept less one), k by the best mean silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    variance = np.nan_to_num(variance)
    kept = np.flatnonzero(variance.sum(1) > min_variance)
    if kept.size < 3:
        raise ValueError(f"analysis.min_variance: only {kept.size} units vary more than {min_variance:g} across "
                         "trials: too few to cluster")
    profiles = variance[kept] / variance[kept].max(1, keepdims=True)
    ks = np.arange(2, min(max_clusters, kept.size - 1) + 1)
    fits = [KMeans(k, n_init=20, random_state=seed).fit(profiles) for k in ks]
    silhouette = np.array([silhouette_score(profiles, f.labels_) if len(set(f.labels_)) > 1 else -1.0 for f in fits])
    labels = fits[int(silhouette.argmax())].labels_
    n = labels.max() + 1
    preferred = np.array([profiles[labels == c].sum(0).argmax() for c in range(n)])
    rank = np.argsort(preferred, kind="stable")  # clusters numbered by their preferred task
    renumber = np.empty(n, dtype=int)
    renumber[rank] = np.arange(n)
    return Clusters(kept, profiles, renumber[labels], preferred[rank], ks, silhouette)


@dataclass
class TaskVarianceResults:
    """Task variance, clusters and (with lesions) each cluster's silencing, of one network."""

    tasks: list[str]
    variance: np.ndarray  # (units, tasks)
    clusters: Clusters
    area: np.ndarray  # (units,) each unit's area index
    area_names: list[str]
    sign: np.ndarray  # (units,) +1 E, -1 I, 0 without Dale's law
    control: np.ndarray | None = None  # (tasks,) accuracy without lesion
    lesioned: np.ndarray | None = None  # (clusters, tasks) accuracy with each cluster silenced

    def cluster_units(self, c: int) -> np.ndarray:
        """The units (network indices) of cluster ``c``: ``{kind: silence, neurons: ...}`` silences it."""
        return self.clusters.kept[self.clusters.labels == c]

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """``clusters.csv``: each cluster's size, preferred task, E and I units per area (units per area without
        Dale's law), and with lesions every task's accuracy change when it is silenced."""
        populations = (1, -1) if (self.sign != 0).any() else (0,)  # E and I, or (no Dale's law) the area's units
        groups = [(a, s) for a in range(len(self.area_names)) for s in populations]
        header = ["cluster", "n_units", "preferred_task",
                  *(self.area_names[a] + ("/E" if s > 0 else "/I" if s < 0 else "") for a, s in groups)]
        if self.lesioned is not None:
            header += [f"change_accuracy/{t}" for t in self.tasks]
        rows = []
        for c in range(self.clusters.n_clusters):
            units = self.cluster_units(c)
            row = [c, len(units), self.tasks[self.clusters.preferred[c]],
                   *(int(((self.area[units] == a) & (self.sign[units] == s)).sum()) for a, s in groups)]
            if self.lesioned is not None:
                row += (self.lesioned[c] - self.control).tolist()
            rows.append(row)
        return header, rows

    def arrays(self) -> dict[str, np.ndarray]:
        """``task_variance.npz``."""
        c = self.clusters
        out = {"tasks": np.array(self.tasks), "variance": self.variance, "kept": c.kept, "profiles": c.profiles,
               "labels": c.labels, "preferred_task": c.preferred, "order": c.kept[c.order], "ks": c.ks,
               "silhouette": c.silhouette}
        if self.lesioned is not None:
            out |= {"control_accuracy": self.control, "lesioned_accuracy": self.lesioned}
        return out

    def summary(self) -> dict[str, float]:
        """``summary.json``: the headline numbers (``nn4n-sweep-summary`` shows them)."""
        c = self.clusters
        return {"n_clusters": c.n_clusters, "silhouette": float(c.silhouette.max()), "units_kept": int(c.kept.size),
                "largest_k_tried": int(c.ks.max())}

    def figures(self) -> dict[str, Any]:
        """The units x tasks map sorted by cluster (Yang et al. 2019, Fig. 2), the silhouette against k, and
        with lesions each cluster's effect on every task."""
        import matplotlib.pyplot as plt

        c = self.clusters
        sorted_profiles = c.profiles[c.order]
        fig, ax = plt.subplots(figsize=(0.3 * len(self.tasks) + 2.5, 6))
        image = ax.imshow(sorted_profiles, aspect="auto", cmap="hot", vmin=0, vmax=1, interpolation="nearest")
        bounds = np.flatnonzero(np.diff(c.labels[c.order])) + 0.5
        for y in bounds:
            ax.axhline(y, color="cyan", lw=0.6)
        ax.set_xticks(range(len(self.tasks)), self.tasks, rotation=90, fontsize=7)
        ax.set_ylabel(f"units ({c.kept.size} kept), by cluster")
        fig.colorbar(image, ax=ax, label="normalised task variance")
        fig.tight_layout()
        figures = {"units_by_cluster": fig}
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot(c.ks, c.silhouette, "o-")
        ax.axvline(c.n_clusters, color="gray", ls="--")
        ax.set_xlabel("clusters")
        ax.set_ylabel("mean silhouette")
        fig.tight_layout()
        figures["silhouette"] = fig
        if self.lesioned is not None:
            change = self.lesioned - self.control
            fig, ax = plt.subplots(figsize=(0.3 * len(self.tasks) + 2.5, 0.3 * c.n_clusters + 2))
            image = ax.imshow(change, aspect="auto", cmap="coolwarm_r", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks(range(len(self.tasks)), self.tasks, rotation=90, fontsize=7)
            ax.set_ylabel("cluster silenced")
            fig.colorbar(image, ax=ax, label="change in accuracy")
            fig.tight_layout()
            figures["lesions"] = fig
        return figures


def _accuracies(metrics: dict[str, float], tasks: list[str]) -> np.ndarray:
    return np.array([metrics.get(f"accuracy/{t}", np.nan) for t in tasks])


def of_network(model: CTRNN, cfg: Any, n_trials: int = 128, min_variance: float = 1e-3, max_clusters: int = 29,
               seed: int = 0, lesion: bool = True) -> TaskVarianceResults:
    """Task variance, clusters and (``lesion``) cluster silencing of ``model`` on its run's task set (``cfg``)."""
    if len(cfg.task.tasks) < 2:
        raise ValueError(f"analysis: task_variance needs a task set (task.tasks); the run trains {cfg.task.name} alone")
    trials = held_out(cfg, n_trials * len(cfg.task.tasks))  # n_trials of each task, in turn
    spec, batch = trials.spec, trials.batch(0).to(model.w_rec.device)
    metrics, _, activity = evaluate(model, batch, spec)
    rates = activity.rates.cpu().numpy()
    start = batch.epochs["fixation"][:, 1] if "fixation" in batch.epochs else np.zeros(len(rates), dtype=int)
    variance = task_variance(rates, batch.lengths.cpu().numpy(), start, batch.conditions["task"], len(spec.tasks))
    clusters = cluster_units(variance, min_variance, max_clusters, seed)
    st = model.structure
    found = TaskVarianceResults(list(spec.tasks), variance, clusters, st.area_id, list(st.area_names), st.sign)
    if lesion:
        found.control = _accuracies(metrics, found.tasks)
        found.lesioned = np.stack([
            _accuracies(evaluate(model, batch, spec, perturb=[Perturbation("silence", neurons=tuple(found.cluster_units(c).tolist()))])[0], found.tasks)
            for c in range(clusters.n_clusters)])
    return found


def of_run(run_dir: str | Path, network: int = 0, checkpoint: str = "best", *, n_trials: int = 128,
           min_variance: float = 1e-3, max_clusters: int = 29, seed: int = 0, lesion: bool = True,
           trust_task_code: bool = False, device: str = "cpu") -> TaskVarianceResults:
    """:func:`of_network` on network ``network`` of the run in ``run_dir``, on ``device``."""
    from ..machine import available_device
    from .runs import load_run  # the run's files, read as data

    model, cfg = load_run(run_dir, checkpoint, network, trust_task_code=trust_task_code)
    model.to(available_device(device, "device"))
    return of_network(model, cfg, n_trials, min_variance, max_clusters, seed, lesion)
