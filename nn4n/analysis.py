"""Notebook access to a finished (or running) run: its model, its config and fresh activity records."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from .checkpoint import load_checkpoint
from .config import Config
from .evaluate import activity_record, evaluate
from .model import CTRNN
from .train import EVAL_SEED_OFFSET, resolve, sampler


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[CTRNN, Config]:
    """The network of ``run_dir/checkpoints/{checkpoint}.pt`` ('best' or 'last') and the run's config."""
    run_dir = Path(run_dir)
    cfg = resolve(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best":
        return CTRNN.load(path), cfg
    model = CTRNN(cfg.model)
    model.load_state_dict(load_checkpoint(path)["model"])
    return model, cfg


def activity_from_run(run_dir: str | Path, n_trials: int = 256, checkpoint: str = "best") -> dict[str, np.ndarray]:
    """Run ``n_trials`` held-out trials through a saved network; same keys as ``activity.npz``.

    Pass the result to :func:`nn4n.figures.all_figures` (or any single figure function).
    """
    model, cfg = load_run(run_dir, checkpoint)
    held_out = sampler(cfg.task, n_trials, cfg.seed + EVAL_SEED_OFFSET)
    batch, kind = held_out.batch(0), held_out.spec.kind
    _, outputs, activity = evaluate(model, batch, kind)
    return activity_record(model, batch, outputs, activity, kind)
