"""Everything about a run directory: where each file goes, the Hydra record, the resume checks, ``metrics.json``.

A run directory holds ``.hydra/`` (the config as Hydra composed it), ``nn4n.log``, ``tensorboard/``,
``checkpoints/last.pt`` (everything needed to resume) and, per network, ``checkpoints/best.pt``,
``activity.npz`` and ``metrics.json``: in the run directory itself for one network, in ``networks/<k>/``
for each of K > 1 (the run's own ``metrics.json`` then summarizes them). ``metrics.json`` is written last:
its presence marks a finished run.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import safe_yaml
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


HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into a run's .hydra/
MAX_RECORD_CHARS = 1 << 20
MAX_OVERRIDES, MAX_OVERRIDE_CHARS = 1000, 1000


def hydra_record(run_dir: Path) -> dict[str, str]:
    """The run's ``.hydra/*.yaml`` files (its config as Hydra composed it), by name; checkpoints carry them."""
    return {name: (run_dir / ".hydra" / name).read_text() for name in HYDRA_FILES if (run_dir / ".hydra" / name).is_file()}


def check_hydra_record(record: Any, where: Path) -> dict[str, str]:
    """``record`` (a checkpoint's) if it is a Hydra record: Hydra's own file names, texts of a bounded size;
    a one-line ValueError otherwise (a tampered checkpoint cannot name a file to write)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: its hydra record is not a mapping of file names to texts")
    for name, text in record.items():
        if name not in HYDRA_FILES:
            raise ValueError(f"{where}: its hydra record names {str(name)[:80]!r}, not one of {', '.join(HYDRA_FILES)}")
        if not isinstance(text, str) or len(text) > MAX_RECORD_CHARS:
            raise ValueError(f"{where}: its hydra record's {name} is not a text of at most {MAX_RECORD_CHARS} characters")
    return record


def restore_hydra_record(run_dir: Path) -> None:
    """Put back the ``.hydra`` files of the run in ``run_dir``, as its last checkpoint carries them:
    Hydra writes every command's config there first, also that of a command which then fails. Only
    Hydra's own file names are written, and only into ``run_dir/.hydra``."""
    last = last_checkpoint(run_dir)
    if last.exists():
        from .checkpoint import load_checkpoint  # torch: only where there is a checkpoint to read

        try:
            record = check_hydra_record(load_checkpoint(last).get("hydra", {}), last)
        except ValueError:  # a checkpoint refused as unsafe, or a tampered record: that error is the one reported
            return
        for name, text in record.items():
            (run_dir / ".hydra" / name).write_text(text)


def run_overrides(run_dir: Path) -> tuple[list[str], list[str]]:
    """The command-line overrides a run was started with (``.hydra/overrides.yaml``) and the config folders
    it was given (``--config-dir``, from ``.hydra/hydra.yaml``), read as data and checked: a list of at most
    ``MAX_OVERRIDES`` strings of nn4n settings (no ``hydra.*``). One-line ValueErrors otherwise."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not an nn4n-train run directory (it has no .hydra/overrides.yaml)")
    overrides = safe_yaml.load(path) or []
    if not (isinstance(overrides, list) and len(overrides) <= MAX_OVERRIDES
            and all(isinstance(o, str) and len(o) <= MAX_OVERRIDE_CHARS for o in overrides)):
        raise ValueError(f"{path}: not a list of at most {MAX_OVERRIDES} overrides (key=value)")
    for override in overrides:
        if override.lstrip("+~").startswith("hydra"):
            raise ValueError(f"{path}: {override[:80]!r} is not an nn4n setting")
    config_dirs: list[str] = []
    if (run_dir / ".hydra" / "hydra.yaml").is_file():
        sources = safe_yaml.load(run_dir / ".hydra" / "hydra.yaml")
        try:
            sources = sources["hydra"]["runtime"]["config_sources"]
            config_dirs = [s["path"] for s in sources if s["provider"] == "command-line" and s["schema"] == "file"]
        except (KeyError, TypeError):
            raise ValueError(f"{run_dir / '.hydra' / 'hydra.yaml'}: not Hydra's record of a run") from None
    return overrides, [str(d) for d in config_dirs]


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
        try:
            record = safe_yaml.parse(check_hydra_record(state.get("hydra", {}), run_dir).get("overrides.yaml", "[]"), "")
            overrides = " ".join(map(str, record or [])) or "none"  # as typed: ${...} unresolved
        except ValueError:
            overrides = "unreadable"
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


LOCK_FILE = ".nn4n.lock"
HEARTBEAT_S = 30  # the holder refreshes its lock this often
STALE_AFTER_S = 300  # a lock whose heartbeat is older than this is taken over (a holder killed on another host)


class RunLocked(ConfigError):
    """The run directory has a live writer; the message names it (PID, host, since when)."""


class RunLock:
    """One writer per run directory, for as long as the ``with`` block lasts: ``.nn4n.lock`` holds the writer's
    host, PID and what it does, and its modification time is the writer's heartbeat (refreshed every
    ``HEARTBEAT_S`` seconds by a thread). A lock left by a killed writer does not block: on the same host it is
    stale once its PID is gone, from any host once its heartbeat is older than ``STALE_AFTER_S``. Works on a
    shared (cluster) file system: taking a lock is an exclusive create, taking over a stale one a rename."""

    def __init__(self, run_dir: Path, purpose: str = "training") -> None:
        self.path, self.purpose = Path(run_dir) / LOCK_FILE, purpose
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.path)
                if holder is not None and not stale(holder):
                    raise RunLocked(lock_message(self.path.parent, holder)) from None
                try:  # take over a stale lock: only one of several takers wins the rename
                    os.replace(self.path, self.path.with_name(f"{LOCK_FILE}.stale.{os.getpid()}"))
                    self.path.with_name(f"{LOCK_FILE}.stale.{os.getpid()}").unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "purpose": self.purpose,
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
            return self
        raise RunLocked(f"{self.path.parent}: could not take its lock ({self.path}); try again")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        holder = read_lock(self.path)
        if holder is not None and (holder.get("host"), holder.get("pid")) == (socket.gethostname(), os.getpid()):
            self.path.unlink(missing_ok=True)


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's holder and its heartbeat age (``age_s``); None if there is no lock. An unreadable one (half
    written, say) is taken as held by nobody known, its age still counting."""
    try:
        age = time.time() - path.stat().st_mtime
        text = path.read_text()[:4096]
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        holder = {}
    return (holder if isinstance(holder, dict) else {}) | {"age_s": age}


def stale(holder: dict[str, Any]) -> bool:
    """A lock is stale once its heartbeat is older than ``STALE_AFTER_S``, or at once on this host if its
    writer's PID is gone."""
    if holder["age_s"] > STALE_AFTER_S:
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            return False
    return False


def lock_message(run_dir: Path, holder: dict[str, Any]) -> str:
    who = f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}"
    return (f"{run_dir} is in use: {holder.get('purpose', 'a writer')} by {who} since {holder.get('since', '?')} "
            f"(heartbeat {holder['age_s']:.0f} s ago); one writer at a time. A lock from another host is taken over "
            f"once its heartbeat is {STALE_AFTER_S} s old")
