"""Schemas of a training run, and its two errors. Every composed YAML config is checked against the
schemas before anything runs.

The model schema is :class:`nn4n.structure.NetworkConfig` itself, so a network described in YAML and
one built in Python go through the same checks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .structure import NetworkConfig, check_seed

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")
ENGINE_CHOICES = ("auto", "reference", "fused", "triton")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


class TrainingError(RuntimeError):
    """Training stopped (e.g. diverged); the message is one line, the last good checkpoint is kept."""

    exit_code = 3


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {message}")


def _positive(value: float, key: str) -> None:
    _check(value > 0, key, f"must be > 0, got {value!r}")


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    _check(value in allowed, key, f"must be one of {', '.join(allowed)}, got {value!r}")


@dataclass
class TaskConfig:
    """A task by name (NeuroGym id, an nn4n task from ``tasks/``, or a user task in ``dirs``)."""

    name: str = "PerceptualDecisionMaking-v0"
    dt: float = 20.0
    timing: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    decision_period: str | None = "decision"
    decision_weight: float = 5.0
    dirs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _positive(self.dt, "task.dt")
        _check(self.decision_weight >= 0, "task.decision_weight", f"must be >= 0, got {self.decision_weight!r}")


@dataclass
class Regularizers:
    """Weights of the regularization terms (0 = off); each term is logged as its own loss."""

    rate_l1: float = 0.0
    rate_l2: float = 0.0
    rate_l1_area: dict[str, float] = field(default_factory=dict)
    rate_l2_area: dict[str, float] = field(default_factory=dict)
    rate_sd: float = 0.0
    rate_cv: float = 0.0
    rate_mean_abs_dev: float = 0.0
    rate_max_abs_dev: float = 0.0
    weight_l1: dict[str, float] = field(default_factory=dict)
    weight_fro: dict[str, float] = field(default_factory=dict)
    state_prediction: float = 0.0
    entropy: float = 0.0

    def __post_init__(self) -> None:
        for key, value in vars(self).items():
            for sub, weight in (value.items() if isinstance(value, dict) else [("", value)]):
                name = f"train.reg.{key}" + (f".{sub}" if sub else "")
                _check(weight >= 0, name, f"must be >= 0, got {weight!r}")
        for key in ("weight_l1", "weight_fro"):
            for matrix in getattr(self, key):
                _choice(matrix, ("w_in", "w_rec", "w_out"), f"train.reg.{key}.{matrix}")


@dataclass
class TrainConfig:
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "none"
    steps: int = 2000
    batch_size: int = 64
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_trials: int = 256
    checkpoint_every: int = 250
    device: str = "auto"
    engine: str = "auto"
    matmul_precision: str = "highest"
    threads: int = 1
    retain_freed_memory: bool = True
    data_workers: str = "auto"  # or a count; see nn4n.train.loader_workers
    n_networks: int = 1
    reg: Regularizers = field(default_factory=Regularizers)

    def __post_init__(self) -> None:
        _choice(self.optimizer, OPTIMIZERS, "train.optimizer")
        _choice(self.schedule, SCHEDULES, "train.schedule")
        _choice(self.engine, ENGINE_CHOICES, "train.engine")
        _choice(self.matmul_precision, MATMUL_PRECISIONS, "train.matmul_precision")
        _check(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device) is not None, "train.device",
               f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        _positive(self.lr, "train.lr")
        for key in ("steps", "batch_size", "eval_every", "eval_trials", "checkpoint_every", "threads", "n_networks"):
            _positive(getattr(self, key), f"train.{key}")
        _check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        _check(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip!r}")
        _check(self.data_workers == "auto" or self.data_workers.isdigit(), "train.data_workers",
               f"must be auto or a number >= 0, got {self.data_workers!r}")


@dataclass
class LoggingConfig:
    scalars_every: int = 50
    histograms_every: int = 500
    figures_every: int = 0
    figures: bool = True
    save_activity: bool = True
    progress: str = "auto"

    def __post_init__(self) -> None:
        for key in ("scalars_every", "histograms_every", "figures_every"):
            _check(getattr(self, key) >= 0, f"logging.{key}", f"must be >= 0 (0 = off), got {getattr(self, key)!r}")
        _choice(self.progress, ("auto", "bar", "lines"), "logging.progress")


@dataclass
class Config:
    model: NetworkConfig = MISSING
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: int = 0
    name: str = "run"

    def __post_init__(self) -> None:
        check_seed(self.seed, "seed")
        for key in ("rate_l1_area", "rate_l2_area"):
            for area in getattr(self.train.reg, key):
                _check(area in self.model.areas, f"train.reg.{key}.{area}",
                       f"unknown area {area!r}; areas: {', '.join(self.model.areas)}")


def _add_whole(area: str) -> str:
    return f"to add an area, merge it in whole: '++model.areas={{{area}:{{size:64}}}}'"


def one_line(err: OmegaConfBaseException) -> str:
    """OmegaConf's multi-line messages reduced to 'key: problem'."""
    message = str(err).splitlines()[0]
    key = getattr(err, "full_key", None)
    if isinstance(err.__cause__, ValueError) and not isinstance(err.__cause__, OmegaConfBaseException):
        return str(err.__cause__)  # raised by a schema's own check: already names its key
    match = re.match(r"Key '(.+)' not in '(\w+)'", message)
    if match:
        return f"{key or match.group(1)}: unknown key"
    match = re.match(r"Invalid type assigned: dict is not a subclass of (\w+)", message)
    if match:  # `+model.areas.V1.size=64`: OmegaConf cannot add an entry typed as a dataclass key by key
        return f"{key}: a new {match.group(1)} cannot be added key by key; {_add_whole(key)}"
    if re.match(r"Key '.+' is not in struct", message) and key and isinstance(err.parent_node, DictConfig):
        entries = ", ".join(map(str, err.parent_node.keys())) or "no entries"
        typed = is_dataclass(err.parent_node._metadata.element_type)  # model.areas, not task.timing
        hint = _add_whole(key.rpartition(".")[2]) if typed else "to add an entry, put + before the override"
        return f"{key}: unknown key; {key.rpartition('.')[0]} has {entries} ({hint})"
    return f"{key}: {message}" if key else message


