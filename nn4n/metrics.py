"""Loss, task performance and the run's objective on TrialBatches (torch, any device)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from .data import TrialBatch
from .tasks import TaskKind, TaskSpec


RING_BASELINE, RING_PEAK, RING_WIDTH = 0.05, 0.8, math.pi / 8  # a ring's targets (Yang et al. 2019)
FIXATION_TARGET, FIXATION_WEIGHT = 0.8, 4.0  # the fixation unit's target while fixating; its weight in the loss
RING_TOLERANCE = 0.2 * math.pi  # a decoded direction this close to the target's is correct


def ring_directions(spec: TaskSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_outputs,) each output unit's preferred direction on the ring (radians; NaN for the fixation unit)."""
    (ring,) = [channels for action, channels in spec.output_names.items() if action != "fixation"]
    directions = torch.full((spec.n_outputs,), math.nan, device=device)
    directions[ring] = torch.arange(len(ring), device=device) * (2 * math.pi / len(ring))
    return directions


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The distance of two directions on the circle, in [0, pi]."""
    d = torch.remainder(a - b, 2 * math.pi)
    return torch.minimum(d, 2 * math.pi - d)


def ring_targets(spec: TaskSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """(classes, n_outputs) the ring read-out's target for each class: to fixate, the fixation unit at
    FIXATION_TARGET; a direction, a Gaussian bump over the ring units (peak RING_PEAK, width RING_WIDTH); both on
    RING_BASELINE."""
    directions = ring_directions(spec, device)
    ring = ~directions.isnan()
    table = torch.full((spec.n_outputs, spec.n_outputs), RING_BASELINE, device=device)
    bump = RING_PEAK * torch.exp(-0.5 * (angular_distance(directions[:, None], directions[None, :]) / RING_WIDTH) ** 2)
    table[ring[:, None] & ring[None, :]] += bump[ring[:, None] & ring[None, :]]
    table[spec.fixation, spec.fixation] = FIXATION_TARGET
    return table


def decoded_direction(outputs: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """The population vector of the ring units' sigmoid rates: the direction the ring read-out points to."""
    directions = ring_directions(spec, outputs.device)
    ring = ~directions.isnan()
    rates = torch.sigmoid(outputs[..., ring])
    return torch.atan2(rates @ directions[ring].sin(), rates @ directions[ring].cos()).remainder(2 * math.pi)


def task_loss(outputs: torch.Tensor, batch: TrialBatch, spec: TaskSpec) -> torch.Tensor:
    """Mask-weighted mean per-step loss: cross-entropy of logits (B, T, C) for classification, squared
    error averaged over output dims for regression and for a ring read-out (sigmoid units against
    :func:`ring_targets`, the fixation unit weighing FIXATION_WEIGHT). On ``batch.react`` steps (the time to
    react at a response window's start) fixating and the answer are both right: the loss is
    ``-log(p(fixate) + p(answer))``, so only a guess costs."""
    if spec.kind is TaskKind.CLASSIFICATION:
        log_p = outputs.log_softmax(-1)
        per_step = -log_p.gather(-1, batch.targets[..., None])[..., 0]
        if spec.fixation is not None:
            wait_or_answer = -torch.logaddexp(log_p[..., spec.fixation], -per_step)
            per_step = torch.where(batch.react & (batch.targets != spec.fixation), wait_or_answer, per_step)
    elif spec.kind is TaskKind.RING:
        weight = torch.ones(spec.n_outputs, device=outputs.device)
        weight[spec.fixation] = FIXATION_WEIGHT
        per_step = ((torch.sigmoid(outputs) - ring_targets(spec, outputs.device)[batch.targets]).square() * weight).mean(-1)
    else:
        per_step = (outputs - batch.targets).square().mean(-1)
    return (per_step * batch.mask).sum() / batch.mask.sum()


