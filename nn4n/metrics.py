"""Loss and task performance on TrialBatches (torch, any device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nn4n.data import TrialBatch


def task_loss(outputs: torch.Tensor, batch: TrialBatch, kind: str) -> torch.Tensor:
    """Mask-weighted mean per-step loss: cross-entropy of logits (B, T, C) for
    "classification", squared error averaged over output dims for "regression"."""
    if kind == "classification":
        per_step = F.cross_entropy(outputs.flatten(0, 1), batch.targets.flatten(), reduction="none")
        per_step = per_step.view_as(batch.mask)
    elif kind == "regression":
        per_step = (outputs - batch.targets).square().mean(-1)
    else:
        raise ValueError(f"task.kind: unknown kind '{kind}'; allowed: classification, regression")
    return (per_step * batch.mask).sum() / batch.mask.sum()


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
