"""Where each task's observation channels and actions go among a network's inputs and outputs.

One task keeps its own channels, in its own order. Several tasks share one layout, as in Yang et al. 2019:
channels are matched by NeuroGym's names (``fixation``, ``stimulus_mod1``, ...; actions ``fixation``,
``choice``), each name once, in the order the tasks first name them, then one rule input per task, held at 1
for the whole trial.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from .tasks import TaskKind, TaskSpec, Variant, channel_names


@dataclass(frozen=True)
class Layout:
    """The network's named inputs and outputs, and each variant's place among them."""

    input_names: dict[str, list[int]]
    output_names: dict[str, list[int]]
    n_inputs: int
    n_outputs: int
    inputs: tuple[np.ndarray, ...]  # per variant: the network input of each of its observation channels
    outputs: tuple[np.ndarray | None, ...]  # per variant: the network output of each of its actions (None: its own)
    rules: tuple[int | None, ...]  # per variant: its task's rule input (None: no rule inputs)
    task: tuple[int, ...]  # per variant: its task's index


def _size(space: gym.Space) -> int:
    return int(space.n) if isinstance(space, gym.spaces.Discrete) else int(np.prod(space.shape))


def own_layout(variants: Sequence[Variant]) -> Layout:
    """One task: its channels where the task puts them (its variants' names merged)."""
    env = variants[0].env
    n_in, n_out = _size(env.observation_space), _size(env.action_space)
    names: dict[str, list[int]] = {}
    for v in variants:
        names |= v.input_names
    return Layout(names, channel_names(env.action_space), n_in, n_out, tuple(np.arange(n_in) for _ in variants),
                  (None,) * len(variants), (None,) * len(variants), (0,) * len(variants))


def _place(shared: dict[str, list[int]], names: Mapping[str, list[int]], size: int, task: str, what: str) -> np.ndarray:
    """Each of a variant's ``size`` channels' index among the ``shared`` ones (extended with names not yet there)."""
    placed = np.full(size, -1)
    for name, channels in names.items():
        if name not in shared:
            start = sum(map(len, shared.values()))
            shared[name] = list(range(start, start + len(channels)))
        elif len(shared[name]) != len(channels):
            raise ValueError(f"task.tasks: {task}'s {what} '{name}' has {len(channels)} channels where an earlier task's has "
                             f"{len(shared[name])}: the tasks cannot share one layout")
        placed[channels] = shared[name]
    if (placed < 0).any():
        raise ValueError(f"task.tasks: {task}'s {what} {np.flatnonzero(placed < 0).tolist()} have no name: a task set "
                         "matches channels by name")
    return placed


def shared_layout(tasks: Mapping[str, Sequence[Variant]]) -> Layout:
    """Several tasks (id -> its variants): one layout, channels matched by name, one rule input per task."""
    inputs: dict[str, list[int]] = {}
    outputs: dict[str, list[int]] = {}
    placed_in, placed_out, task_of = [], [], []
    for k, (task, variants) in enumerate(tasks.items()):
        for v in variants:
            if not isinstance(v.env.action_space, gym.spaces.Discrete):
                raise ValueError(f"task.tasks: {task} has a continuous action space: a task set shares its tasks' "
                                 "actions (fixation, choices)")
            placed_in.append(_place(inputs, v.input_names, _size(v.env.observation_space), task, "observation channels"))
            placed_out.append(_place(outputs, channel_names(v.env.action_space), _size(v.env.action_space), task, "actions"))
            task_of.append(k)
    first_rule = sum(map(len, inputs.values()))
    inputs |= {f"rule {task}": [first_rule + k] for k, task in enumerate(tasks)}
    return Layout(inputs, outputs, first_rule + len(tasks), sum(map(len, outputs.values())), tuple(placed_in),
                  tuple(placed_out), tuple(first_rule + k for k in task_of), tuple(task_of))


def layout_spec(name: str, specs: Sequence[TaskSpec], layout: Layout, tasks: tuple[str, ...], output: str) -> TaskSpec:
    """The spec of task ``name`` (from its variants' ``specs``), or of the task set ``tasks`` (every variant's
    spec), on ``layout``; its outputs read as ``output``: ``classes`` or ``ring``."""
    first = specs[0]
    timing = [tasks[layout.task[k]] for k, spec in enumerate(specs) if spec.prod_margin is not None] if tasks else []
    if timing:
        raise ValueError(f"task.tasks: {timing[0]} is a timing task (scored by its own production window): a task set "
                         "scores its tasks alike")
    fixation = layout.output_names.get("fixation", [None])[0] if tasks else first.fixation
    kind = first.kind
    if output == "ring":
        ring = [channels for action, channels in layout.output_names.items() if action != "fixation"]
        if kind is not TaskKind.CLASSIFICATION or fixation is None or len(ring) != 1 or len(ring[0]) < 3:
            raise ValueError(f"task.output: ring reads a fixation action and one ring of choices; {name} has actions "
                             f"{', '.join(layout.output_names) or 'without names'}")
        kind = TaskKind.RING
    return dataclasses.replace(first, name=name, n_inputs=layout.n_inputs, n_outputs=layout.n_outputs, kind=kind,
                               input_names=layout.input_names, output_names=layout.output_names, fixation=fixation,
                               tasks=tasks)
