"""From a composed config to what a run works with: the checked :class:`Config` with the task's sizes filled
in, the task's :class:`TaskSpec`, the run's objective, and the samplers of its training and held-out trials.
Training and analysis both start here."""
from __future__ import annotations

from omegaconf import DictConfig

from .config import Config, TaskConfig, check_config, to_config
from .data import TrialSampler
from .errors import ConfigError
from .metrics import Objective, objective
from .tasks import TaskSpec

EVAL_SEED_OFFSET = 2**31  # held-out trials come from a seed stream training never uses


def held_out(cfg: Config, n_trials: int | None = None, seed: int | None = None) -> TrialSampler:
    """The run's held-out trials (``train.eval_trials`` of them unless ``n_trials``), from their own seed stream;
    a task set's go to its tasks in turn."""
    return cfg.task.sampler(n_trials or cfg.train.eval_trials, cfg.seed + EVAL_SEED_OFFSET if seed is None else seed,
                            balanced=True)


def task_spec(t: TaskConfig) -> TaskSpec:
    """The spec of task ``t``; a task that cannot be made, or fails on its first trial, is a one-line ConfigError."""
    try:
        return t.spec()
    except ValueError as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    except Exception as err:  # the task's own code (a user's task, say) failed on its first trial
        raise ConfigError(f"task.name: {t.name} failed on its first trial: {type(err).__name__}: {err}") from err


def run_objective(cfg: Config, spec: TaskSpec) -> Objective:
    """The objective ``train.objective`` names for this task."""
    try:
        return objective(spec, cfg.train.objective)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def resolve(raw: DictConfig | dict) -> Config:
    """Validate a composed config and fill in what the task decides (input/output sizes, dt)."""
    cfg = check_config(raw)
    spec = task_spec(to_config(cfg.task))
    cfg.model.input_size, cfg.model.output_size, cfg.model.dt = spec.n_inputs, spec.n_outputs, spec.dt
    config = to_config(cfg)
    run_objective(config, spec)
    return config
