"""Schemas of a training run (the Hydra config's sections). Every composed YAML config is checked against
the schemas before anything runs.

The model schema is :class:`nn4n.structure.NetworkConfig` itself, so a network described in YAML and
one built in Python go through the same checks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .recurrence import ENGINES
from .regularizers import Regularizers
from .structure import NetworkConfig
from .validate import check, choice, integer, is_number, non_negative, positive, seed

if TYPE_CHECKING:
    from .data import TrialSampler
    from .tasks import TaskSpec

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision


@dataclass
class TaskConfig:
    """A task by name (NeuroGym id, an nn4n task from ``tasks/``, or a user task in ``dirs``)."""

    name: str = "PerceptualDecisionMaking-v0"
    dt: float = 20.0
    timing: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    decision_period: Any = "decision"  # the response period, a list of them (each scored), or null
    decision_weight: float = 5.0
    grace: float = 100.0  # ms at the start and after the end of each response window (at most half of it) left out of the loss: time to react
    penalize_guess: bool = True  # in the grace at a window's start, a wrong answer costs (waiting or the answer do not)
    trials_per_row: int = 1  # consecutive trials per batch row, the state carried across (block rules, history)
    dirs: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)  # a task set's task ids (name: the set's label)
    weights: dict[str, float] = field(default_factory=dict)  # sampling weights of a set's tasks (1 unless given; 0: never trained, still scored)
    mixing: str = "trial"  # a task set's trials: each its own task (trial), or one task per batch (batch)
    output: str = "classes"  # classes: a logit per action; ring: sigmoid units on a ring of choices (Yang et al. 2019)
    hold_fixation: bool = False  # the fixation input on until the first response period (the go cue), whatever the task does

    def __post_init__(self) -> None:
        positive(self.dt, "task.dt")
        non_negative(self.decision_weight, "task.decision_weight")
        integer(self.trials_per_row, "task.trials_per_row")
        non_negative(self.grace, "task.grace")
        choice(self.mixing, ("trial", "batch"), "task.mixing")
        choice(self.output, ("classes", "ring"), "task.output")
        check(len(set(self.tasks)) == len(self.tasks), "task.tasks", f"names a task twice: {self.tasks}")
        for task, weight in self.weights.items():  # a weight of a task not in the set is kept for when it is
            non_negative(weight, f"task.weights.{task}")
        check(not self.tasks or any(self.weights.get(t, 1.0) for t in self.tasks), "task.weights",
              "every weight is 0: give a task a weight > 0")
        check(not self.tasks or self.trials_per_row == 1, "task.trials_per_row",
              f"a task set draws one trial per row, got {self.trials_per_row}")

    def sampler(self, batch_size: int, seed: int, balanced: bool = False) -> TrialSampler:
        """Batches of the task (or task set) that depend only on (seed, batch index); ``balanced``: the rows go to
        a task set's tasks in turn."""
        from .data import TrialSampler

        return TrialSampler(self.name, self.dt, batch_size, seed, self.timing, self.params, self.dirs,
                            self.decision_weight, self.decision_period, self.trials_per_row, self.grace, self.penalize_guess,
                            {t: self.weights.get(t, 1.0) for t in self.tasks}, self.mixing, balanced, self.output,
                            self.hold_fixation)

    def spec(self) -> TaskSpec:
        """The task's sizes, channel names and kind; makes the task (imports NeuroGym). A bad name, period or
        parameter raises a one-line ValueError naming its key."""
        import gymnasium

        spec = self.sampler(1, 0).spec  # makes the tasks: registers those of task.dirs
        unknown = [t for t in self.weights if t not in gymnasium.registry]
        if unknown:
            raise ValueError(f"task.weights.{unknown[0]}: unknown task")
        return spec


