"""Everything about a run directory: where each file goes, the Hydra record, the resume checks, ``metrics.json``.

A run directory holds ``.hydra/`` (the config as Hydra composed it), ``nn4n.log``, ``tensorboard/``,
``checkpoints/last.pt`` (everything needed to resume) and, per network, ``checkpoints/best.pt``,
``activity.npz`` and ``metrics.json``: in the run directory itself for one network, in ``networks/<k>/``
for each of K > 1 (the run's own ``metrics.json`` then summarizes them). ``metrics.json`` is written last:
its presence marks a finished run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import OmegaConf

from .errors import ConfigError
from .files import write_json

if TYPE_CHECKING:
    from .config import Config

METRICS_FILE = "metrics.json"
ACTIVITY_FILE = "activity.npz"
# Settings that may differ when a run is resumed (and train.steps, see check_resumable); the rest must match.
RESUMABLE_CHANGES = ("train.device", "train.engine", "train.matmul_precision", "train.threads",
                     "train.retain_freed_memory", "train.data_workers", "train.eval_every",
                     "train.checkpoint_every", "logging.")


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run resumes from (all networks, optimizer, random states)."""
    return run_dir / "checkpoints" / "last.pt"


def network_dir(run_dir: Path, index: int, n_networks: int) -> Path:
    """Where network ``index`` of a run of ``n_networks`` keeps its own files."""
    return run_dir if n_networks == 1 else run_dir / "networks" / f"{index:0{len(str(n_networks - 1))}d}"


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}`` (the config as checkpoints and HParams record it)."""
    if isinstance(values, dict):
        return {k: v for key, item in values.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: values}


def hydra_record(run_dir: Path) -> dict[str, str]:
    """The run's ``.hydra/*.yaml`` files (its config as Hydra composed it), by name; checkpoints carry them."""
    return {path.name: path.read_text() for path in sorted((run_dir / ".hydra").glob("*.yaml"))}


def restore_hydra_record(run_dir: Path) -> None:
    """Put back the ``.hydra`` files of the run in ``run_dir``, as its last checkpoint carries them:
    Hydra writes every command's config there first, also that of a command which then fails."""
    from .checkpoint import load_checkpoint  # torch: not needed by nn4n-sweep-summary

    last = last_checkpoint(run_dir)
    if last.exists():
        try:
            record = load_checkpoint(last).get("hydra", {})
        except ValueError:  # a checkpoint refused as unsafe: that error is the one reported
            return
        for name, text in record.items():
            (run_dir / ".hydra" / name).write_text(text)


def check_resumable(state: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """Refuse to continue the run in ``run_dir`` (its checkpoint ``state``) with another config.

    ``train.steps`` may change, to train longer or stop sooner, while the learning rate does not
    depend on it (``train.schedule: none``) and it is not below the steps already trained.
    """
    saved, done = state["config"], state["step"]
    for key in sorted(set(saved) | set(current)):
        if key.startswith(RESUMABLE_CHANGES) or saved.get(key) == current.get(key):
            continue
        steps = key == "train.steps"
        if steps and current[key] >= done and saved["train.schedule"] == "none":
            continue
        run = f"the run in {run_dir}"
        if steps and current[key] < done:
            was = f"{run} has already trained {done} steps"
        elif key not in saved:
            was = f"{run} has no such key"
        else:
            was = f"{run} was started with {saved[key]!r}" + (
                f" and its learning rate schedule ({saved['train.schedule']}) depends on it" if steps else "")
        now = f"is {current[key]!r}" if key in current else "is not set"
        record = OmegaConf.create(state.get("hydra", {}).get("overrides.yaml", "[]"))
        overrides = " ".join(OmegaConf.to_container(record)) or "none"  # as typed: ${...} unresolved
        raise ConfigError(f"{key}: {now} but {was}; resume with the run's own overrides ({overrides}; "
                          f"nn4n-train resume={run_dir} gives them) or use another output directory")


def check_disk_space(cfg: Config, run_dir: Path, n_neurons: int, n_steps: int) -> None:
    """Fail before training if ``run_dir`` cannot hold the checkpoints and activity arrays."""
    params = cfg.train.n_networks * n_neurons * (n_neurons + cfg.model.input_size + cfg.model.output_size + 4)
    activity = cfg.train.n_networks * cfg.train.eval_trials * n_steps * (n_neurons + 2 * cfg.model.output_size) * 4
    needed = 6 * params * 4 + 2 * activity + 50 * 2**20  # last + best (+ temporaries) + optimizer state + logs
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise ConfigError(f"hydra.run.dir: only {free / 2**20:.0f} MiB free in {run_dir}; this run needs about {needed / 2**20:.0f} MiB")


def read_metrics(path: Path) -> dict[str, Any]:
    """A finished run's (or network's) ``metrics.json``."""
    return json.loads((path / METRICS_FILE).read_text())


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """``path/metrics.json``, atomically."""
    write_json(path / METRICS_FILE, metrics)


def summarize_networks(per_network: list[dict[str, Any]]) -> dict[str, Any]:
    """Run metrics of K networks: mean and sample sd of every per-network score, and each network's."""
    summary: dict[str, Any] = {"n_networks": len(per_network)}
    scores = [k for k, v in per_network[0].items() if isinstance(v, float) and k != "wall_time_s"]
    for key in scores:
        values = np.array([m[key] for m in per_network], dtype=float)
        summary[key], summary[f"{key}_sd"] = float(values.mean()), float(values.std(ddof=1))
    return summary | {k: per_network[0][k] for k in ("steps", "wall_time_s", "scored")} | {"networks": per_network}
