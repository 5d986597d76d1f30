"""Held-out evaluation: task performance and the activity record saved as ``.npz``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .data import TrialBatch
from .ensemble import Ensemble
from .files import atomic_write
from .metrics import scores, trial_outcomes
from .model import CTRNN, Activity
from .perturb import Effect, Perturbation
from .tasks import TaskKind, TaskSpec


@torch.no_grad()
def evaluate(model: CTRNN, batch: TrialBatch, spec: TaskSpec, noise: bool = False,
             perturb: Sequence[Perturbation | Mapping[str, Any]] | Effect | None = None) -> tuple[dict[str, float], torch.Tensor, Activity]:
    """Run held-out trials, without the network's noise unless ``noise``, perturbed by ``perturb``
    (:mod:`nn4n.perturb`); metrics as in :func:`nn4n.metrics.scores`."""
    was_training = model.training
    model.eval()
    outputs, activity = model(batch.inputs, noise=noise, perturb=perturb, epochs=batch.epochs)
    model.train(was_training)
    return scores(outputs, batch, spec), outputs, activity


@torch.no_grad()
def evaluate_ensemble(ensemble: Ensemble, batch: TrialBatch, spec: TaskSpec) -> list[tuple[dict[str, float], torch.Tensor, Activity]]:
    """:func:`evaluate` for every network of ``ensemble`` on the same held-out trials, in one batched run."""
    was_training = ensemble.training
    ensemble.eval()
    outputs, activities = ensemble(batch.inputs.expand(len(ensemble), *batch.inputs.shape))
    ensemble.train(was_training)
    return [(scores(out, batch, spec), out, act) for out, act in zip(outputs, activities)]


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
    if spec.tasks:
        record["tasks"] = np.array(spec.tasks)  # cond_task indexes them
    if spec.kind is not TaskKind.REGRESSION and spec.decision_periods:
        out = trial_outcomes(outputs, batch, spec)
        record |= {"outcome": out.outcome, "choice": out.choice, "target_choice": out.target,
                   "response_period": np.array(spec.decision_periods)[out.period.cpu().numpy()]}
        if spec.prod_margin is not None:
            record |= {"produced_interval": out.produced_interval, "target_interval": out.target_interval}
        record |= {k: v.cpu().numpy() for k, v in record.items() if isinstance(v, torch.Tensor)}
    return record


def save_activity(path: Path, record: dict[str, np.ndarray]) -> None:
    """Write ``record`` as a compressed ``.npz``, atomically."""
    atomic_write(path, lambda f: np.savez_compressed(f, **record))
