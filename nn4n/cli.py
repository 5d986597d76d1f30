"""``nn4n-train``: compose the Hydra config, check it, train, and report errors in one line."""
from __future__ import annotations

import logging
import shutil
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .command import check_config_dir, check_writable, config_dirs, fail, flags_first, log_to_file, run
from .config import register_schema
from .errors import ConfigError, TrainingError
from .sweep import finished_metrics, sweep_job

log = logging.getLogger("nn4n")
register_schema()
# configs/hydra/launcher/submitit_local.yaml spells out the plugin's config of the same name
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_local' is validated against ConfigStore schema")


def _preflight(argv: list[str]) -> None:
    """Before Hydra runs: the config folders read as data; an output directory checked before Hydra creates it
    (or, a run's, writes its config into it while another process trains there); overrides that would
    silently do nothing."""
    from .rundir import LOCK_FILE, RunLocked, lock_message, read_lock, stale

    for folder in config_dirs(argv):
        check_config_dir(folder)
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key == "model.areas" and value.replace(" ", "") == "{}":
            raise ConfigError("model.areas: {} adds no area (an override merges into the arch's areas); name an "
                              "arch file (arch=...) or add areas whole ('++model.areas={V1:{size:64}}')")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value:
            fixed = value.split("${")[0]  # the part before any interpolation
            if fixed and not fixed.endswith("/") and "${" in value:
                fixed = str(Path(fixed).parent)
            check_writable(Path(fixed or "."), key)
            holder = read_lock(Path(value) / LOCK_FILE) if key == "hydra.run.dir" and "${" not in value else None
            if holder is not None and not stale(holder):
                raise RunLocked(lock_message(Path(value), holder))


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def _resumed(argv: list[str]) -> list[str]:
    """``resume=RUN_DIR [key=value ...]``: in its place the run's own overrides (those not given again) and
    ``hydra.run.dir=RUN_DIR``; any other command line as it is.

    The run's record is read as data and checked first. Whatever would run code stays the user's to name:
    a ``task.dirs`` of the run's (task code) must be given again on the command line, and so must the run's
    ``--config-dir`` (config folders hold Hydra settings that it instantiates)."""
    from .rundir import run_overrides

    at = [i for i, arg in enumerate(argv) if arg.startswith("resume=")]
    if not at:
        return argv
    given = argv[: at[0]] + argv[at[0] + 1:]
    if len(at) > 1 or {"-m", "--multirun"} & set(argv) or "hydra.run.dir" in map(_key, given):
        raise ConfigError("resume: give one run directory, for a single run, without hydra.run.dir (a sweep "
                          "resumes by running its command again into the same hydra.sweep.dir)")
    run_dir = Path(argv[at[0]].partition("=")[2])
    try:
        overrides, config_dirs = run_overrides(run_dir)
    except ValueError as err:
        raise ConfigError(f"resume: {err}") from None
    replaced = set(map(_key, given))
    own = [arg for arg in overrides if _key(arg) not in replaced]
    code = [arg for arg in own if _key(arg) == "task.dirs"]
    if code:
        raise ConfigError(f"resume: the run in {run_dir} imports task code ({code[0]}); code from a run folder runs "
                          f"only when you name it: nn4n-train resume={run_dir} '{code[0]}'")
    named = {"--config-dir", "-cd"} & {arg.partition("=")[0] for arg in given} or "-cd" in given or "--config-dir" in given
    if config_dirs and not named:
        raise ConfigError(f"resume: the run in {run_dir} was started with --config-dir {config_dirs[0]}; a config "
                          f"folder is read only when you name it: nn4n-train --config-dir {config_dirs[0]} resume={run_dir}")
    # in resume='s place: Hydra's parser wants the overrides in one run, between its flags
    return [*argv[: at[0]], *own, f"hydra.run.dir={run_dir}", *argv[at[0] + 1:]]


def _discard(run_dir: Path) -> None:
    """Remove a run directory this invocation created but never trained in (a config error), and the folders
    above it that are left empty (``runs/<task>/``)."""
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.absolute().parents[:2]:
            try:
                parent.rmdir()
            except OSError:  # not empty (or not ours to remove)
                break


@hydra.main(version_base="1.3", config_path="pkg://nn4n_configs", config_name="config")
@sweep_job  # in a sweep: error.txt in a failed job's directory, for nn4n-sweep-summary
def _main(cfg: DictConfig) -> float:
    from .rundir import RunLocked, restore_hydra_record


    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return _run(cfg, run_dir)
    except RunLocked:
        raise  # the run is another process's: its files are left alone
    except BaseException:  # a config error, a crash or Ctrl-C before training
        restore_hydra_record(run_dir)  # a run already in run_dir keeps its record, which Hydra overwrote
        raise


def _run(cfg: DictConfig, run_dir: Path) -> float:
    """Check the config, train in ``run_dir`` and return the sweep's objective."""
    from .config import check_config

    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        check_config(cfg)  # every value that needs no task, before torch and NeuroGym load
        from .experiment import resolve, run_objective, task_spec
        from .rundir import RunLock, RunLocked, last_checkpoint
        from .train import train

        config = resolve(cfg)
        objective = run_objective(config, task_spec(config.task))
        check_writable(run_dir)
    except (ConfigError, KeyboardInterrupt) as err:
        if not sweeping:  # a sweep keeps the job's directory: the summary lists it as failed
            _discard(run_dir)
        if isinstance(err, KeyboardInterrupt):
            raise
        fail("nn4n-train", err)
    try:
        with RunLock(run_dir):
            done = finished_metrics(run_dir, config) if sweeping else None  # a re-run sweep skips finished jobs
            metrics = done or train(config, run_dir)
    except RunLocked as err:
        fail("nn4n-train", err)
    except OSError as err:  # a full disk, a folder made read-only: the checkpoints written so far are kept
        kept = f"its last checkpoint {last_checkpoint(run_dir)} is kept" if last_checkpoint(run_dir).exists() else "no checkpoint yet"
        fail("nn4n-train", TrainingError(f"hydra.run.dir: cannot write {err.filename or run_dir}: {err.strerror}; {kept}"))
    except KeyboardInterrupt:  # Ctrl-C before training started (during it, the loop checkpoints and stops)
        if not sweeping and not last_checkpoint(run_dir).exists():
            _discard(run_dir)
        raise
    except (ConfigError, TrainingError) as err:
        log_to_file(err)
        if isinstance(err, ConfigError) and not sweeping:
            _discard(run_dir)  # e.g. a device this machine lacks: nothing was trained
        fail("nn4n-train", err)
    return objective.value(metrics)


def _register_launchers() -> None:
    """nn4n's launchers (``hydra_plugins.nn4n_launchers``) for Hydra, also where its plugin scan cannot list
    them (an editable install)."""
    from hydra.core.plugins import Plugins

    try:
        from hydra_plugins import nn4n_launchers
    except ImportError:  # no slurm extra
        return
    for name in ("SlurmLauncher", "LocalLauncher"):
        if hasattr(nn4n_launchers, name):
            Plugins.instance().register(getattr(nn4n_launchers, name))


def main() -> None:
    """``nn4n-train``: every error one line on stderr and a non-zero exit (2: bad config); see :mod:`nn4n.command`."""
    def body() -> None:
        sys.argv[1:] = _resumed(flags_first(sys.argv[1:]))
        _preflight(sys.argv[1:])
        if "-m" in sys.argv or "--multirun" in sys.argv:
            _register_launchers()
        _main()

    run("nn4n-train", body, "nothing was trained (before training starts; during training it checkpoints and stops)")
