"""Held-out evaluation: task performance and the activity record saved as ``.npz``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import TrialBatch
from .metrics import choices, decision_accuracy, decision_targets, explained_variance, masked_mse, task_loss
from .ensemble import Ensemble
from .model import CTRNN, Activity
from .tasks import TaskSpec


def scores(outputs: torch.Tensor, batch: TrialBatch, kind: str) -> dict[str, float]:
    """``loss`` and ``accuracy`` (classification) or ``mse`` and ``r2`` (regression) of one network's outputs."""
    metrics = {"loss": task_loss(outputs, batch, kind).item()}
    if kind == "classification":
        metrics["accuracy"] = decision_accuracy(outputs, batch)
    else:
        metrics["mse"] = masked_mse(outputs, batch)
        metrics["r2"] = explained_variance(outputs, batch)
    return metrics


@torch.no_grad()
def evaluate(model: CTRNN, batch: TrialBatch, kind: str, noise: bool = False) -> tuple[dict[str, float], torch.Tensor, Activity]:
    """Run held-out trials, without the network's noise unless ``noise``; metrics as in :func:`scores`."""
    was_training = model.training
    model.eval()
    outputs, activity = model(batch.inputs, noise=noise)
    model.train(was_training)
    return scores(outputs, batch, kind), outputs, activity


@torch.no_grad()
def evaluate_ensemble(ensemble: Ensemble, batch: TrialBatch, kind: str) -> list[tuple[dict[str, float], torch.Tensor, Activity]]:
    """:func:`evaluate` for every network of ``ensemble`` on the same held-out trials, in one batched run."""
    was_training = ensemble.training
    ensemble.eval()
    outputs, activities = ensemble(batch.inputs.expand(len(ensemble), *batch.inputs.shape))
    ensemble.train(was_training)
    return [(scores(out, batch, kind), out, act) for out, act in zip(outputs, activities)]


def activity_record(model: CTRNN, batch: TrialBatch, outputs: torch.Tensor, activity: Activity, spec: TaskSpec) -> dict[str, np.ndarray]:
    """Everything needed to study the network offline, as numpy arrays (see README for the keys)."""
    st = model.structure
    weights = {name: w.cpu().numpy() for name, w in model.weights().items()}
    record = {
        "rates": activity.rates.cpu().numpy(),
        "inputs": batch.inputs.cpu().numpy(),
        "outputs": outputs.cpu().numpy(),
        "input_labels": np.array(spec.input_labels),
        "output_labels": np.array(spec.output_labels),
        "targets": batch.targets.cpu().numpy(),
        "mask": batch.mask.cpu().numpy(),
        "lengths": batch.lengths.cpu().numpy(),
        **weights,
        "sign": st.sign,
        "area": st.area,
        "area_names": np.array(st.area_names),
        "tau": model.tau.detach().cpu().numpy(),
        "dt": np.array(model.config.dt),
        **{f"cond_{k}": v for k, v in batch.conditions.items()},
        **{f"epoch_{k}": v for k, v in batch.epochs.items()},
    }
    if spec.kind == "classification":
        record["choice"] = choices(outputs, batch).cpu().numpy()
        record["target_choice"] = decision_targets(batch).cpu().numpy()
    return record


def save_activity(path: Path, record: dict[str, np.ndarray]) -> None:
    """Write ``record`` as a compressed ``.npz`` atomically."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **record)
    tmp.replace(path)
