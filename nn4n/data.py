"""Trial-aligned batches: one trial per row, starting at step 0, zero-padded to the longest."""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from neurogym.core import TrialEnv
from torch.utils.data import DataLoader, Dataset

from .tasks import TaskKind, TaskSpec, make_task, task_spec

_TENSORS = ("inputs", "targets", "mask", "decision", "lengths")


@dataclass
class TrialBatch:
    """A batch of trials; steps past a trial's length are padding."""

    inputs: torch.Tensor  # (B, T, n_in) float32, zero-padded
    targets: torch.Tensor  # (B, T) int64 (classification) or (B, T, n_out) float32 (regression); padding 0
    mask: torch.Tensor  # (B, T) float32 loss weight: 0 on padding, decision_weight in the decision period, else 1
    decision: torch.Tensor  # (B, T) bool: True in the decision period
    lengths: torch.Tensor  # (B,) int64 trial lengths in steps
    conditions: dict[str, np.ndarray]  # numeric trial info from new_trial(), each (B,)
    epochs: dict[str, np.ndarray]  # period -> (B, 2) int64 [start, end) steps; [0, 0) where absent

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


class TrialSampler:
    """Deterministic batches of a task: `batch(index)` depends only on (seed, index).

    Picklable: it keeps the task arguments and builds its env lazily (in each process).
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
        decision_period: str | None = "decision",
    ) -> None:
        self.name, self.dt, self.batch_size, self.seed = name, dt, batch_size, seed
        self.timing, self.params, self.task_dirs = timing, params, tuple(task_dirs)
        self.decision_weight, self.decision_period = decision_weight, decision_period
        self._env: TrialEnv | None = None
        self._initial_state: dict[str, Any] = {}
        self._spec: TaskSpec | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_env": None, "_initial_state": {}}

    @property
    def env(self) -> TrialEnv:
        """The task's env, made on first use; its freshly made state is kept to reset it per batch."""
        if self._env is None:
            env = make_task(self.name, self.dt, self.timing, self.params, self.task_dirs)
            self._initial_state = copy.deepcopy(vars(env), {id(env): env})
            self._env = env
        return self._env

    @property
    def spec(self) -> TaskSpec:
        if self._spec is None:
            self._spec = task_spec(self.env, self.decision_period)
        return self._spec

    def _reset(self, index: int) -> TrialEnv:
        """Return the env in its freshly made state, reseeded from (seed, index)."""
        env = self.env
        state = copy.deepcopy(self._initial_state, {id(env): env})
        vars(env).clear()
        vars(env).update(state)
        env.seed(int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0]))
        return env

    def batch(self, index: int) -> TrialBatch:
        """The index-th batch of trials (a pure function of seed and index)."""
        spec = self.spec
        env = self._reset(index)
        infos, obs, gts, periods = [], [], [], []
        for _ in range(self.batch_size):
            env.start_ind.clear()  # NeuroGym never forgets periods of earlier trials
            env.end_ind.clear()
            infos.append(env.new_trial())
            obs.append(env.ob.reshape(len(env.ob), -1))
            gts.append(env.gt)
            periods.append({p: (env.start_ind[p], env.end_ind[p]) for p in env.start_ind})

        lengths = np.array([len(ob) for ob in obs], dtype=np.int64)
        n_batch, n_steps = self.batch_size, int(lengths.max())
        inputs = np.zeros((n_batch, n_steps, spec.n_inputs), dtype=np.float32)
        if spec.kind is TaskKind.CLASSIFICATION:
            targets = np.zeros((n_batch, n_steps), dtype=np.int64)
        else:
            targets = np.zeros((n_batch, n_steps, spec.n_outputs), dtype=np.float32)
        epochs = {p: np.zeros((n_batch, 2), dtype=np.int64) for trial in periods for p in trial}
        for b, (ob, gt, trial) in enumerate(zip(obs, gts, periods, strict=True)):
            inputs[b, : len(ob)] = ob
            targets[b, : len(gt)] = gt.reshape(len(gt), *targets.shape[2:])
            for p, (start, end) in trial.items():
                epochs[p][b] = min(max(start, 0), len(ob)), min(max(end, 0), len(ob))

        decision = np.zeros((n_batch, n_steps), dtype=bool)
        if spec.decision_period in epochs:
            for b, (start, end) in enumerate(epochs[spec.decision_period]):
                decision[b, start:end] = True
        mask = (np.arange(n_steps) < lengths[:, None]).astype(np.float32)
        mask[decision] = self.decision_weight
        keys = [k for k in infos[0] if all(_is_condition(info.get(k)) for info in infos)]
        return TrialBatch(
            inputs=torch.from_numpy(inputs),
            targets=torch.from_numpy(targets),
            mask=torch.from_numpy(mask),
            decision=torch.from_numpy(decision),
            lengths=torch.from_numpy(lengths),
            conditions={k: np.asarray([info[k] for info in infos]) for k in keys},
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


def _exit_with_parent(_: int) -> None:
    """In a loader worker: exit as soon as the training process is gone. Killed (``kill -9``, an OOM kill),
    it leaves the worker's queue thread blocked on a full pipe, and the worker alive and holding its memory."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        def exit_when_gone() -> None:
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(0)

        threading.Thread(target=exit_when_gone, daemon=True).start()


def batch_stream(
    sampler: TrialSampler, start: int = 0, num_workers: int = 1, pin_memory: bool = False
) -> Iterator[TrialBatch]:
    """Yield sampler.batch(start), sampler.batch(start + 1), ... forever, prepared ahead by
    `num_workers` DataLoader worker processes (0: in this process)."""
    sampler.spec  # make the env in this process: forked workers share its initial state
    with warnings.catch_warnings():  # more workers than cores: nn4n-train says so in one line of its own
        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
        batches = iter(DataLoader(
            _Steps(sampler, start),
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_identity,
            worker_init_fn=_exit_with_parent,
            pin_memory=pin_memory,
            generator=torch.Generator(),  # worker seeds must not consume the global RNG (resume = identical run)
            # the platform's own start method, whatever a parent (e.g. joblib's loky workers) made the default
            multiprocessing_context=multiprocessing.get_context(multiprocessing.get_all_start_methods()[0]) if num_workers else None,
        ))
    yield from batches
