"""Held-out evaluation: task performance and the activity record saved as ``.npz``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import TrialBatch
from .ensemble import Ensemble
from .files import atomic_write
from .metrics import choices, decision_targets, scores
from .model import CTRNN, Activity
from .tasks import TaskKind, TaskSpec


@torch.no_grad()
def evaluate(model: CTRNN, batch: TrialBatch, kind: TaskKind, noise: bool = False) -> tuple[dict[str, float], torch.Tensor, Activity]:
    """Run held-out trials, without the network's noise unless ``noise``; metrics as in :func:`nn4n.metrics.scores`."""
    was_training = model.training
    model.eval()
    outputs, activity = model(batch.inputs, noise=noise)
    model.train(was_training)
    return scores(outputs, batch, kind), outputs, activity


@torch.no_grad()
def evaluate_ensemble(ensemble: Ensemble, batch: TrialBatch, kind: TaskKind) -> list[tuple[dict[str, float], torch.Tensor, Activity]]:
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
        "kind": np.array(spec.kind.value),
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
    if spec.kind is TaskKind.CLASSIFICATION:
        record["choice"] = choices(outputs, batch).cpu().numpy()
        record["target_choice"] = decision_targets(batch).cpu().numpy()
    return record


def save_activity(path: Path, record: dict[str, np.ndarray]) -> None:
    """Write ``record`` as a compressed ``.npz``, atomically."""
    atomic_write(path, lambda f: np.savez_compressed(f, **record))