def scores(outputs: torch.Tensor, batch: TrialBatch, spec: TaskSpec) -> dict[str, float]:
    """One network's held-out scores: ``loss``, and ``accuracy`` and ``abort_rate`` (classification, see
    :func:`trial_outcomes`; per response period as ``accuracy/<period>`` where there are several; for timing
    tasks ``interval_error_ms``) or ``mse`` and ``r2`` (regression). A classification task without a response
    period reports the loss only. A task set reports each task's ``accuracy/<task>`` and ``abort_rate/<task>``,
    and as ``accuracy``, ``abort_rate`` their means over the tasks, ``accuracy_min`` the least."""
    metrics = {"loss": task_loss(outputs, batch, spec).item()}
    if spec.kind is TaskKind.REGRESSION:
        return metrics | {"mse": masked_mse(outputs, batch), "r2": explained_variance(outputs, batch)}
    if not spec.decision_periods:
        return metrics
    out = trial_outcomes(outputs, batch, spec)
    scored = out.outcome != ABSENT
    if spec.tasks:
        task = torch.as_tensor(batch.conditions["task"], device=scored.device)[:, None]
        for k, name in enumerate(spec.tasks):
            metrics[f"accuracy/{name}"] = _rate(out.outcome == CORRECT, scored & (task == k))
            metrics[f"abort_rate/{name}"] = _rate(out.outcome < WRONG, scored & (task == k))
        accuracies = [metrics[f"accuracy/{name}"] for name in spec.tasks]
        return metrics | {"accuracy": float(np.nanmean(accuracies)), "accuracy_min": float(np.nanmin(accuracies)),
                          "abort_rate": float(np.nanmean([metrics[f"abort_rate/{name}"] for name in spec.tasks]))}
    metrics["accuracy"] = _rate(out.outcome == CORRECT, scored)
    metrics["abort_rate"] = _rate(out.outcome < WRONG, scored)
    if len(spec.decision_periods) > 1:
        for k, period in enumerate(spec.decision_periods):
            in_period = scored & (out.period == k)
            metrics[f"accuracy/{period}"] = _rate(out.outcome == CORRECT, in_period)
    if spec.prod_margin is not None:
        responded = ~out.produced_interval.isnan() & (out.outcome >= WRONG)  # a response, not an abort
        error = (out.produced_interval - out.target_interval).abs()
        metrics["interval_error_ms"] = error[responded].mean().item() if responded.any() else math.nan
    return metrics


def scoring(spec: TaskSpec) -> str:
    """How :func:`scores` scores the task, in one line (the log and ``metrics.json`` say it)."""
    if spec.kind is TaskKind.REGRESSION:
        return "MSE and R^2 over the held-out trials' steps"
    if not spec.decision_periods:
        return "the loss only: no response period to score (task.decision_period: null)"
    periods = " and ".join(spec.decision_periods)
    if spec.prod_margin is not None:
        rule = f"a go in {periods} within {spec.prod_margin:g} x interval + 25 ms of the target"
    elif spec.kind is TaskKind.RING:
        rule = (f"the ring read-out at the end of {periods} (Yang et al. 2019): fixating (fixation unit above 0.5) "
                f"where the target is to fixate, else not fixating and the population vector within 0.2 pi of the "
                f"target direction")
    elif spec.fixation is None:
        rule = f"the choice at the end of {periods}"
    else:
        rule = f"the first response in {periods}"
    aborts = "; broken fixation and no response are aborts, counted as failures" if spec.fixation is not None else ""
    tasks = f"; each of the {len(spec.tasks)} tasks on its own, then averaged over them" if len(spec.tasks) > 1 else ""
    return f"accuracy of {rule}{aborts}{tasks}"


def _rate(hits: torch.Tensor, among: torch.Tensor) -> float:
    """Fraction of ``among`` that are ``hits``; NaN where ``among`` is empty."""
    n = int(among.sum())
    return (hits & among).sum().item() / n if n else math.nan


CORRECT, WRONG, BROKE_FIXATION, NO_RESPONSE, ABSENT = 1, 0, -1, -2, -3  # trial outcomes, per response window
OUTCOMES = {CORRECT: "correct", WRONG: "wrong", BROKE_FIXATION: "broke fixation", NO_RESPONSE: "no response",
            ABSENT: "absent"}


