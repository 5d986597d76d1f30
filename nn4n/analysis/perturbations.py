"""Perturbation experiments on a trained network: silence, stimulate or lesion its areas, populations and
projections (:mod:`nn4n.perturb`) and measure behaviour against the control, on the same held-out trials with
the same noise.

Per condition (the control first): accuracy with its 95% Wilson interval and the abort rate, scored as in
training (:func:`nn4n.metrics.trial_outcomes`), or MSE and R^2; the choice bias; where the task has a stimulus
strength (``cond_<strength>``, 2 choices), the psychometric curve and its logistic fit, ``P(choose 2) =
sigmoid(slope (s - threshold))`` with ``s`` the signed strength, its slope with a 95% interval (from the fit's
standard error) and its threshold (the point of subjective equality; NaN where the slope's interval holds 0);
every number's change from the control; and the mean rate of each area's E and I population at each step.

The choice bias is the share of answered trials (not aborted) choosing 2 minus the share whose correct choice is
2 (two-choice tasks): 0 for a network that answers as often 2 as the trials call for, +-1 for one that always
answers the same. The psychometric curve counts an aborted trial as not choosing 2 (as
:func:`nn4n.figures.psychometric_curve`); read it with the abort rate beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from .. import figures
from ..data import TrialBatch
from ..evaluate import activity_record, evaluate
from ..experiment import held_out
from ..metrics import ABSENT, CORRECT, WRONG
from ..model import CTRNN, Activity
from ..perturb import Perturbation, combination, effect
from ..stats import Z95, wilson
from ..tasks import TaskKind, TaskSpec

CONTROL = "control"
# The table's columns after the condition's name: the measures, then their change from the control.
MEASURES = {TaskKind.CLASSIFICATION: ("accuracy", "accuracy_low", "accuracy_high", "abort_rate", "choice_bias",
                                      "slope", "slope_low", "slope_high", "threshold"),
            TaskKind.REGRESSION: ("mse", "r2")}
CHANGES = {TaskKind.CLASSIFICATION: ("accuracy", "abort_rate", "choice_bias", "slope", "threshold"),
           TaskKind.REGRESSION: ("mse", "r2")}


def survey(structure: Any, epochs: Mapping[str, np.ndarray]) -> dict[str, Perturbation]:
    """The experiments a first look at a network calls for: silence each area for the whole trial and in each
    task period that some trial has, and cut each projection between two areas."""
    found: dict[str, Perturbation] = {}
    periods = [p for p, bounds in epochs.items() if (np.diff(np.asarray(bounds), axis=-1) > 0).any()]
    for area in structure.area_names:
        for window in ((), *((p,) for p in periods)):
            p = Perturbation("silence", area=area, periods=window)
            found[p.label] = p
    for post in structure.area_names:
        for pre in structure.area_names:
            if post != pre and structure.rec_mask[structure.area_slices[post], structure.area_slices[pre]].any():
                p = Perturbation("lesion", projection=f"{post}<-{pre}")
                found[p.label] = p
    return found


@dataclass
class Condition:
    """One condition's results: its measures, the mean rate of each population (``groups``) at each step, and the
    psychometric data (signed strength, chose 2) where the task has them."""

    name: str
    perturbation: tuple[Perturbation, ...]  # applied together; () for the control
    measures: dict[str, float]
    psth: np.ndarray  # (groups, time) mean rate over the trials that last to each step
    psychometric: tuple[np.ndarray, np.ndarray] | None
    record: dict[str, np.ndarray] | None  # the activity record (the control's always; the others' on request)


@dataclass
class PerturbationResults:
    """Every condition of one network, the control first."""

    conditions: list[Condition]
    kind: TaskKind
    groups: list[str]  # "PFC/E", ...
    dt: float
    strength: str

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """``perturbations.csv``: one row per condition, its perturbation's settings, measures and changes."""
        measures, changes = MEASURES[self.kind], CHANGES[self.kind]
        header = ["condition", "kind", "target", "window", *measures, *(f"change_{m}" for m in changes)]
        control = self.conditions[0].measures
        rows = []
        for c in self.conditions:
            parts = c.perturbation
            described = ["+".join(p.kind for p in parts) or CONTROL, "; ".join(p.target for p in parts),
                         "; ".join(p.window for p in parts)]
            rows.append([c.name, *described, *(c.measures[m] for m in measures),
                         *(c.measures[m] - control[m] for m in changes)])
        return header, rows

    @property
    def headline(self) -> str:
        """The measure a condition is summarised by: accuracy, or R^2."""
        return "accuracy" if self.kind is TaskKind.CLASSIFICATION else "r2"

    def summary(self) -> dict[str, float]:
        """Each condition's headline measure, for ``summary.json`` and ``nn4n-sweep-summary``."""
        return {f"{c.name}/{self.headline}": c.measures[self.headline] for c in self.conditions}

    def arrays(self) -> dict[str, np.ndarray]:
        """``activity.npz``: ``psth`` (conditions, groups, time), with ``conditions``, ``groups`` and ``dt``."""
        return {"psth": np.stack([c.psth for c in self.conditions]), "conditions": np.array([c.name for c in self.conditions]),
                "groups": np.array(self.groups), "dt": np.array(self.dt)}

    def figures(self) -> dict[str, Figure]:
        """An overview of every condition's headline, and per perturbation its activity (and psychometric curve)
        over the control's."""
        out = {"effects": self._effects()}
        control = self.conditions[0]
        for c in self.conditions[1:]:
            out[f"activity/{c.name}"] = self._activity(control, c)
            if c.psychometric is not None and control.psychometric is not None:
                fig = Figure(figsize=(5, 4), layout="constrained")
                ax = fig.subplots()
                figures.psychometric_axes(ax, *control.psychometric, color="k", label=CONTROL)
                figures.psychometric_axes(ax, *c.psychometric, color="C3", label="perturbed")
                figures.name_psychometric_axes(ax, control.record, self.strength)
                ax.set_title(c.name, fontsize=9)
                out[f"psychometric/{c.name}"] = fig
        return out

    def _effects(self) -> Figure:
        classification = self.kind is TaskKind.CLASSIFICATION
        names = [c.name for c in self.conditions]
        fig = Figure(figsize=(6, 0.3 * len(names) + 1.2), layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(names))[::-1]
        if classification:
            acc = np.array([c.measures["accuracy"] for c in self.conditions])
            low = np.array([c.measures["accuracy_low"] for c in self.conditions])
            high = np.array([c.measures["accuracy_high"] for c in self.conditions])
            ax.errorbar(acc, y, xerr=[acc - low, high - acc], fmt="o", color="k", ms=4, capsize=2)
            ax.set_xlabel("accuracy (95% Wilson interval)")
        else:
            ax.plot([c.measures["r2"] for c in self.conditions], y, "o", color="k")
            ax.set_xlabel("R^2")
        ax.axvline(self.conditions[0].measures[self.headline], color="0.6", lw=0.8)
        ax.set_yticks(y, names, fontsize=7)
        return fig

    def _activity(self, control: Condition, c: Condition) -> Figure:
        areas = list(dict.fromkeys(g.split("/")[0] for g in self.groups))
        fig = Figure(figsize=(3.2 * len(areas), 2.8), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(areas), sharey=True))
        time = np.arange(control.psth.shape[1]) * self.dt
        for ax, area in zip(axes, areas):
            for i, group in enumerate(self.groups):
                if group.split("/")[0] == area:
                    color = "C0" if group.endswith("/E") else "C3" if group.endswith("/I") else "k"
                    ax.plot(time, control.psth[i], color=color, lw=1, label=f"{group} control")
                    ax.plot(time, c.psth[i], color=color, lw=1, ls="--", label=f"{group} perturbed")
            ax.set_title(area, fontsize=9)
            ax.set_xlabel("time (ms)")
            ax.legend(fontsize=6)
        axes[0].set_ylabel("mean rate")
        fig.suptitle(c.name, fontsize=9)
        return fig


