"""Tasks by name: NeuroGym tasks, nn4n tasks (package `nn4n_tasks`) and user task folders.

Every `neurogym.core.TrialEnv` subclass defined in a module of `nn4n_tasks`, or in a `*.py`
file of a user task folder (`task_dirs` or the `NN4N_TASK_PATH` environment variable), is
registered with gymnasium as "<ClassName>-v0", so it is made like any NeuroGym task.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import neurogym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from neurogym.core import TrialEnv
from neurogym.envs.registration import all_envs
from neurogym.wrappers.block import ScheduleEnvs

import nn4n_tasks

TASK_PATH_ENV = "NN4N_TASK_PATH"
_user_files: dict[Path, list[str]] = {}  # imported user task file -> ids it registered


def _register_module(module: ModuleType, source: str) -> list[str]:
    """Register the TrialEnv subclasses defined in `module` as "<ClassName>-v0"."""
    ids = []
    for cls_name, cls in inspect.getmembers(module, inspect.isclass):
        if not issubclass(cls, TrialEnv) or cls.__module__ != module.__name__:
            continue
        env_id, entry_point = f"{cls_name}-v0", f"{module.__name__}:{cls_name}"
        spec = gym.registry.get(env_id)
        if spec is None:
            gym.register(env_id, entry_point=entry_point)
        elif spec.entry_point != entry_point:
            raise ValueError(f"{source}: {env_id} is already registered by {spec.entry_point}")
        ids.append(env_id)
    return ids


@functools.cache
def _nn4n_ids() -> tuple[str, ...]:
    """Import every module of `nn4n_tasks` and register its tasks (once per process)."""
    ids: list[str] = []
    for info in pkgutil.iter_modules(nn4n_tasks.__path__, "nn4n_tasks."):
        ids += _register_module(importlib.import_module(info.name), "nn4n_tasks")
    return tuple(ids)


@functools.cache
def _neurogym_ids() -> tuple[str, ...]:
    return tuple(all_envs(tag="supervised"))


def _import_file(path: Path) -> ModuleType:
    """Import a user task file under a module name unique to its path."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"nn4n_user_task_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ValueError(f"task.dirs: cannot import '{path}': {type(e).__name__}: {_one_line(e)}") from e
    return module


def _user_ids(task_dirs: Sequence[str | Path]) -> list[str]:
    """Import and register the task files of `task_dirs` and of $NN4N_TASK_PATH."""
    dirs = [(d, "task.dirs") for d in task_dirs]
    dirs += [(d, TASK_PATH_ENV) for d in filter(None, os.environ.get(TASK_PATH_ENV, "").split(os.pathsep))]
    ids: list[str] = []
    for d, key in dirs:
        folder = Path(d).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"{key}: '{d}' is not a directory")
        for path in sorted(folder.glob("*.py")):
            if path not in _user_files:
                _user_files[path] = _register_module(_import_file(path), f"task.dirs: '{path}'")
            ids += _user_files[path]
    return ids


