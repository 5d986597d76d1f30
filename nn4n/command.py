"""What the nn4n commands (``nn4n-train``, ``nn4n-analyze``) share: the command line put in the order Hydra's
parser wants, config folders read as data before Hydra reads them, and every error as one line on stderr
with a non-zero exit (2: bad input). ``HYDRA_FULL_ERROR=1`` shows the full traceback instead."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf.errors import OmegaConfBaseException

from .config import one_line
from .errors import ConfigError, TrainingError

log = logging.getLogger("nn4n")
FULL_ERROR = "NN4N_FULL_ERROR"  # the user's own HYDRA_FULL_ERROR setting, while a command runs


def check_writable(path: Path, key: str = "hydra.run.dir") -> None:
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


def flags_first(argv: list[str]) -> list[str]:
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


def config_dirs(argv: list[str]) -> list[Path]:
    return [Path(argv[i + 1]) for i, arg in enumerate(argv[:-1]) if arg in ("--config-dir", "-cd")] + [
        Path(arg.partition("=")[2]) for arg in argv if arg.startswith(("--config-dir=", "-cd="))]


def check_config_dir(folder: Path) -> None:
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


def log_to_file(err: Exception) -> None:
    """The error into the run's ``nn4n.log`` only: the terminal gets it once, from :func:`_fail`."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (err,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def fail(prog: str, err: ConfigError | TrainingError) -> NoReturn:
    """A single run exits here with one line; in a sweep (``-m``) the error fails only this job."""
    if HydraConfig.get().mode == RunMode.MULTIRUN or os.environ.get(FULL_ERROR) == "1":
        raise err
    print(f"{prog}: error: {err}", file=sys.stderr)
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


def run(prog: str, body: Callable[[], None], interrupted: str) -> None:
    """Run a command's ``body``: every error one line on stderr and a non-zero exit; Ctrl-C one line and 130
    (``interrupted`` says what was left undone); a closed pipe (``--help | head``) quietly."""
    user_setting = os.environ.get("HYDRA_FULL_ERROR")
    os.environ[FULL_ERROR] = "1" if user_setting == "1" else ""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's errors reach this function instead of its report
    try:
        body()
    except (ConfigError, TrainingError, HydraException, OmegaConfBaseException) as err:
        if user_setting == "1":
            raise
        print(f"{prog}: error: {one_line_error(err)}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        if user_setting == "1":
            raise
        print(f"{prog}: interrupted (Ctrl-C); {interrupted}", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (--help | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    finally:
        os.environ.pop(FULL_ERROR)
        if user_setting is None:
            os.environ.pop("HYDRA_FULL_ERROR")
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_setting