def _measures(record: dict[str, np.ndarray], outputs: torch.Tensor, batch: TrialBatch, spec: TaskSpec,
              metrics: dict[str, float], strength: str) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray] | None]:
    """One condition's measures (see the module's docstring) and its psychometric data."""
    if spec.kind is TaskKind.REGRESSION:
        return {"mse": metrics["mse"], "r2": metrics["r2"]}, None
    nan = math.nan
    out = {m: nan for m in MEASURES[TaskKind.CLASSIFICATION]} | {"accuracy": metrics.get("accuracy", nan),
                                                                 "abort_rate": metrics.get("abort_rate", nan)}
    if "outcome" in record:
        outcome = record["outcome"]
        scored = outcome != ABSENT
        out["accuracy_low"], out["accuracy_high"] = wilson(int((outcome[scored] == CORRECT).sum()), int(scored.sum()))
        answered = outcome >= WRONG  # not aborted
        choice, target = record["choice"][answered], record["target_choice"][answered]
        if set(np.unique(record["target_choice"][scored]).tolist()) == {1, 2} and answered.any():
            out["choice_bias"] = float((choice == 2).mean() - (target == 2).mean())  # 2s beyond the targets' share
    data = figures.psychometric_data(record, strength)
    if data is not None:
        (bias, slope), cov = figures.psychometric_fit(*data)
        half = Z95 * math.sqrt(cov[1, 1])
        sloped = abs(slope) > half  # the interval excludes 0: the curve has a point of subjective equality
        out |= {"slope": slope, "slope_low": slope - half, "slope_high": slope + half,
                "threshold": -bias / slope if sloped else nan}
    return out, data


