"""Loss, task performance and the run's objective on TrialBatches (torch, any device)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from .data import TrialBatch
from .tasks import TaskKind


def task_loss(outputs: torch.Tensor, batch: TrialBatch, kind: TaskKind) -> torch.Tensor:
    """Mask-weighted mean per-step loss: cross-entropy of logits (B, T, C) for classification, squared
    error averaged over output dims for regression."""
    if kind is TaskKind.CLASSIFICATION:
        per_step = F.cross_entropy(outputs.flatten(0, 1), batch.targets.flatten(), reduction="none")
        per_step = per_step.view_as(batch.mask)
    else:
        per_step = (outputs - batch.targets).square().mean(-1)
    return (per_step * batch.mask).sum() / batch.mask.sum()


def scores(outputs: torch.Tensor, batch: TrialBatch, kind: TaskKind) -> dict[str, float]:
    """``loss`` and ``accuracy`` (classification) or ``mse`` and ``r2`` (regression) of one network's outputs."""
    metrics = {"loss": task_loss(outputs, batch, kind).item()}
    if kind is TaskKind.CLASSIFICATION:
        metrics["accuracy"] = decision_accuracy(outputs, batch)
    else:
        metrics["mse"] = masked_mse(outputs, batch)
        metrics["r2"] = explained_variance(outputs, batch)
    return metrics


OBJECTIVES = {"accuracy": True, "r2": True, "mse": False, "loss": False}  # metric -> higher is better


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


def objective(kind: TaskKind, setting: str = "auto") -> Objective:
    """The objective ``train.objective`` names: ``auto`` is accuracy for classification, MSE for regression.
    A metric the task does not report raises a one-line ValueError."""
    metric = setting if setting != "auto" else "accuracy" if kind is TaskKind.CLASSIFICATION else "mse"
    reported = ("loss", "accuracy") if kind is TaskKind.CLASSIFICATION else ("loss", "mse", "r2")  # as scores()
    if metric not in reported:
        raise ValueError(f"train.objective: {metric} is not reported for {kind.value} tasks; choose one of "
                         f"auto, {', '.join(reported)}")
    return Objective(metric, OBJECTIVES[metric])


def choices(outputs: torch.Tensor, batch: TrialBatch) -> torch.Tensor:
    """(B,) int64 choice per trial: argmax of the mean logits over its decision steps; -1 if none."""
    n_decision = batch.decision.sum(1)
    mean = torch.where(batch.decision.unsqueeze(-1), outputs, 0).sum(1) / n_decision.clamp_min(1).unsqueeze(-1)
    return torch.where(n_decision > 0, mean.argmax(-1), -1)


def decision_targets(batch: TrialBatch) -> torch.Tensor:
    """(B,) int64 target class at each trial's last decision step; -1 if it has none."""
    steps = torch.arange(batch.decision.shape[1], device=batch.decision.device)
    last = torch.where(batch.decision, steps, -1).amax(1)
    target = batch.targets.gather(1, last.clamp_min(0).unsqueeze(1)).squeeze(1)
    return torch.where(last >= 0, target, -1)


def decision_accuracy(outputs: torch.Tensor, batch: TrialBatch) -> float:
    """Fraction of trials with a decision period whose choice is the target; NaN if there are none."""
    has_decision = batch.decision.any(1)
    if not has_decision.any():
        return float("nan")
    correct = choices(outputs, batch) == decision_targets(batch)
    return correct[has_decision].float().mean().item()


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