@dataclass
class TrainConfig:
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "none"
    warmup: int = 0  # steps of linear learning-rate warmup
    recurrent_lr_scale: float = 1.0  # the recurrent weights learn at lr * scale / N under Adam; see nn4n.train.recurrent_lr
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
    objective: str = "auto"  # the held-out metric for best.pt and sweeps; see nn4n.metrics.objective
    reg: Regularizers = field(default_factory=Regularizers)

    def __post_init__(self) -> None:
        choice(self.optimizer, OPTIMIZERS, "train.optimizer")
        choice(self.schedule, SCHEDULES, "train.schedule")
        choice(self.engine, ("auto", *ENGINES), "train.engine")
        choice(self.matmul_precision, MATMUL_PRECISIONS, "train.matmul_precision")
        check(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device) is not None, "train.device",
              f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        positive(self.lr, "train.lr")
        check(is_number(self.momentum) and 0 <= self.momentum < 1, "train.momentum",
              f"must be in [0, 1), got {self.momentum!r}")
        for key in ("steps", "batch_size", "eval_every", "eval_trials", "checkpoint_every", "threads", "n_networks"):
            integer(getattr(self, key), f"train.{key}")
        non_negative(self.weight_decay, "train.weight_decay")
        check(isinstance(self.warmup, int) and self.warmup >= 0, "train.warmup", f"must be an integer >= 0, got {self.warmup!r}")
        non_negative(self.grad_clip, "train.grad_clip", "0 = off")
        positive(self.recurrent_lr_scale, "train.recurrent_lr_scale")
        check(self.data_workers == "auto" or self.data_workers.isdigit(), "train.data_workers",
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
            non_negative(getattr(self, key), f"logging.{key}", "0 = off")
        choice(self.progress, ("auto", "bar", "lines"), "logging.progress")


@dataclass
class Config:
    model: NetworkConfig = MISSING
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: int = 0
    name: str = "run"

    def __post_init__(self) -> None:
        seed(self.seed, "seed")
        for key in ("rate_l1_area", "rate_l2_area"):
            for area in getattr(self.train.reg, key):
                check(area in self.model.areas, f"train.reg.{key}.{area}",
                       f"unknown area {area!r}; areas: {', '.join(self.model.areas)}")


@dataclass
class FixedPointsSettings:
    """``nn4n-analyze analysis=fixed_points``: see :mod:`nn4n.analysis.fixed_points`."""

    name: str = "fixed_points"
    inputs: list[Any] = field(default_factory=lambda: ["fixation"])  # zero, a period, period[key=value], a vector
    n_starts: int = 1024
    start_noise: float = 0.0
    n_trials: int = 256
    q_tol: float = 1e-20
    slow_q: float = 1e-6
    merge_tol: float = 1e-6
    kink_tol: float = 1e-6
    max_iter: int = 200
    n_modes: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check(len(self.inputs) > 0, "analysis.inputs", "give at least one input (zero, a period, period[key=value] or a vector)")
        for key in ("n_starts", "n_trials", "max_iter"):
            integer(getattr(self, key), f"analysis.{key}")
        for key in ("q_tol", "slow_q", "merge_tol", "kink_tol"):
            positive(getattr(self, key), f"analysis.{key}")
        non_negative(self.start_noise, "analysis.start_noise")
        check(self.n_modes >= 0, "analysis.n_modes", f"must be >= 0, got {self.n_modes}")
        seed(self.seed, "analysis.seed")


@dataclass
class PerturbationsSettings:
    """``nn4n-analyze analysis=perturbations``: see :mod:`nn4n.analysis.perturbations` and :mod:`nn4n.perturb`."""

    name: str = "perturbations"
    perturbations: dict[str, Any] = field(default_factory=dict)  # name -> {kind, area, ...}, or a list applied together
    survey: bool = True  # also silence every area (whole trial, each period) and cut every projection between areas
    n_trials: int = 256
    seed: int | None = None  # held-out trials (None: the run's own)
    noise: bool = False  # the network's noise, the same draw in every condition
    strength: str = "coh"  # the condition whose signed value is the psychometric curve's axis
    save_activity: bool = False  # every condition's activity record in analysis/perturbations/activity/

    def __post_init__(self) -> None:
        from .perturb import combination

        integer(self.n_trials, "analysis.n_trials")
        if self.seed is not None:
            seed(self.seed, "analysis.seed")
        for name, value in self.perturbations.items():
            try:
                combination(value)
            except ValueError as err:
                raise ValueError(f"analysis.perturbations.{name}.{err}") from None
        check(self.survey or bool(self.perturbations), "analysis.perturbations",
              "none given (and analysis.survey=false): add one, e.g. "
              "\"+analysis.perturbations.cut={kind: lesion, projection: 'PFC<-PPC'}\"")


@dataclass
class TaskVarianceSettings:
    """``nn4n-analyze analysis=task_variance``: see :mod:`nn4n.analysis.task_variance`."""

    name: str = "task_variance"
    n_trials: int = 128  # held-out trials of each task
    min_variance: float = 1e-3  # units whose variance summed over the tasks is at most this are left out
    max_clusters: int = 29
    seed: int = 0  # k-means initialisations
    lesion: bool = True  # silence each cluster; every task's accuracy against the control

    def __post_init__(self) -> None:
        integer(self.n_trials, "analysis.n_trials")
        non_negative(self.min_variance, "analysis.min_variance")
        check(isinstance(self.max_clusters, int) and self.max_clusters >= 2, "analysis.max_clusters",
              f"must be an integer >= 2, got {self.max_clusters!r}")
        seed(self.seed, "analysis.seed")


ANALYSES: dict[str, type] = {"fixed_points": FixedPointsSettings, "perturbations": PerturbationsSettings,
                             "task_variance": TaskVarianceSettings}  # analysis=<name>: its settings' schema


@dataclass
class AnalyzeConfig:
    """``nn4n-analyze``: which run (or sweep of runs), which analysis, where the results go."""

    run: str = MISSING
    analysis: Any = MISSING  # one of ANALYSES, chosen with analysis=<name>
    out: str | None = None  # results under this folder instead of the run's own
    network: int | None = None  # one network of a K-network run (None: every one)
    checkpoint: str = "best"
    device: str = "auto"
    threads: int = 1  # torch's CPU threads, as train.threads: a second one slows these small matrices on a shared machine
    trust_task_code: bool = False  # import the run's task.dirs (Python files from the run's config)

    def __post_init__(self) -> None:
        choice(self.checkpoint, ("best", "last"), "checkpoint")
        check(self.threads >= 1, "threads", f"must be >= 1, got {self.threads!r}")
        check(self.network is None or self.network >= 0, "network", f"must be >= 0, got {self.network!r}")


def _add_whole(area: str) -> str:
    return f"to add an area, merge it in whole: '++model.areas={{{area}:{{size:64}}}}'"


def one_line(err: OmegaConfBaseException) -> str:
    """OmegaConf's multi-line messages reduced to 'key: problem'."""
    message = str(err).splitlines()[0]
    key = getattr(err, "full_key", None)
    if isinstance(err.__cause__, ValueError) and not isinstance(err.__cause__, OmegaConfBaseException):
        return str(err.__cause__)  # raised by a schema's own check: already names its key
    if key and key.startswith("task.weights."):  # a task id holds dots, which a key path cannot
        return ("task.weights: a task id holds dots, so a weight cannot be set key by key; give them as a set: "
                "'++task.weights={yang19.go-v0: 2}' (adds to or changes the preset's weights)")
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


def _task(node: DictConfig) -> TaskConfig:
    return TaskConfig(**OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]


def _direction(setting: str, task: DictConfig) -> str:
    """``maximize`` or ``minimize``: how a sweeper (Optuna) optimises what the jobs return (``train.objective``)."""
    from .metrics import objective

    return objective(_task(task).spec(), setting).direction


def register_schema() -> None:
    """Make the schema Hydra's base config (``nn4n_schema`` in config.yaml's defaults): every key
    exists, so any of them can be overridden from the command line without ``+``. Also the resolvers
    configs/ use: ``${nn4n.task:n_inputs,${task}}`` (the model's sizes are the task's) and
    ``${nn4n.direction:${train.objective},${task}}`` (the Optuna preset's direction)."""
    store = ConfigStore.instance()
    store.store(name="nn4n_schema", node=Config)
    store.store(name="nn4n_analyze_schema", node=AnalyzeConfig)
    for name, schema in ANALYSES.items():
        store.store(group="analysis", name=f"{name}_schema", node=schema)
    OmegaConf.register_new_resolver("nn4n.task", lambda field, task: getattr(_task(task).spec(), field), replace=True)
    OmegaConf.register_new_resolver("nn4n.direction", _direction, replace=True)


def _reject_targets(node: Any, path: str = "") -> None:
    """nn4n never instantiates objects named in a config; a ``_target_`` key is an error, not a no-op."""
    if isinstance(node, (dict, DictConfig)):
        for key, value in (node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()):
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


def check_config(raw: DictConfig | dict) -> DictConfig:
    """Every check that needs no task, before torch or NeuroGym load (so a bad value fails in about a
    second): the schema, and every value of every section, with the task's sizes not yet known.
    Returns the merged config; :func:`nn4n.experiment.resolve` completes it with the task's sizes."""
    cfg = check_schema(raw)
    to_config(cfg.task)  # first: the model's dt is the task's
    probe = cfg.copy()
    probe.model.input_size = probe.model.output_size = 1  # the task's, set by resolve
    to_config(probe)
    return cfg


def to_config(cfg: DictConfig) -> Any:
    """Instantiate the dataclasses of ``cfg`` (the whole config, or a section of it such as ``cfg.task``),
    running every value check; errors are one-line ConfigErrors prefixed with their section."""
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise ConfigError(one_line(err)) from None
    except ValueError as err:  # a schema's own check: a model's keys are relative to ``model``, the others' whole
        section = str(err).split(".")[0].split(":")[0]
        whole = {"task", "train", "logging", *(f.name for f in fields(AnalyzeConfig))}  # nn4n-analyze's keys too
        raise ConfigError(str(err) if section in whole else f"model.{err}") from None