def _psth(activity: Activity, batch: TrialBatch, groups: list[tuple[str, str | None]]) -> np.ndarray:
    """(groups, time): each population's mean rate over the trials that last to each step (NaN past them all)."""
    valid = batch.valid.to(activity.rates.dtype)
    per_step = valid.sum(0)
    rows = []
    for area, pop in groups:
        rates = activity.select(area, pop).mean(-1)  # (trials, time)
        rows.append((rates * valid).sum(0) / per_step)
    return torch.stack(rows).cpu().numpy()


def run_conditions(model: CTRNN, batch: TrialBatch, spec: TaskSpec,
                   perturbations: Mapping[str, Perturbation | Mapping[str, Any] | Sequence[Any]], *,
                   noise: bool = False, seed: int = 0, strength: str = "coh", keep_records: bool = False) -> PerturbationResults:
    """The control and every perturbation of ``model`` on ``batch``'s trials, each run with the same noise draw
    (``seed``); a condition may be a list of perturbations, applied together; ``keep_records`` keeps every condition's activity record (~20 MB each for 256 trials of 192
    neurons), not only the control's. One-line ValueErrors name a perturbation that does not fit the network or the trials
    (``<name>.area: unknown area ...``)."""
    st = model.structure
    n_trials, n_steps = batch.inputs.shape[:2]
    chosen, effects = {}, {}
    for name, value in perturbations.items():
        if name == CONTROL:
            raise ValueError(f"{name}: the name of the unperturbed run; give the perturbation another name")
        try:
            chosen[name] = combination(value)
            effects[name] = effect(chosen[name], st, n_trials, n_steps, batch.epochs, like=batch.inputs)
        except ValueError as err:
            raise ValueError(f"{name}.{err}") from None
    groups = Activity(batch.inputs.new_zeros(0), st).populations()
    conditions = []
    for name, eff in {CONTROL: None, **effects}.items():
        with torch.random.fork_rng(devices=[batch.inputs.device] if batch.inputs.is_cuda else []):
            torch.manual_seed(seed)
            metrics, outputs, activity = evaluate(model, batch, spec, noise, eff)
        record = activity_record(model, batch, outputs, activity, spec)
        measures, data = _measures(record, outputs, batch, spec, metrics, strength)
        kept = record if keep_records or not conditions else None
        conditions.append(Condition(name, chosen.get(name, ()), measures, _psth(activity, batch, groups), data, kept))
    names = [f"{a}/{p}" if p else a for a, p in groups]
    scored = TaskKind.REGRESSION if spec.kind is TaskKind.REGRESSION else TaskKind.CLASSIFICATION  # a ring read-out chooses classes
    return PerturbationResults(conditions, scored, names, spec.dt, strength)


def of_run(run_dir: str | Path, network: int = 0, checkpoint: str = "best", *,
           perturbations: Mapping[str, Any] | None = None, survey_all: bool = True,
           n_trials: int = 256, seed: int | None = None, noise: bool = False, strength: str = "coh",
           keep_records: bool = False, trust_task_code: bool = False, device: str = "cpu") -> PerturbationResults:
    """:func:`run_conditions` on network ``network`` of the run in ``run_dir``: ``perturbations`` by name, and
    with ``survey_all`` the :func:`survey`, on ``n_trials`` of its held-out trials (``seed``: others), on
    ``device`` (``auto``: CUDA where there is one)."""
    from ..machine import available_device
    from .runs import load_run  # the run's files, read as data

    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ValueError(f"analysis.n_trials: must be an integer > 0, got {n_trials!r}")
    model, cfg = load_run(run_dir, checkpoint, network, trust_task_code=trust_task_code)
    model.to(available_device(device, "device"))
    trials = held_out(cfg, n_trials, seed)
    batch = trials.batch(0).to(model.w_rec.device)
    found = (survey(model.structure, batch.epochs) if survey_all else {}) | dict(perturbations or {})
    if not found:
        raise ValueError("analysis.perturbations: none given (and analysis.survey=false)")
    try:
        return run_conditions(model, batch, trials.spec, found, noise=noise, seed=trials.seed, strength=strength,
                              keep_records=keep_records)
    except ValueError as err:
        raise ValueError(f"analysis.perturbations.{err}") from None

