"""Where an analysis reads its networks and writes its results: every network of a run, or of every finished job
of a sweep, and for each a folder ``analysis/<name>/`` beside the network's own files (or under ``out=``),
written atomically, with figures in the network's TensorBoard under ``analysis/<name>/``."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import OmegaConf

from ..files import atomic_write
from ..rundir import METRICS_FILE, last_checkpoint, network_dir

ANALYSIS_DIR = "analysis"


@dataclass(frozen=True)
class Target:
    """One network to analyse: ``run`` (its run directory), ``network`` (its index there), ``home`` (the folder
    that keeps its own files: the run directory, or ``networks/<k>/``), and ``base``, where its results go."""

    run: Path
    network: int
    home: Path
    base: Path

    def results(self, analysis: str, job: str | None = None) -> Path:
        """The analysis' folder: ``base/analysis/<analysis>/`` (``.../<job>/`` for a job of an analysis sweep)."""
        folder = self.base / ANALYSIS_DIR / analysis
        return folder / job if job is not None else folder


def _networks(run: Path) -> int:
    from .. import safe_yaml

    config = safe_yaml.load(run / ".hydra" / "config.yaml")
    try:
        n = int(config["train"]["n_networks"])
    except (KeyError, TypeError, ValueError):
        n = 1
    return n


def targets(path: Path, network: int | None = None, out: Path | None = None) -> list[Target]:
    """The networks under ``path``: a run directory (every network of it, or only ``network``), or a folder of
    runs such as a sweep (every finished run under it, in order). ``out`` moves every result folder under it
    (keeping each run's place relative to ``path``). One-line ValueErrors for a folder with no run."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"run: {path} is not a directory")
    runs = [path] if (path / ".hydra" / "config.yaml").is_file() else sorted(
        (p.parent.parent for p in path.rglob(".hydra/config.yaml") if (p.parent.parent / METRICS_FILE).exists()),
        key=lambda p: [int(t) if t.isdigit() else t for t in p.relative_to(path).parts])
    if not runs:
        raise ValueError(f"run: {path} holds no finished nn4n-train run (a run directory, or a sweep of them)")
    found = []
    for run in runs:
        if not last_checkpoint(run).exists():
            raise ValueError(f"run: {run} has no checkpoint (checkpoints/last.pt): not trained yet")
        n = _networks(run)
        wanted = range(n) if network is None else [network]
        if network is not None and not 0 <= network < n:
            raise ValueError(f"network: must be in [0, {n}) for the run in {run}, got {network}")
        for k in wanted:
            home = network_dir(run, k, n)
            base = home if out is None else Path(out) / home.relative_to(path)
            found.append(Target(run, k, home, base))
    return found


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def write_table(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def write_json(path: Path, values: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(values, indent=2).encode()))


def write_config(path: Path, config: Any) -> None:
    atomic_write(path, lambda f: f.write(OmegaConf.to_yaml(OmegaConf.create(config)).encode()))


def write_figures(target: Target, analysis: str, figures: dict[str, Any], step: int = 0) -> None:
    """The figures into the network's TensorBoard (``base/tensorboard``), tagged ``analysis/<analysis>/<name>``."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(target.base / "tensorboard")) as writer:
        for name, fig in figures.items():
            writer.add_figure(f"{ANALYSIS_DIR}/{analysis}/{name}", fig, step)
