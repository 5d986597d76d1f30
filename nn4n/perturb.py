"""Perturbations of a network as an experimentalist applies them to an animal, each in a time window.

- ``silence``: the group's rates are 0 and its ``v`` is held at rest (0) through the window, so its neurons
  restart from rest when the window ends; their recorded rates are 0 (optogenetic inactivation);
- ``stimulate``: a current added to the group's input drive ``W_in u + b``, in its units: one value, or one per
  neuron of the group;
- ``lesion``: synapses removed for the whole trial: a projection ``post<-pre`` (or a random ``fraction`` of its
  synapses), or every outgoing synapse (recurrent and readout) of a group.

A group is an ``area``, an area's ``population`` (``E`` or ``I``; every area's without ``area``), a random
``fraction`` of either (drawn from ``seed``; for one seed, a smaller fraction's neurons are
among a larger one's, as in a dose-response experiment), or a list of ``neurons``. A window is a list of task ``periods``
(each trial's own), or ``steps`` ``[start, stop)``, or, given neither, the whole trial.

``CTRNN(inputs, perturb=[...], epochs=batch.epochs)`` runs them (``epochs`` only for windows in periods); an
:class:`Effect` is what they compile to on one network and one batch's shape.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

    from .structure import Structure

KINDS = ("silence", "stimulate", "lesion")
_PROJECTION = re.compile(r"^\s*([^<\s]+)\s*<-\s*([^<\s]+)\s*$")


@dataclass(frozen=True)
class Perturbation:
    """One perturbation (see the module's docstring); :meth:`of` makes one from a dict of these fields."""

    kind: str
    area: str | None = None
    population: str | None = None
    neurons: tuple[int, ...] | None = None
    fraction: float = 1.0
    seed: int = 0
    projection: str | None = None  # lesion: "post<-pre"
    current: float | tuple[float, ...] = 0.0  # stimulate
    periods: tuple[str, ...] = ()
    steps: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        def bad(key: str, problem: str) -> ValueError:
            return ValueError(f"{key}: {problem}")

        if self.kind not in KINDS:
            raise bad("kind", f"must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (isinstance(self.fraction, (int, float)) and 0 <= self.fraction <= 1):
            raise bad("fraction", f"must be a number in [0, 1], got {self.fraction!r}")
        if self.neurons is not None and (self.area is not None or self.population is not None):
            raise bad("neurons", "a list of neurons is a group of its own: give it without area or population")
        if self.neurons is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.neurons):
            raise bad("neurons", f"must be neuron indices (integers >= 0), got {list(self.neurons)!r}")
        if self.projection is not None:
            if self.kind != "lesion":
                raise bad("projection", f"only a lesion removes a projection, not {self.kind}")
            if not _PROJECTION.match(self.projection):
                raise bad("projection", f"must be 'post<-pre' (e.g. 'PFC<-PPC'), got {self.projection!r}")
            if self.area is not None or self.population is not None or self.neurons is not None:
                raise bad("projection", "a projection is the lesion's target: give it without area, population or neurons")
        if self.kind == "lesion" and (self.periods or self.steps is not None):
            raise bad("periods" if self.periods else "steps", "a lesion lasts the whole trial: give it no window")
        if self.kind != "stimulate" and self.current != 0.0:
            raise bad("current", f"only stimulate adds a current, not {self.kind}")
        currents = self.current if isinstance(self.current, tuple) else (self.current,)
        if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in currents):
            raise bad("current", f"must be a finite number or a list of them, got {self.current!r}")
        if self.periods and self.steps is not None:
            raise bad("steps", "give a window as periods or as steps, not both")
        if self.steps is not None:
            ok = len(self.steps) == 2 and all(isinstance(s, int) and not isinstance(s, bool) for s in self.steps)
            if not ok or not 0 <= self.steps[0] < self.steps[1]:
                raise bad("steps", f"must be [start, stop) with 0 <= start < stop, got {list(self.steps)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise bad("seed", f"must be an integer >= 0, got {self.seed!r}")

    @classmethod
    def of(cls, value: Perturbation | Mapping[str, Any]) -> Perturbation:
        """``value`` itself, or the perturbation its keys describe (lists for ``neurons``, ``periods``, ``steps``,
        ``current``); one-line ValueErrors name the bad key."""
        if isinstance(value, Perturbation):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"must be a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}, got {value!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in value:
            if key not in known:
                raise ValueError(f"{key}: unknown key; a perturbation has {', '.join(sorted(known))}")
        if "kind" not in value:
            raise ValueError(f"kind: missing; one of {', '.join(KINDS)}")
        fields = dict(value)
        for key in ("neurons", "periods", "steps", "current"):
            if isinstance(fields.get(key), (list, tuple)):
                fields[key] = tuple(fields[key])
            elif key == "periods" and isinstance(fields.get(key), str):
                fields[key] = (fields[key],)
        return cls(**fields)

    @property
    def target(self) -> str:
        """What it acts on: ``PFC/E 50%``, ``PFC<-PPC``, ``3 neurons``, ``all/I``."""
        if self.projection is not None:
            target = self.projection.replace(" ", "")
        elif self.neurons is not None:
            target = f"{len(self.neurons)} neurons"
        else:
            target = "/".join(x for x in (self.area or ("all" if self.population is None else None), self.population) if x)
        return target + (f" {self.fraction:.0%}" if self.fraction < 1 else "")

    @property
    def window(self) -> str:
        """When: ``delay``, ``stimulus+delay``, ``steps 10-20`` or ``trial``."""
        if self.periods:
            return "+".join(self.periods)
        return f"steps {self.steps[0]}-{self.steps[1]}" if self.steps is not None else "trial"

    @property
    def label(self) -> str:
        """``silence PFC/E 50% during delay``, ``lesion PFC<-PPC``, ``stimulate V1 +0.5 at steps 10-20``."""
        parts = [self.kind, self.target]
        if self.kind == "stimulate":
            parts.append(f"{self.current:+g}" if not isinstance(self.current, tuple) else "(per-neuron current)")
        if self.window != "trial":
            parts.append(("at " if self.steps is not None else "during ") + self.window)
        return " ".join(parts)


def combination(value: Perturbation | Mapping[str, Any] | Sequence[Perturbation | Mapping[str, Any]]) -> tuple[Perturbation, ...]:
    """One perturbation, or several applied together, as a tuple (one-line ValueErrors name the bad key)."""
    parts = list(value) if isinstance(value, Sequence) and not isinstance(value, (str, Mapping)) else [value]
    if not parts:
        raise ValueError("kind: an empty list perturbs nothing; give at least one perturbation")
    return tuple(map(Perturbation.of, parts))


@dataclass
class Effect:
    """What perturbations do to one network (or K stacked) on trials of one shape: ``None`` where nothing."""

    keep: torch.Tensor | None = None  # (B, T, N): 0 where a neuron is silenced, 1 elsewhere
    current: torch.Tensor | None = None  # (B, T, N): added to the input drive
    w_rec: torch.Tensor | None = None  # (N, N) or (K, N, N): multiplies the recurrent weights (0: lesioned)
    w_out: torch.Tensor | None = None  # (N,) or (K, N): multiplies the readout's columns

    @classmethod
    def stack(cls, effects: Sequence[Effect]) -> Effect:
        """K networks' effects as one: the windows are the same for every network (they depend on the areas
        and populations only), the lesions each network's own."""
        import torch

        first = effects[0]
        lesions = {name: None if getattr(first, name) is None else torch.stack([getattr(e, name) for e in effects])
                   for name in ("w_rec", "w_out")}
        return cls(first.keep, first.current, **lesions)


def _group(p: Perturbation, st: Structure) -> np.ndarray:
    """The neurons ``p`` acts on: its group, then a random ``fraction`` of it (sorted indices)."""
    if p.neurons is not None:
        pool = np.asarray(p.neurons, dtype=np.int64)
        if pool.size and pool.max() >= st.n_neurons:
            raise ValueError(f"neurons: neuron {int(pool.max())} is not in the network (neurons 0-{st.n_neurons - 1})")
        pool = np.unique(pool)
    else:
        pool = st.indices(p.area, p.population)
    count = int(round(p.fraction * pool.size))  # nested: one seed's smaller fractions are part of its larger ones
    return np.sort(np.random.default_rng(p.seed).permutation(pool)[:count])


def _projection(p: Perturbation, st: Structure) -> tuple[slice, slice]:
    """The (post, pre) block of ``p.projection``, which must hold synapses."""
    post, pre = _PROJECTION.match(p.projection).groups()  # type: ignore[union-attr]
    for area in (post, pre):
        if area not in st.area_slices:
            raise ValueError(f"projection: unknown area {area!r} in {p.projection!r}; areas: {', '.join(st.area_names)}")
    rows, cols = st.area_slices[post], st.area_slices[pre]
    if not st.rec_mask[rows, cols].any():
        raise ValueError(f"projection: {post}<-{pre} has no synapses in this network")
    return rows, cols


def _window(p: Perturbation, n_trials: int, n_steps: int, epochs: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """(B, T) bool: the steps of each trial ``p`` acts in."""
    steps = np.arange(n_steps)
    if p.steps is not None:
        start, stop = p.steps
        if stop > n_steps:
            raise ValueError(f"steps: [{start}, {stop}) is outside the trials' {n_steps} steps")
        return np.tile((steps >= start) & (steps < stop), (n_trials, 1))
    if not p.periods:
        return np.ones((n_trials, n_steps), bool)
    if epochs is None:
        raise ValueError("periods: a window in task periods needs the trials' epochs (epochs=batch.epochs)")
    inside = np.zeros((n_trials, n_steps), bool)
    for period in p.periods:
        if period not in epochs:
            raise ValueError(f"periods: unknown period {period!r}; periods: {', '.join(epochs)}")
        bounds = np.asarray(epochs[period]).reshape(n_trials, -1, 2)  # one or several trials per row
        inside |= ((steps >= bounds[..., :1]) & (steps < bounds[..., 1:])).any(1)
    if not inside.any():
        raise ValueError(f"periods: {'+'.join(p.periods)} lasts 0 steps in every trial")
    return inside


def effect(perturb: Iterable[Perturbation | Mapping[str, Any]], structure: Structure, n_trials: int, n_steps: int,
           epochs: Mapping[str, np.ndarray] | None = None, like: torch.Tensor | None = None) -> Effect:
    """What ``perturb`` does to a network of ``structure`` on ``n_trials`` x ``n_steps`` trials (``epochs``:
    the trials' periods, ``TrialBatch.epochs``, for windows given as periods), on the device and in the dtype of
    ``like`` (float32 on the CPU without it)."""
    import torch

    st, n = structure, structure.n_neurons
    like = like if like is not None else torch.empty(0)
    keep = current = rec = out = None
    for p in map(Perturbation.of, perturb):
        if p.kind == "lesion":
            rec = np.ones((n, n), np.float32) if rec is None else rec
            if p.projection is not None:
                rows, cols = _projection(p, st)
                synapses = np.argwhere(st.rec_mask[rows, cols])
                cut = np.random.default_rng(p.seed).choice(len(synapses), int(round(p.fraction * len(synapses))), replace=False)
                rec[rows, cols][tuple(synapses[cut].T)] = 0.0
            else:
                neurons = _group(p, st)
                out = np.ones(n, np.float32) if out is None else out
                rec[:, neurons] = out[neurons] = 0.0
            continue
        neurons = _group(p, st)
        window = torch.as_tensor(_window(p, n_trials, n_steps, epochs), device=like.device)[..., None]
        if p.kind == "silence":  # built where it is used, by broadcasting: (B, T, N) is ~26 MB at N=256, B=256, T=100
            in_group = torch.zeros(n, dtype=torch.bool)
            in_group[neurons] = True
            keep = like.new_ones(n_trials, n_steps, n) if keep is None else keep
            keep.masked_fill_(window & in_group.to(like.device), 0.0)
        else:
            values = np.asarray(p.current, np.float32)
            if values.ndim and values.size != neurons.size:
                raise ValueError(f"current: {values.size} values for a group of {neurons.size} neurons")
            per_neuron = np.zeros(n, np.float32)
            per_neuron[neurons] = values
            current = like.new_zeros(n_trials, n_steps, n) if current is None else current
            current.addcmul_(window, torch.as_tensor(per_neuron).to(like))

    def on_device(x: np.ndarray | None) -> torch.Tensor | None:
        return None if x is None else torch.as_tensor(x).to(like)

    return Effect(keep, current, on_device(rec), on_device(out))