def register_schema() -> None:
    """Make the schema Hydra's base config (``nn4n_schema`` in config.yaml's defaults): every key
    exists, so any of them can be overridden from the command line without ``+``."""
    ConfigStore.instance().store(name="nn4n_schema", node=Config)


def _reject_targets(node: Any, path: str = "") -> None:
    """nn4n never instantiates objects named in a config; a ``_target_`` key is an error, not a no-op."""
    if isinstance(node, (dict, DictConfig)):
        for key, value in node.items():
            if key in ("_target_", "_partial_", "_args_"):
                raise ConfigError(f"{path}{key}: unknown key (configs name values, never code to import)")
            _reject_targets(value, f"{path}{key}.")


def check_schema(cfg: DictConfig | dict) -> DictConfig:
    """Merge ``cfg`` onto the schema: unknown keys and wrong types fail with a one-line ConfigError."""
    _reject_targets(cfg)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(one_line(err)) from None
    _reject_added_fields(merged)
    return merged


def _reject_added_fields(node: DictConfig, path: str = "") -> None:
    """A ``+key=value`` override puts a key into a schema section that has no such field; OmegaConf keeps
    it, and the run would silently ignore it (a misspelt name, say)."""
    schema = OmegaConf.get_type(node)
    known = {f.name for f in fields(schema)} if is_dataclass(schema) else None
    for key, value in node.items_ex(resolve=False):
        if known is not None and key not in known:
            raise ConfigError(f"{path}{key}: unknown key")
        if isinstance(value, DictConfig):
            _reject_added_fields(value, f"{path}{key}.")


def to_config(cfg: DictConfig) -> Config:
    """Instantiate the dataclasses, running every value check; errors are prefixed with their section."""
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(one_line(err)) from None
    except ValueError as err:  # a schema's own check: model keys are relative to ``model``
        section = str(err).split(".")[0].split(":")[0]
        raise ConfigError(str(err) if section in ("task", "train", "logging") else f"model.{err}") from None
