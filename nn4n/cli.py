"""``nn4n-train``: compose the Hydra config, check it, train, and report errors in one line."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import one_line, register_schema
from .errors import ConfigError, TrainingError
from .sweep import finished_metrics, sweep_job

log = logging.getLogger("nn4n")
_FULL_ERROR = "NN4N_FULL_ERROR"  # the user's own HYDRA_FULL_ERROR setting
register_schema()
# configs/hydra/launcher/submitit_local.yaml spells out the plugin's config of the same name
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_local' is validated against ConfigStore schema")


def _check_writable(path: Path, key: str = "hydra.run.dir") -> None:
    """Write a probe file into ``path`` (or its nearest existing parent), creating nothing else."""
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    try:
        with tempfile.TemporaryFile(dir=existing) as probe:
            probe.write(b"0" * 4096)
    except OSError as err:
        raise ConfigError(f"{key}: cannot write to {path}: {err.strerror}") from None


VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
               "--experimental-rerun")
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
GROUP_FILES = ("arch", "model", "task", "train", "logging", "experiment", "debug")  # each file a mapping of settings


def _flags_first(argv: list[str]) -> list[str]:
    """The command line with its flags (and their values) before the overrides, where Hydra's parser wants them:
    ``nn4n-train seed=1 --cfg job`` works as ``nn4n-train --cfg job seed=1``."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            overrides.append(arg)
            i += 1
            continue
        with_value = arg in VALUE_FLAGS or (arg in ("--info", "-i") and argv[i + 1:i + 2] != [] and argv[i + 1] in INFO_TOPICS)
        flags += argv[i:i + 1 + with_value]
        i += 1 + with_value
    return flags + overrides


def _config_dirs(argv: list[str]) -> list[Path]:
    return [Path(argv[i + 1]) for i, arg in enumerate(argv[:-1]) if arg in ("--config-dir", "-cd")] + [
        Path(arg.partition("=")[2]) for arg in argv if arg.startswith(("--config-dir=", "-cd="))]


def _check_config_dir(folder: Path) -> None:
    """Every YAML file of a ``--config-dir`` read as data before Hydra reads it: one line for a syntax error,
    a duplicate key, an object tag or an alias bomb, and for a group file (``arch/...``) that is not a mapping."""
    from . import safe_yaml

    if not folder.is_dir():
        raise ConfigError(f"--config-dir: {folder} is not a directory")
    for path in sorted(folder.rglob("*.yaml")):
        try:
            data = safe_yaml.load(path)
        except ValueError as err:
            raise ConfigError(f"--config-dir: {err}") from None
        group = path.relative_to(folder).parts[0]
        if group in GROUP_FILES and not (isinstance(data, dict) and data):
            raise ConfigError(f"--config-dir: {path}: a {group} file must be a mapping of settings, got "
                              f"{type(data).__name__ if data is not None else 'an empty file'}")


def _preflight(argv: list[str]) -> None:
    """Before Hydra runs: the config folders read as data; an output directory checked before Hydra creates it
    (or, a run's, writes its config into it while another process trains there); overrides that would
    silently do nothing."""
    from .rundir import LOCK_FILE, RunLocked, lock_message, read_lock, stale

    for folder in _config_dirs(argv):
        _check_config_dir(folder)
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key == "model.areas" and value.replace(" ", "") == "{}":
            raise ConfigError("model.areas: {} adds no area (an override merges into the arch's areas); name an "
                              "arch file (arch=...) or add areas whole ('++model.areas={V1:{size:64}}')")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value:
            fixed = value.split("${")[0]  # the part before any interpolation
            if fixed and not fixed.endswith("/") and "${" in value:
                fixed = str(Path(fixed).parent)
            _check_writable(Path(fixed or "."), key)
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
        _check_writable(run_dir)
    except (ConfigError, KeyboardInterrupt) as err:
        if not sweeping:  # a sweep keeps the job's directory: the summary lists it as failed
            _discard(run_dir)
        if isinstance(err, KeyboardInterrupt):
            raise
        _fail(err)
    try:
        with RunLock(run_dir):
            done = finished_metrics(run_dir, config) if sweeping else None  # a re-run sweep skips finished jobs
            metrics = done or train(config, run_dir)
    except RunLocked as err:
        _fail(err)
    except OSError as err:  # a full disk, a folder made read-only: the checkpoints written so far are kept
        kept = f"its last checkpoint {last_checkpoint(run_dir)} is kept" if last_checkpoint(run_dir).exists() else "no checkpoint yet"
        _fail(TrainingError(f"hydra.run.dir: cannot write {err.filename or run_dir}: {err.strerror}; {kept}"))
    except KeyboardInterrupt:  # Ctrl-C before training started (during it, the loop checkpoints and stops)
        if not sweeping and not last_checkpoint(run_dir).exists():
            _discard(run_dir)
        raise
    except (ConfigError, TrainingError) as err:
        _log_to_file(err)
        if isinstance(err, ConfigError) and not sweeping:
            _discard(run_dir)  # e.g. a device this machine lacks: nothing was trained
        _fail(err)
    return objective.value(metrics)


def _log_to_file(err: Exception) -> None:
    """The error into the run's ``nn4n.log`` only: the terminal gets it once, from :func:`_fail`."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (err,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _fail(err: ConfigError | TrainingError) -> NoReturn:
    """A single run exits here with one line; in a sweep the error fails only this job."""
    if HydraConfig.get().mode == RunMode.MULTIRUN or os.environ.get(_FULL_ERROR) == "1":
        raise err
    print(f"nn4n-train: error: {err}", file=sys.stderr)
    sys.exit(err.exit_code if isinstance(err, TrainingError) else 2)


def one_line_error(err: Exception) -> str:
    """One line for any configuration or training error, Hydra's own included."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"{group or 'config'}: no option {name!r}; available: {', '.join(err.options)}"
    cause = err.__cause__ or err.__context__
    if isinstance(cause, OmegaConfBaseException):
        return one_line(cause)
    if isinstance(err, OmegaConfBaseException):
        return one_line(err)
    return str(err).strip().splitlines()[0]


def main() -> None:
    """``nn4n-train``: every error becomes one line on stderr and a non-zero exit (2: bad config).

    ``HYDRA_FULL_ERROR=1`` shows the full traceback instead.
    """
    user_setting = os.environ.get("HYDRA_FULL_ERROR")
    os.environ[_FULL_ERROR] = "1" if user_setting == "1" else ""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's errors reach this function instead of its report
    try:
        sys.argv[1:] = _resumed(_flags_first(sys.argv[1:]))
        _preflight(sys.argv[1:])
        _main()
    except (ConfigError, TrainingError, HydraException, OmegaConfBaseException) as err:
        if user_setting == "1":
            raise
        print(f"nn4n-train: error: {one_line_error(err)}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        if user_setting == "1":
            raise
        print("nn4n-train: interrupted (Ctrl-C) before training; nothing was trained", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader of --help went away (nn4n-train --help | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    finally:
        os.environ.pop(_FULL_ERROR)
        if user_setting is None:
            os.environ.pop("HYDRA_FULL_ERROR")
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_setting