@dataclass
class Outcomes:
    """Each response window's outcome: (rows, windows) tensors, a window being one response period of one trial."""

    outcome: torch.Tensor  # int8: CORRECT, WRONG, BROKE_FIXATION, NO_RESPONSE (both aborts), ABSENT (not in the row)
    choice: torch.Tensor  # int64: the response (the first action other than fixation; the fixation action if none)
    target: torch.Tensor  # int64: the target class, at the window's last step
    period: torch.Tensor  # (windows,) int64: which of the task's response periods each window is
    produced_interval: torch.Tensor  # float32 ms (timing tasks): response time from the window's start; NaN if none
    target_interval: torch.Tensor  # float32 ms (timing tasks): the target's first go step from the window's start


def trial_outcomes(outputs: torch.Tensor, batch: TrialBatch, spec: TaskSpec) -> Outcomes:
    """Score every response window as NeuroGym and experimenters do, from the network's action at each step
    (the argmax of its outputs):

    - broke fixation (an abort): the action left fixation at a step before the window whose target is fixation
      and that is trained (since the row's start or the previous window's end; ``task.grace`` after a window
      is the way back to fixation);
    - no response (an abort): the target is a choice but the action never leaves fixation in the window;
    - otherwise the response is the first action other than fixation in the window: correct if it is the
      target; where the target is to keep fixating (a no-go trial), correct if there is no response at all;
    - timing tasks (``spec.prod_margin``): correct if the response comes within ``prod_margin * interval + 25``
      ms of the target's first go step, intervals measured from the window's start (NeuroGym's rule);
    - a task without a fixation action (``spec.fixation`` None): the action at the window's last step;
    - a ring read-out (``TaskKind.RING``, Yang et al. 2019): the action is to fixate while the fixation unit's
      sigmoid is above 0.5, else the ring unit nearest the population vector; the response is read at the
      window's last step, correct if it fixates where the target is to fixate, else if the population vector
      lies within RING_TOLERANCE of the target's direction (broken fixation before the window is an abort, as
      above).
    """
    targets, window, ring = batch.targets, batch.window, spec.kind is TaskKind.RING
    if ring:  # fixating while the fixation unit is above 0.5, else pointing to the ring unit nearest its population vector
        direction, preferred = decoded_direction(outputs, spec), ring_directions(spec, outputs.device)
        nearest = angular_distance(direction[..., None], preferred).nan_to_num(math.inf).argmin(-1)
        action = torch.where(outputs[..., spec.fixation] > 0, spec.fixation, nearest)
    else:
        action = outputs.argmax(-1)
    n_rows, n_steps = action.shape
    steps = torch.arange(n_steps, device=action.device).expand(n_rows, -1)
    fix, n_periods = spec.fixation, max(1, len(spec.decision_periods))
    wait = (batch.mask > 0) & (targets == fix) if fix is not None else torch.zeros_like(action, dtype=torch.bool)
    previous_end = torch.zeros(n_rows, dtype=torch.long, device=action.device)
    columns: dict[str, list[torch.Tensor]] = {k: [] for k in ("outcome", "choice", "target", "produced", "interval")}
    for w in range(1, batch.n_windows + 1):
        inside = window == w
        present = inside.any(1)
        start = torch.where(inside, steps, n_steps).amin(1)
        last = torch.where(inside, steps, -1).amax(1).clamp_min(0)
        target = targets.gather(1, last[:, None])[:, 0]
        if fix is None:
            choice = action.gather(1, last[:, None])[:, 0]
            outcome = (choice == target).to(torch.int8)
            produced = interval = torch.full_like(target, math.nan, dtype=torch.float32)
        else:
            before = wait & (steps >= previous_end[:, None]) & (steps < start[:, None])
            broke = (before & (action != fix)).any(1)
            first = torch.where(inside & (action != fix), steps, n_steps).amin(1)
            responded = first < n_steps
            choice = torch.where(responded, action.gather(1, first.clamp_max(n_steps - 1)[:, None])[:, 0], fix)
            produced = interval = torch.full_like(target, math.nan, dtype=torch.float32)
            if ring:  # the read-out at the window's last step
                choice = action.gather(1, last[:, None])[:, 0]
                responded = choice != fix
                near = angular_distance(direction.gather(1, last[:, None])[:, 0], preferred[target]) < RING_TOLERANCE
                correct = torch.where(target == fix, ~responded, responded & near)
            elif spec.prod_margin is not None:  # the target is to go at one moment (its first go step)
                go = torch.where(inside & (targets != fix), steps, n_steps).amin(1)
                target = torch.where(go < n_steps, targets.gather(1, go.clamp_max(n_steps - 1)[:, None])[:, 0], fix)
                produced = torch.where(responded, (first - start) * spec.dt, math.nan).float()
                interval = ((go - start) * spec.dt).float()
                correct = responded & ((produced - interval).abs() <= spec.prod_margin * interval + 25)
            else:
                correct = torch.where(target == fix, ~responded, choice == target)
            outcome = torch.where(broke, BROKE_FIXATION, torch.where(~responded & (target != fix), NO_RESPONSE,
                                                                     correct.to(torch.int8)))
        columns["outcome"].append(torch.where(present, outcome.to(torch.int8), ABSENT))
        columns["choice"].append(choice)
        columns["target"].append(target)
        columns["produced"].append(produced)
        columns["interval"].append(interval)
        previous_end = torch.where(present, last + 1, previous_end)
    stack = {k: torch.stack(v, 1) if v else torch.empty(n_rows, 0, device=action.device) for k, v in columns.items()}
    period = torch.arange(batch.n_windows, device=action.device) % n_periods
    return Outcomes(stack["outcome"].to(torch.int8), stack["choice"].long(), stack["target"].long(), period,
                    stack["produced"].float(), stack["interval"].float())


