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


def _preflight(argv: list[str]) -> None:
    """Check an output directory given on the command line before Hydra tries to create it."""
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value:
            fixed = value.split("${")[0]  # the part before any interpolation
            if fixed and not fixed.endswith("/") and "${" in value:
                fixed = str(Path(fixed).parent)
            _check_writable(Path(fixed or "."), key)


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def _resumed(argv: list[str]) -> list[str]:
    """``resume=RUN_DIR [key=value ...]``: in its place the run's own overrides (those not given again) and
    ``hydra.run.dir=RUN_DIR``, and the run's ``--config-dir`` first; any other command line as it is."""
    at = [i for i, arg in enumerate(argv) if arg.startswith("resume=")]
    if not at:
        return argv
    given = argv[: at[0]] + argv[at[0] + 1:]
    if len(at) > 1 or {"-m", "--multirun"} & set(argv) or "hydra.run.dir" in map(_key, given):
        raise ConfigError("resume: give one run directory, for a single run, without hydra.run.dir (a sweep "
                          "resumes by running its command again into the same hydra.sweep.dir)")
    run_dir = Path(argv[at[0]].partition("=")[2])
    record = run_dir / ".hydra" / "overrides.yaml"
    if not record.is_file():
        raise ConfigError(f"resume: {run_dir} is not an nn4n-train run directory (it has no .hydra/overrides.yaml)")
    replaced = set(map(_key, given))
    own = [arg for arg in OmegaConf.to_container(OmegaConf.load(record)) or [] if _key(arg) not in replaced]
    folder, hydra_record = [], run_dir / ".hydra" / "hydra.yaml"
    if hydra_record.is_file() and not {"--config-dir", "-cd"} & {arg.partition("=")[0] for arg in given}:
        sources = OmegaConf.load(hydra_record).hydra.runtime.config_sources  # the run's own config folder
        folder = [f"--config-dir={s.path}" for s in sources if s.provider == "command-line" and s.schema == "file"]
    # in resume='s place: Hydra's parser wants the overrides in one run, between its flags
    return [*folder, *argv[: at[0]], *own, f"hydra.run.dir={run_dir}", *argv[at[0] + 1:]]


def _discard(run_dir: Path) -> None:
    """Remove a run directory this invocation created but never trained in (a config error)."""
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="pkg://nn4n_configs", config_name="config")
@sweep_job  # in a sweep: error.txt in a failed job's directory, for nn4n-sweep-summary
def _main(cfg: DictConfig) -> float:
    from .rundir import restore_hydra_record

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return _run(cfg, run_dir)
    except BaseException:  # a config error, a crash or Ctrl-C before training
        restore_hydra_record(run_dir)  # a run already in run_dir keeps its record, which Hydra overwrote
        raise


def _run(cfg: DictConfig, run_dir: Path) -> float:
    """Check the config, train in ``run_dir`` and return the sweep's objective."""
    from .experiment import resolve, run_objective, task_spec  # torch and NeuroGym: once a job runs, not for --help
    from .train import train

    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        config = resolve(cfg)
        objective = run_objective(config, task_spec(config.task))
        _check_writable(run_dir)
        done = finished_metrics(run_dir, config) if sweeping else None  # a re-run sweep skips finished jobs
    except ConfigError as err:
        if not sweeping:  # a sweep keeps the job's directory: the summary lists it as failed
            _discard(run_dir)
        _fail(err)
    try:
        metrics = done or train(config, run_dir)
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
        sys.argv[1:] = _resumed(sys.argv[1:])
        _preflight(sys.argv[1:])
        _main()
    except (ConfigError, TrainingError, HydraException, OmegaConfBaseException) as err:
        if user_setting == "1":
            raise
        print(f"nn4n-train: error: {one_line_error(err)}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))
    finally:
        os.environ.pop(_FULL_ERROR)
        if user_setting is None:
            os.environ.pop("HYDRA_FULL_ERROR")
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_setting