def available_tasks(task_dirs: Sequence[str | Path] = ()) -> list[str]:
    """Supervised NeuroGym task ids, nn4n task ids and the user tasks of `task_dirs`, sorted."""
    return sorted({*_neurogym_ids(), *_nn4n_ids(), *_user_ids(task_dirs)})


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _plain(value: Any) -> Any:
    """Config containers (e.g. OmegaConf lists) to plain lists, recursively."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _check_params(name: str, params: Mapping[str, Any]) -> None:
    """Raise unless task `name` is a TrialEnv whose constructor accepts the keywords `params`."""
    for key in ("dt", "timing"):
        if key in params:
            raise ValueError(f"task.params: '{key}' is set by task.{key}, not task.params")
    entry_point = gym.registry[name].entry_point
    creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    if isinstance(creator, type):
        if not issubclass(creator, TrialEnv):
            raise ValueError(f"task.name: {name} is not a neurogym TrialEnv (it is {creator.__name__})")
        creator = creator.__init__  # the class signature is hidden by TrialEnv's metaclass
    parameters = inspect.signature(creator).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in parameters if p not in ("self", "dt", "timing")]
    for key in params:
        if key not in accepted:
            raise ValueError(f"task.params: unknown parameter '{key}' for {name}; accepted: {', '.join(accepted)}")


TIMING_DISTRIBUTIONS = ("uniform", "choice", "truncated_exponential", "constant", "until")  # NeuroGym's


def _check_timing(period: str, value: Any) -> None:
    """Raise unless ``value`` is a period duration NeuroGym samples: ms, ms to choose from, or [distribution, args]."""
    def duration(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0

    def durations(v: Any) -> bool:  # a non-empty list of durations
        return isinstance(v, list) and len(v) > 0 and all(map(duration, v))

    if isinstance(value, list) and len(value) == 2 and value[0] in TIMING_DISTRIBUTIONS:
        ok = duration(value[1]) if value[0] in ("constant", "until") else durations(value[1])
    else:
        ok = duration(value) or durations(value)
    if not ok:
        raise ValueError(
            f"task.timing.{period}: must be a duration in ms (>= 0), a list of durations to choose from, or "
            f"[distribution, args] with distribution one of {', '.join(TIMING_DISTRIBUTIONS)}; got {value!r}"
        )


def _build(name: str, kwargs: dict[str, Any]) -> gym.Env:
    try:
        with warnings.catch_warnings():  # gymnasium complains that NeuroGym's metadata lacks render_modes
            warnings.simplefilter("ignore", UserWarning)
            return neurogym.make(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"task.params: cannot make {name}: {_one_line(e)}") from e


@dataclass(frozen=True)
class Variant:
    """One trial generator of a task: the task's own TrialEnv, or one of those a NeuroGym collection schedules at
    random, trial by trial (yang19's go, anti and match families: one per stimulus modality)."""

    env: TrialEnv
    input_names: dict[str, list[int]]  # observation channels by name; a modality's stimulus is stimulus_mod<k>


def _variants(name: str, env: gym.Env) -> list[Variant]:
    """The TrialEnvs behind ``env``. NeuroGym's modality wrapper puts modality k's stimulus in the k-th of n rings
    of the observation, names it ``stimulus`` and leaves the other rings unnamed: here the rings are
    ``stimulus_mod1`` ... ``stimulus_mod<n>``, as in yang19's DM family."""
    schedule = env
    while isinstance(schedule, gym.Wrapper) and not isinstance(schedule, ScheduleEnvs):
        schedule = schedule.env
    inner = list(schedule.envs) if isinstance(schedule, ScheduleEnvs) else [env]
    variants = []
    for wrapped in inner:
        trial_env = wrapped.unwrapped
        if not isinstance(trial_env, TrialEnv):
            raise ValueError(f"task.name: {name} is not a neurogym TrialEnv (it is {type(trial_env).__name__})")
        names = channel_names(trial_env.observation_space)
        modality = vars(wrapped).get("modality")
        if modality is not None and "stimulus" in names:  # rings of n modalities, this variant's stimulus in one
            ring = np.array(names.pop("stimulus"))
            first = ring - len(ring) * modality
            n_modalities = (int(np.prod(trial_env.observation_space.shape)) - first[0]) // len(ring)
            names |= {f"stimulus_mod{k + 1}": (first + len(ring) * k).tolist() for k in range(n_modalities)}
        variants.append(Variant(trial_env, names))
    return variants


def make_variants(
    name: str,
    dt: float,
    timing: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    task_dirs: Sequence[str | Path] = (),
) -> list[Variant]:
    """Make task `name` with time step `dt` (ms): its TrialEnv, or the TrialEnvs a NeuroGym collection
    schedules (each trial of the task is one of them, drawn uniformly).

    `timing` overrides entries of the task's timing dict, `params` are extra constructor
    keyword arguments, `task_dirs` are folders of user task files (besides $NN4N_TASK_PATH).
    Raises ValueError with a one-line message on a bad name, folder, period or parameter.
    """
    known = available_tasks(task_dirs)
    if name not in gym.registry:
        raise ValueError(f"task.name: unknown task '{name}'; known: {', '.join(known)}")
    params = dict(params or {})
    _check_params(name, params)
    variants = _variants(name, _build(name, {**params, "dt": dt}))
    if timing:
        timing = {k: _plain(v) for k, v in timing.items()}
        for period, value in timing.items():
            if period not in variants[0].env.timing:
                raise ValueError(
                    f"task.timing: unknown period '{period}' for {name}; periods: {', '.join(variants[0].env.timing)}"
                )
            _check_timing(period, value)
        variants = _variants(name, _build(name, {**params, "dt": dt, "timing": timing}))
    return variants


class TaskKind(str, Enum):
    """What a task's targets are: a class per step (a Discrete action space), or values (a Box); the classes of a
    ring of choices may be read out as a ring (``task.output: ring``, :mod:`nn4n.layout`)."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    RING = "ring"  # classes on a ring, as sigmoid units trained towards a bump and decoded by population vector


@dataclass(frozen=True)
class TaskSpec:
    """Sizes and names of a task's inputs and outputs, and how its trials are scored."""

    name: str
    n_inputs: int
    n_outputs: int
    kind: TaskKind
    input_names: dict[str, list[int]]
    output_names: dict[str, list[int]]
    decision_periods: tuple[str, ...]  # the response periods, each scored (classification); () for none
    dt: float
    fixation: int | None = None  # the action that holds fixation (classification tasks that have one)
    prod_margin: float | None = None  # timing tasks: a response counts within prod_margin * interval + 25 ms
    tasks: tuple[str, ...] = ()  # a task set's task ids, in the order of their rule inputs (() for one task)

    @property
    def input_labels(self) -> list[str]:
        """One label per input channel: ``fixation``, ``stimulus 0``, ``stimulus 1``, ... (``in k`` where unnamed)."""
        return _labels(self.input_names, self.n_inputs, "in")

    @property
    def output_labels(self) -> list[str]:
        """One label per output channel (a class, for classification), as :attr:`input_labels`."""
        return _labels(self.output_names, self.n_outputs, "out" if self.kind is TaskKind.REGRESSION else "class")


def _labels(names: dict[str, list[int]], n: int, unnamed: str) -> list[str]:
    labels = [f"{unnamed} {k}" for k in range(n)]
    for name, channels in names.items():
        for j, k in enumerate(channels):
            if 0 <= k < n:
                labels[k] = name if len(channels) == 1 else f"{name} {j}"
    return labels


def channel_names(space: gym.Space) -> dict[str, list[int]]:
    """A space's channels (or actions) by NeuroGym's names: name -> indices."""
    names = getattr(space, "name", None) or {}
    return {k: [int(v)] if np.isscalar(v) else [int(i) for i in v] for k, v in names.items()}


def decision_periods(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``task.decision_period`` as a tuple: one period, a list of them, or None (none). An entry ``a+b`` is
    one response window from the start of period ``a`` to the end of period ``b`` (OneTwoThreeGo's
    ``interval3+response``: a timed response may come in either)."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def task_spec(env: TrialEnv, decision_period: str | Sequence[str] | None = "decision") -> TaskSpec:
    """TaskSpec of `env`. A classification task must have its response period(s) (each response is scored
    there; None: no accuracy, only the loss); a regression task without one gets none. A task whose targets
    nn4n cannot supervise (no ground truth; targets that are not classes of its action space) raises a
    one-line ValueError saying why.

    Draws one trial from `env` if none was drawn yet, to learn its periods.
    """
    if not env.start_ind:
        env.new_trial()
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    name = env.spec.id if env.spec else type(env).__name__
    if not getattr(env, "_has_gt", True):
        raise ValueError(f"task.name: {name} has no ground truth (its trials only give rewards): nn4n trains "
                         "supervised tasks")
    if discrete and not np.isin(np.asarray(env.gt), np.arange(env.action_space.n)).all():
        raise ValueError(f"task.name: {name}'s ground truth ({np.asarray(env.gt).ravel()[-1].item()}, say) is not one of "
                         f"its {env.action_space.n} actions: a continuous target under a discrete action space, "
                         "which nn4n cannot supervise")
    periods = list(dict.fromkeys([*env.timing, *env.start_ind]))
    wanted = decision_periods(decision_period)
    if not all(isinstance(p, str) for p in wanted):
        raise ValueError(f"task.decision_period: must be a period name, a list of them or null, got {decision_period!r}")
    missing = [part for p in wanted for part in p.split("+") if part not in periods]
    if discrete and missing:
        raise ValueError(f"task.decision_period: {missing[0]!r} is not a period of {name} (periods: "
                         f"{', '.join(periods)}; null for none: no accuracy, only the loss)")
    output_names = channel_names(env.action_space)
    if output_names:
        fixation = output_names.get("fixation", [None])[0]
    else:  # NeuroGym's convention, action 0, where the trial has periods before its response to fixate through
        first = min((env.start_ind[p.split("+")[0]] for p in wanted if p.split("+")[0] in env.start_ind), default=0)
        fixation = 0 if first > 0 else None  # none (ToneDetection): a response is read at its period's end
    return TaskSpec(
        name=name,
        n_inputs=int(np.prod(env.observation_space.shape)),
        n_outputs=int(env.action_space.n) if discrete else int(np.prod(env.action_space.shape)),
        kind=TaskKind.CLASSIFICATION if discrete else TaskKind.REGRESSION,
        input_names=channel_names(env.observation_space),
        output_names=output_names,
        decision_periods=tuple(p for p in wanted if all(part in periods for part in p.split("+"))),
        dt=float(env.dt),
        fixation=fixation if discrete else None,
        prod_margin=getattr(env, "prod_margin", None) if discrete else None,
    )


_nn4n_ids()