OBJECTIVES = {"accuracy": True, "accuracy_min": True, "r2": True, "mse": False, "loss": False}  # metric -> higher is better


@dataclass(frozen=True)
class Objective:
    """A run's primary held-out metric: what its best checkpoint keeps, its last line reports, and a sweep
    (Optuna included) optimises."""

    metric: str
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    def value(self, metrics: Mapping[str, float]) -> float:
        return float(metrics.get(self.metric, math.nan))

    def score(self, metrics: Mapping[str, float]) -> float:
        """The value signed so that higher is better (``-mse``); -inf where it is missing or not a number."""
        value = self.value(metrics)
        return -math.inf if math.isnan(value) else value if self.maximize else -value


def objective(spec: TaskSpec, setting: str = "auto") -> Objective:
    """The objective ``train.objective`` names: ``auto`` is the accuracy for classification tasks (the loss
    where no response is scored; a task set's mean over its tasks, ``accuracy_min`` its least), the MSE for
    regression tasks. A metric the task does not report raises a
    one-line ValueError."""
    if spec.kind is TaskKind.REGRESSION:
        reported = ("mse", "r2", "loss")  # as scores()
        what = "regression tasks"
    else:
        reported = ("accuracy", *(("accuracy_min",) if spec.tasks else ()), "loss") if spec.decision_periods else ("loss",)
        what = "classification tasks" if spec.decision_periods else f"{spec.name} without a response period"
    metric = reported[0] if setting == "auto" else setting
    if metric not in reported:
        raise ValueError(f"train.objective: {metric} is not reported for {what}; choose one of auto, "
                         f"{', '.join(sorted(reported))}")
    return Objective(metric, OBJECTIVES[metric])


def masked_mse(outputs: torch.Tensor, batch: TrialBatch) -> float:
    """Unweighted mean squared error over the steps with mask > 0 (regression tasks)."""
    valid = batch.mask > 0
    return (outputs - batch.targets)[valid].square().mean().item()


def explained_variance(outputs: torch.Tensor, batch: TrialBatch) -> float:
    """R^2 over the steps with mask > 0: 1 - squared error / squared deviation of the targets from
    their mean (per output); 1 is perfect, 0 is no better than always answering the mean."""
    valid = batch.mask > 0
    targets = batch.targets[valid]
    error = (outputs[valid] - targets).square().sum()
    spread = (targets - targets.mean(0)).square().sum()
    return (1 - error / spread).item()
