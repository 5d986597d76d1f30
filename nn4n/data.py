"""Trial-aligned batches: one trial per row (or a few consecutive ones), starting at step 0 from rest,
zero-padded to the longest row."""

from __future__ import annotations

import copy
import dataclasses
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import warnings
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from neurogym.core import TrialEnv
from torch.utils.data import DataLoader, Dataset

from .layout import Layout, layout_spec, own_layout, shared_layout
from .tasks import TaskKind, TaskSpec, Variant, make_variants, task_spec

_TENSORS = ("inputs", "targets", "mask", "window", "react", "lengths")


@dataclass
class TrialBatch:
    """A batch of rows, each one trial or ``trials_per_row`` consecutive ones; steps past a row's length are padding.

    A row's scored responses are its *windows*: response period ``p`` (of ``P`` named in
    ``task.decision_period``) of its ``j``-th trial is window ``j * P + p + 1``.
    """

    inputs: torch.Tensor  # (B, T, n_in) float32, zero-padded
    targets: torch.Tensor  # (B, T) int64 (classification) or (B, T, n_out) float32 (regression); padding 0
    mask: torch.Tensor  # (B, T) float32 loss weight: 0 on padding and grace steps (1 on react steps), decision_weight in the response periods, else 1
    window: torch.Tensor  # (B, T) int16: the response window a step belongs to (1, 2, ...), 0 outside them
    react: torch.Tensor  # (B, T) bool: the grace at a window's start where waiting or the answer are right, a guess wrong
    lengths: torch.Tensor  # (B,) int64 row lengths in steps
    conditions: dict[str, np.ndarray]  # numeric trial info from new_trial(), each (B,) (or (B, trials_per_row))
    epochs: dict[str, np.ndarray]  # period -> (B, 2) int64 [start, end) steps, [0, 0) where absent; (B, trials_per_row, 2)

    @property
    def valid(self) -> torch.Tensor:
        """(B, T) bool: the steps inside each row (not padding)."""
        return torch.arange(self.inputs.shape[1], device=self.lengths.device) < self.lengths[:, None]

    @property
    def n_windows(self) -> int:
        """Response windows per row: trials per row x response periods."""
        return int(self.window.max()) if self.window.numel() else 0

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle the tensors as numpy arrays, in band. Loader workers send batches this way: sending them as
        torch tensors (one shared-memory file per tensor, fetched from the worker's fd-sharing thread) made a
        worker twice as slow per batch."""
        return _batch_from_arrays, ({f: getattr(self, f).numpy() for f in _TENSORS}, self.conditions, self.epochs)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrialBatch:
        """Copy of the batch with its tensors on `device`."""
        moved = {f: getattr(self, f).to(device, non_blocking=non_blocking) for f in _TENSORS}
        return dataclasses.replace(self, **moved)

    def pin_memory(self) -> TrialBatch:
        """Copy of the batch with its tensors in pinned memory."""
        return dataclasses.replace(self, **{f: getattr(self, f).pin_memory() for f in _TENSORS})

    def split(self, parts: int) -> list[TrialBatch]:
        """The trials as ``parts`` consecutive batches of equal size (one per network), as views."""
        size = len(self.lengths) // parts
        if size * parts != len(self.lengths):
            raise ValueError(f"cannot split {len(self.lengths)} trials into {parts} equal parts")
        return [
            TrialBatch(
                **{f: getattr(self, f)[i * size:(i + 1) * size] for f in _TENSORS},
                conditions={k: v[i * size:(i + 1) * size] for k, v in self.conditions.items()},
                epochs={k: v[i * size:(i + 1) * size] for k, v in self.epochs.items()},
            )
            for i in range(parts)
        ]


def _batch_from_arrays(
    arrays: dict[str, np.ndarray], conditions: dict[str, np.ndarray], epochs: dict[str, np.ndarray]
) -> TrialBatch:
    return TrialBatch(**{f: torch.from_numpy(a) for f, a in arrays.items()}, conditions=conditions, epochs=epochs)


def _is_condition(value: Any) -> bool:
    """Trial info kept as a per-trial condition: a number or a flag (Python's or numpy's)."""
    return isinstance(value, int | float | bool | np.number | np.bool_)


def _kept(env: TrialEnv) -> dict[int, Any]:
    """What a copy of ``env``'s state keeps by reference: the env, and the wrappers it points to (a collection's
    schedule and the other TrialEnvs in it; only the env's own state makes its trials)."""
    return {id(env): env} | {id(x): x for x in vars(env).values() if isinstance(x, gym.Env)}


class TrialSampler:
    """Deterministic batches of a task, or of a task set (``tasks``: id -> sampling weight, on one
    :mod:`nn4n.layout`): `batch(index)` depends only on (seed, index).

    A task set draws each row's task by weight (``mixing="trial"``), or one task for the whole batch
    (``"batch"``, as Yang et al. 2019); ``balanced`` rows go to the tasks in turn (held-out trials: every task
    alike). ``hold_fixation``: the fixation input stays on until the first response period of each trial.
    Picklable: it keeps the task arguments and builds its envs lazily (in each process).
    """

    def __init__(
        self,
        name: str,
        dt: float,
        batch_size: int,
        seed: int,
        timing: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        task_dirs: Sequence[str | Path] = (),
        decision_weight: float = 5.0,
        decision_period: str | Sequence[str] | None = "decision",
        trials_per_row: int = 1,
        grace: float = 0.0,
        penalize_guess: bool = False,
        tasks: Mapping[str, float] | None = None,
        mixing: str = "trial",
        balanced: bool = False,
        output: str = "classes",
        hold_fixation: bool = False,
    ) -> None:
        self.name, self.dt, self.batch_size, self.seed = name, dt, batch_size, seed
        self.timing, self.params, self.task_dirs = timing, params, tuple(task_dirs)
        self.decision_weight, self.decision_period, self.trials_per_row = decision_weight, decision_period, trials_per_row
        self.grace, self.tasks, self.mixing, self.balanced, self.output = grace, dict(tasks or {}), mixing, balanced, output
        self.hold_fixation, self.penalize_guess = hold_fixation, penalize_guess
        self._variants: list[Variant] | None = None
        self._initial_states: list[dict[str, Any]] = []
        self._spec: TaskSpec | None = None
        self._layout: Layout | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_variants": None, "_initial_states": []}

    @property
    def variants(self) -> list[Variant]:
        """Every task's variants (:func:`nn4n.tasks.make_variants`), made on first use; their freshly made
        states are kept to reset them per batch."""
        if self._variants is None:
            make = functools.partial(make_variants, dt=self.dt, timing=self.timing, params=self.params,
                                     task_dirs=self.task_dirs)
            try:
                by_task = {task: make(task) for task in self.tasks} if self.tasks else {self.name: make(self.name)}
            except ValueError as err:  # a task of a set is named by task.tasks
                raise ValueError(str(err).replace("task.name:", "task.tasks:", 1) if self.tasks else str(err)) from None
            self._variants = [v for variants in by_task.values() for v in variants]
            self._initial_states = [copy.deepcopy(vars(v.env), _kept(v.env)) for v in self._variants]
            self._layout = shared_layout(by_task) if self.tasks else own_layout(self._variants)
        return self._variants

    @property
    def layout(self) -> Layout:
        """Where each variant's channels and actions go among the network's (:mod:`nn4n.layout`)."""
        self.variants
        return self._layout

    @property
    def spec(self) -> TaskSpec:
        if self._spec is None:
            specs = [task_spec(v.env, self.decision_period) for v in self.variants]
            self._spec = layout_spec(self.name, specs, self.layout, tuple(self.tasks), self.output)
            if self.hold_fixation and "fixation" not in self._spec.input_names:
                raise ValueError(f"task.hold_fixation: {self.name} has no input named fixation")
        return self._spec

    def _reset(self, index: int, variant: int) -> TrialEnv:
        """Return the variant's env in its freshly made state, reseeded from (seed, index, variant)."""
        env = self.variants[variant].env
        state = copy.deepcopy(self._initial_states[variant], _kept(env))
        vars(env).clear()
        vars(env).update(state)
        key = [self.seed, index] if variant == 0 else [self.seed, index, variant]
        env.seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        return env

    def _draw(self, index: int) -> list[int]:
        """The variant of each trial of the ``index``-th batch (row by row): its task by weight (or in turn, or
        one for the batch), then one of the task's variants uniformly."""
        layout, n = self.layout, self.batch_size * self.trials_per_row
        if len(layout.task) == 1:
            return [0] * n
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index], spawn_key=(1,)))
        names = list(self.tasks) or [self.name]
        if self.balanced:
            tasks = np.arange(n) % len(names)
        else:
            weights = np.array([self.tasks.get(t, 1.0) for t in names], dtype=float)
            draws = 1 if self.mixing == "batch" else n
            tasks = np.resize(rng.choice(len(names), size=draws, p=weights / weights.sum()), n)
        of_task = [np.flatnonzero(np.array(layout.task) == k) for k in range(len(names))]
        return [int(rng.choice(of_task[k])) for k in tasks]

    def _trial(self, env: TrialEnv) -> tuple[dict[str, Any], np.ndarray, np.ndarray, dict[str, tuple[int, int]]]:
        """The env's next trial: its info, inputs (T, n_in), targets and periods ([start, end) steps)."""
        env.start_ind.clear()  # NeuroGym never forgets periods of earlier trials
        env.end_ind.clear()
        info = env.new_trial()
        ob = env.ob.reshape(len(env.ob), -1)
        periods = {p: (min(max(env.start_ind[p], 0), len(ob)), min(max(env.end_ind[p], 0), len(ob))) for p in env.start_ind}
        return info, ob, env.gt, periods

    def batch(self, index: int) -> TrialBatch:
        """The index-th batch (a pure function of seed and index): rows of ``trials_per_row`` consecutive trials."""
        spec, layout, n_trials = self.spec, self.layout, self.trials_per_row
        envs: dict[int, TrialEnv] = {}  # each variant drawn in this batch, reset once
        trials = []
        for v in self._draw(index):
            if v not in envs:
                envs[v] = self._reset(index, v)
            trials.append((v, *self._trial(envs[v])))
        rows = [trials[b * n_trials:(b + 1) * n_trials] for b in range(self.batch_size)]
        lengths = np.array([sum(len(ob) for _, _, ob, _, _ in row) for row in rows], dtype=np.int64)
        n_batch, n_steps = self.batch_size, int(lengths.max())
        inputs = np.zeros((n_batch, n_steps, spec.n_inputs), dtype=np.float32)
        if spec.kind is TaskKind.REGRESSION:
            targets = np.zeros((n_batch, n_steps, spec.n_outputs), dtype=np.float32)
        else:
            targets = np.zeros((n_batch, n_steps), dtype=np.int64)
        names = list(dict.fromkeys(p for row in rows for _, _, _, _, periods in row for p in periods))
        epochs = {p: np.zeros((n_batch, n_trials, 2), dtype=np.int64) for p in names}
        window = np.zeros((n_batch, n_steps), dtype=np.int16)
        graced = np.zeros((n_batch, n_steps), dtype=bool)  # grace ms (at most half the window) at the start and after the end of each response window
        n_periods, grace_steps = len(spec.decision_periods), int(round(self.grace / self.dt))
        for b, row in enumerate(rows):
            offset = 0
            for j, (v, _, ob, gt, periods) in enumerate(row):
                inputs[b][offset:offset + len(ob), layout.inputs[v]] = ob
                if layout.rules[v] is not None:
                    inputs[b, offset:offset + len(ob), layout.rules[v]] = 1.0  # the task's rule, the whole trial
                gt = gt if layout.outputs[v] is None else layout.outputs[v][gt]
                targets[b, offset:offset + len(gt)] = gt.reshape(len(gt), *targets.shape[2:])
                for p, (start, end) in periods.items():
                    epochs[p][b, j] = offset + start, offset + end
                if self.hold_fixation:  # the fixation cue on until the first response period (the go cue)
                    first = min((periods[p.split("+")[0]][0] for p in spec.decision_periods if p.split("+")[0] in periods),
                                default=0)
                    inputs[b, offset:offset + first, spec.input_names["fixation"][0]] = 1.0
                for k, p in enumerate(spec.decision_periods):
                    parts = p.split("+")  # "a+b": from a's start to b's end
                    first, last = parts[0], parts[-1]
                    if first in periods and last in periods:
                        start, end = offset + periods[first][0], offset + periods[last][1]
                        window[b, start:end] = j * n_periods + k + 1
                        react = min(grace_steps, (end - start) // 2)  # never more than half the window
                        graced[b, start:start + react] = True
                        graced[b, end:end + react] = True
                        if spec.prod_margin is not None:  # timing: go at the target moment and hold it
                            go = np.flatnonzero(targets[b, start:end] != spec.fixation)
                            if go.size:
                                targets[b, start + go[0]:end] = targets[b, start + go[0]]
                offset += len(ob)
        mask = (np.arange(n_steps) < lengths[:, None]).astype(np.float32)
        mask[window > 0] = self.decision_weight
        mask[graced & (mask > 0)] = 0.0  # time to react: to the go cue (a response there is scored, not trained),
        # and to the response's end (the way back to fixation is not counted as breaking it)
        guesses = self.penalize_guess and spec.kind is TaskKind.CLASSIFICATION and spec.fixation is not None
        react = graced & (window > 0) & guesses
        mask[react] = 1.0  # ... except that a wrong answer while reacting is a guess, penalised (metrics.task_loss)
        infos = [info for row in rows for _, info, _, _, _ in row]
        keys = [k for k in dict.fromkeys(k for info in infos for k in info)
                if all(_is_condition(info[k]) for info in infos if k in info)]
        conditions = {k: np.asarray([info.get(k, np.nan) for info in infos]).reshape(n_batch, n_trials) for k in keys}
        if spec.tasks:  # which task, and which of its variants (a modality, say), each trial is
            conditions["task"] = np.array([layout.task[v] for v, *_ in trials]).reshape(n_batch, n_trials)
        if len(layout.task) > len(set(layout.task)):
            first = {k: layout.task.index(k) for k in set(layout.task)}
            conditions["variant"] = np.array([v - first[layout.task[v]] for v, *_ in trials]).reshape(n_batch, n_trials)
        if n_trials == 1:  # one trial per row: per-trial arrays as (B,) and (B, 2)
            conditions = {k: v[:, 0] for k, v in conditions.items()}
            epochs = {p: v[:, 0] for p, v in epochs.items()}
        return TrialBatch(
            inputs=torch.from_numpy(inputs),
            targets=torch.from_numpy(targets),
            mask=torch.from_numpy(mask),
            window=torch.from_numpy(window),
            react=torch.from_numpy(react),
            lengths=torch.from_numpy(lengths),
            conditions=conditions,
            epochs=epochs,
        )


class _Steps(Dataset):
    """Map-style view of a sampler: item i is batch `start + i`."""

    def __init__(self, sampler: TrialSampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, i: int) -> TrialBatch:
        return self.sampler.batch(self.start + i)


def _identity(batch: TrialBatch) -> TrialBatch:
    return batch


def _worker_init(_: int) -> None:
    """In a loader worker: exit as soon as the training process is gone (killed by ``kill -9`` or the OOM killer,
    it would leave the worker's queue thread blocked on a full pipe, and the worker alive and holding its
    memory); and exit quietly on SIGTERM, which ``timeout``, ``scancel`` and ``kill -- -PGID`` send to every
    process of a run: the training process then checkpoints and reports the stop itself."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    parent = multiprocessing.parent_process()
    if parent is not None:
        def exit_when_gone() -> None:
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(0)

        threading.Thread(target=exit_when_gone, daemon=True).start()


def batch_stream(
    sampler: TrialSampler, start: int = 0, num_workers: int = 1, pin_memory: bool = False
) -> Generator[TrialBatch, None, None]:
    """Yield sampler.batch(start), sampler.batch(start + 1), ... forever, prepared ahead by
    `num_workers` DataLoader worker processes (0: in this process); closing it stops them."""
    sampler.spec  # make the env in this process: forked workers share its initial state
    with warnings.catch_warnings():  # more workers than cores: nn4n-train says so in one line of its own
        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
        batches = iter(DataLoader(
            _Steps(sampler, start),
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_identity,
            worker_init_fn=_worker_init,
            pin_memory=pin_memory,
            generator=torch.Generator(),  # worker seeds must not consume the global RNG (resume = identical run)
            # the platform's own start method, whatever a parent (e.g. joblib's loky workers) made the default
            multiprocessing_context=multiprocessing.get_context(multiprocessing.get_all_start_methods()[0]) if num_workers else None,
        ))
    yield from batches
