"""``nn4n-train``: compose the Hydra config, check it, train, and report errors in one line."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import ConfigError
from .train import TrainingError, resolve, train

log = logging.getLogger("nn4n")


def _check_writable(run_dir: Path) -> None:
    probe = run_dir / ".write_test"
    try:
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"hydra.run.dir: cannot write to {run_dir}: {err.strerror}") from None


def _discard(run_dir: Path) -> None:
    """Remove a run directory this invocation created but never trained in (a config error)."""
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="pkg://nn4n_configs", config_name="config")
def _main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        config = resolve(cfg)
        _check_writable(run_dir)
    except ConfigError as err:
        return _fail(err, run_dir, hydra_cfg.mode, discard=True)
    try:
        metrics = train(config, run_dir)
    except TrainingError as err:
        return _fail(err, run_dir, hydra_cfg.mode, discard=False)
    return metrics.get("accuracy", metrics.get("mse", float("nan")))


def _fail(err: Exception, run_dir: Path, mode: RunMode, discard: bool) -> float:
    """One line on stderr and exit 2; in a sweep, fail only this job."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    if discard:
        _discard(run_dir)
    if mode == RunMode.MULTIRUN:
        log.error("%s", err)
        raise err
    print(f"nn4n-train: error: {err}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    _main()
