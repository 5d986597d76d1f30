"""Network structure: named areas, E/I identity, time constants and connection masks.

A :class:`NetworkConfig` describes a network the way a neuroscientist would (areas, densities of
projections between them, which areas see the input and which are read out); :class:`Structure`
turns it into per-neuron arrays and masks. Neurons are numbered area by area in declaration order,
excitatory before inhibitory inside each area. Matrices are indexed ``[post, pre]``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .recurrence import ACTIVATIONS
from .validate import check, choice, fraction, integer, is_number, non_negative, number, positive, seed, unit

INIT_DISTRIBUTIONS = ("normal", "uniform", "gamma")
BALANCES = ("network", "neuron")
PROJECTING = ("all", "excitatory")
POPULATIONS = {"E": 1, "excitatory": 1, "I": -1, "inhibitory": -1}  # population name -> neuron sign
TAU_STREAM = 1  # the random stream, after the config's seed, that per-neuron taus are drawn from


@dataclass
class Area:
    """One brain area. ``None`` fields take the network-wide default."""

    size: int = 64
    exc_frac: float | None = None
    tau: float | None = None
    tau_range: list[float] | None = None
    noise: float | None = None


@dataclass
class InputGroup:
    """A named slice of the input features (in declaration order) routed to chosen areas."""

    size: int = 1
    areas: list[str] = field(default_factory=list)


@dataclass
class Density:
    """Default connection probability inside an area and between two areas."""

    within: float = 1.0
    between: float = 0.0


@dataclass
class Plasticity:
    """How much each synapse may move per optimizer step, in [0, 1] (0 = frozen)."""

    input: float = 1.0
    readout: float = 1.0
    within: float = 1.0
    between: float = 1.0
    projections: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Noise:
    """Noise standard deviations, white in continuous time and scaled with dt so their effect does not
    depend on it: ``rec`` private to each neuron (``sqrt(2 dt/tau) * rec`` on v per step), ``input``
    on the input features before ``W_in`` (``sqrt(2 tau/dt) * input`` per step, Song et al. 2016).
    With no weights, ``rec`` alone gives v a stationary std of ~``rec``."""

    rec: float = 0.0
    input: float = 0.0


@dataclass
class Init:
    """Weight initialisation: magnitude distribution, E/I balance and spectral radius of the signed W_rec.

    ``balance``: ``network`` scales all inhibitory weights so that the network's total inhibition equals its
    total excitation; ``neuron`` does so for each neuron's incoming synapses (each row of W_rec sums to 0).
    """

    dist: str = "normal"
    balance: str = "network"
    spectral_radius: float = 1.5
    input_scale: float = 1.0
    readout_scale: float = 1.0


@dataclass
class NetworkConfig:
    """Everything that defines a network; plain Python, no Hydra needed.

    Its parts (``density``, ``noise``, ``init``, ``plasticity``, each area and input group) may be
    given as their dataclasses or as plain dicts.
    ``tau_range: [low, high]`` gives every neuron its own tau, drawn log-uniformly in that range (from
    ``seed``); an area's own ``tau`` or ``tau_range`` overrides the network's ``tau`` and ``tau_range``.
    ``projections[to][from]`` overrides the default density of the (post=to, pre=from) block.
    ``dale`` makes every neuron excitatory or inhibitory (``exc_frac`` of each area excitatory);
    without it all neurons are unconstrained (sign 0).
    ``input_areas`` and ``readout_areas`` left empty mean the first area and the last area (in declaration
    order); the network summary marks each area's role.
    """

    areas: dict[str, Area] = field(default_factory=dict)
    input_size: int = 1
    output_size: int = 1
    dt: float = 20.0
    tau: float = 100.0
    tau_range: list[float] | None = None
    dale: bool = True
    exc_frac: float = 0.8
    density: Density = field(default_factory=Density)
    projections: dict[str, dict[str, float]] = field(default_factory=dict)
    self_connections: bool = False
    long_range: str = "all"
    input_areas: list[str] = field(default_factory=list)
    input_groups: dict[str, InputGroup] = field(default_factory=dict)
    input_frac: float = 1.0
    readout_areas: list[str] = field(default_factory=list)
    readout_frac: float = 1.0
    readout_from: str = "all"
    readout_overlap: bool = True
    activation: str = "relu"
    noise: Noise = field(default_factory=Noise)
    init: Init = field(default_factory=Init)
    learn_tau: bool = False
    learn_h0: bool = False
    rec_bias: bool = True
    out_bias: bool = True
    plasticity: Plasticity = field(default_factory=Plasticity)
    seed: int = 0

    def __post_init__(self) -> None:
        for key, part in _PARTS.items():
            value = getattr(self, key)
            setattr(self, key, value if isinstance(value, part) else _from_dict(part, value, f"{key}."))
        for key, item in _ITEMS.items():
            entries = getattr(self, key)
            check(isinstance(entries, Mapping), key, f"must be a mapping of names, got {entries!r}")
            setattr(self, key, {name: v if isinstance(v, item) else _from_dict(item, v or {}, f"{key}.{name}.")
                                for name, v in entries.items()})
        _validate(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NetworkConfig:
        """Build from nested plain dicts (YAML, a checkpoint), rejecting unknown keys."""
        return _from_dict(cls, values, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_PARTS: dict[str, type] = {"density": Density, "noise": Noise, "init": Init, "plasticity": Plasticity}
_ITEMS: dict[str, type] = {"areas": Area, "input_groups": InputGroup}


def _from_dict(cls: type, values: Any, path: str) -> Any:
    """Dataclass ``cls`` from a dict of its fields; anything else, or an unknown key, raises ``ValueError``."""
    check(isinstance(values, Mapping), path.rstrip(".") or cls.__name__, f"must be a mapping, got {values!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        check(key in allowed, f"{path}{key}", f"unknown key; allowed: {', '.join(allowed)}")
    return cls(**values)


def _time_constant(value: Any, dt: float, key: str) -> None:
    number(value, key)
    check(value >= dt, key, f"must be >= dt={dt} so that dt/tau <= 1, got {value!r}")


def _time_range(value: Any, dt: float, key: str) -> None:
    """``[low, high]`` with ``dt <= low <= high``."""
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(map(is_number, value))
    check(ok and dt <= value[0] <= value[1], key, f"must be [low, high] with dt={dt} <= low <= high, got {value!r}")


def _validate(cfg: NetworkConfig) -> None:
    """Check every value, naming the offending key; nothing is built from a bad config."""
    check(isinstance(cfg.areas, Mapping) and len(cfg.areas) > 0, "areas", "at least one area is required")
    names = list(cfg.areas)
    for name in names:  # names become TensorBoard tags (rates/PFC/E) and config keys (model.areas.PFC)
        check(isinstance(name, str) and re.fullmatch(r"[A-Za-z][\w-]*", name) is not None, f"areas.{name}",
              f"an area name is a letter followed by letters, digits, _ or -, got {name!r}")

    def known(area: Any, key: str) -> None:
        check(area in cfg.areas, key, f"unknown area {area!r}; areas: {', '.join(names)}")

    positive(cfg.dt, "dt")
    _time_constant(cfg.tau, cfg.dt, "tau")
    if cfg.tau_range is not None:
        _time_range(cfg.tau_range, cfg.dt, "tau_range")
    unit(cfg.exc_frac, "exc_frac")
    for name, area in cfg.areas.items():
        integer(area.size, f"areas.{name}.size")
        if area.exc_frac is not None:
            unit(area.exc_frac, f"areas.{name}.exc_frac")
        if area.tau is not None:
            _time_constant(area.tau, cfg.dt, f"areas.{name}.tau")
        if area.tau_range is not None:
            check(area.tau is None, f"areas.{name}.tau_range", f"give tau or tau_range, not both (tau is {area.tau!r}: set it to null)")
            _time_range(area.tau_range, cfg.dt, f"areas.{name}.tau_range")
        if area.noise is not None:
            non_negative(area.noise, f"areas.{name}.noise")
    unit(cfg.density.within, "density.within")
    unit(cfg.density.between, "density.between")
    for to, row in cfg.projections.items():
        known(to, f"projections.{to}")
        for pre, value in row.items():
            known(pre, f"projections.{to}.{pre}")
            unit(value, f"projections.{to}.{pre}")
    integer(cfg.input_size, "input_size")
    seed(cfg.seed, "seed")
    integer(cfg.output_size, "output_size")
    for key in ("input_areas", "readout_areas"):
        areas = getattr(cfg, key)
        check(isinstance(areas, (list, tuple)), key, f"must be a list of area names, got {areas!r}")
        for i, area in enumerate(areas):
            known(area, f"{key}[{i}]")
    for group, spec in cfg.input_groups.items():
        integer(spec.size, f"input_groups.{group}.size")
        check(len(spec.areas) > 0, f"input_groups.{group}.areas", "must name at least one area")
        for i, area in enumerate(spec.areas):
            known(area, f"input_groups.{group}.areas[{i}]")
    if cfg.input_groups:
        total = sum(g.size for g in cfg.input_groups.values())
        check(total == cfg.input_size, "input_groups", f"sizes sum to {total} but input_size is {cfg.input_size}")
    fraction(cfg.input_frac, "input_frac")
    fraction(cfg.readout_frac, "readout_frac")
    choice(cfg.long_range, PROJECTING, "long_range")
    choice(cfg.readout_from, PROJECTING, "readout_from")
    from_e = [key for key in ("long_range", "readout_from") if getattr(cfg, key) == "excitatory"]
    check(cfg.dale or not from_e, from_e[0] if from_e else "", "'excitatory' needs dale: true (without it no neuron is "
           f"excitatory); with dale: false set {' and '.join(f'{key}: all' for key in from_e)}")
    choice(cfg.activation, ACTIVATIONS, "activation")
    for key in ("rec", "input"):
        non_negative(getattr(cfg.noise, key), f"noise.{key}")
    for key in ("spectral_radius", "input_scale", "readout_scale"):
        non_negative(getattr(cfg.init, key), f"init.{key}")
    choice(cfg.init.dist, INIT_DISTRIBUTIONS, "init.dist")
    choice(cfg.init.balance, BALANCES, "init.balance")
    for key in ("input", "readout", "within", "between"):
        unit(getattr(cfg.plasticity, key), f"plasticity.{key}")
    for to, row in cfg.plasticity.projections.items():
        known(to, f"plasticity.projections.{to}")
        for pre, value in row.items():
            known(pre, f"plasticity.projections.{to}.{pre}")
            unit(value, f"plasticity.projections.{to}.{pre}")


class Structure:
    """Per-neuron identity and the connection masks of a :class:`NetworkConfig`.

    Attributes (numpy): ``sign`` (+1 E, -1 I, 0 unconstrained), ``area_id``, ``area`` (names), ``tau`` (ms), ``noise``,
    ``input_mask`` (N, n_in), ``rec_mask`` (N, N), ``readout_mask`` (n_out, N), and the matching
    ``*_plasticity`` arrays. Masks are drawn from ``config.seed``: the same config gives the same masks.
    """

    def __init__(self, config: NetworkConfig) -> None:
        self.config = cfg = config
        self.area_names = list(cfg.areas)
        self.area_slices: dict[str, slice] = {}
        signs, taus, noises, area_ids = [], [], [], []
        tau_rng = np.random.default_rng([cfg.seed, TAU_STREAM])  # its own stream: masks do not depend on tau
        start = 0
        for i, (name, area) in enumerate(cfg.areas.items()):
            self.area_slices[name] = slice(start, start + area.size)
            start += area.size
            if cfg.dale:
                n_exc = int(round(area.size * (cfg.exc_frac if area.exc_frac is None else area.exc_frac)))
                signs.append(np.r_[np.ones(n_exc), -np.ones(area.size - n_exc)])
            else:
                signs.append(np.zeros(area.size))
            taus.append(self._area_tau(area, tau_rng))
            noises.append(np.full(area.size, cfg.noise.rec if area.noise is None else area.noise))
            area_ids.append(np.full(area.size, i))
        self.n_neurons = start
        self.sign = np.concatenate(signs).astype(np.int8)
        self.tau = np.concatenate(taus).astype(np.float32)
        self.noise = np.concatenate(noises).astype(np.float32)
        self.area_id = np.concatenate(area_ids)
        self.area = np.array(self.area_names)[self.area_id]  # area name of every neuron
        rng = np.random.default_rng(cfg.seed)
        self.rec_mask, self.asked_density = self._recurrent_mask(rng)
        self.input_mask = self._input_mask(rng)
        self.readout_mask = self._readout_mask(rng)
        self.rec_plasticity = self._rec_plasticity()
        self.input_plasticity = np.full(self.input_mask.shape, cfg.plasticity.input, np.float32)
        self.readout_plasticity = np.full(self.readout_mask.shape, cfg.plasticity.readout, np.float32)

    def _area_tau(self, area: Area, rng: np.random.Generator) -> np.ndarray:
        """The area's tau for each of its neurons: fixed, or drawn log-uniformly from a range."""
        cfg = self.config
        tau_range = area.tau_range or (cfg.tau_range if area.tau is None else None)
        if tau_range is None:
            return np.full(area.size, cfg.tau if area.tau is None else area.tau)
        return np.exp(rng.uniform(np.log(tau_range[0]), np.log(tau_range[1]), area.size))

    def indices(self, area: str | None = None, population: str | None = None) -> np.ndarray:
        """Neuron indices of an area (all areas if None) and population ('E' or 'excitatory', 'I' or
        'inhibitory', None for both)."""
        return select_neurons(self.area, self.sign, area, population)

    def _block_density(self, to: str, pre: str) -> float:
        cfg = self.config
        default = cfg.density.within if to == pre else cfg.density.between
        return cfg.projections.get(to, {}).get(pre, default)

    def _allowed(self, to: str, pre: str) -> np.ndarray:
        """Which synapses of the (to, pre) block may exist at all."""
        rows, cols = self.area_slices[to], self.area_slices[pre]
        allowed = np.ones((rows.stop - rows.start, cols.stop - cols.start), bool)
        if to == pre and not self.config.self_connections:
            np.fill_diagonal(allowed, False)
        if to != pre and self.config.long_range == "excitatory":
            allowed[:, self.sign[cols] < 0] = False
        return allowed

    def _recurrent_mask(self, rng: np.random.Generator) -> tuple[np.ndarray, dict[tuple[str, str], float]]:
        """Draw each block's synapses: exactly round(density * allowed) of the allowed ones."""
        mask = np.zeros((self.n_neurons, self.n_neurons), bool)
        asked = {}
        for to in self.area_names:
            for pre in self.area_names:
                density = asked[to, pre] = self._block_density(to, pre)
                allowed = self._allowed(to, pre)
                candidates = np.flatnonzero(allowed)
                chosen = rng.choice(candidates, int(round(density * candidates.size)), replace=False)
                block = np.zeros(allowed.size, bool)
                block[chosen] = True
                mask[self.area_slices[to], self.area_slices[pre]] = block.reshape(allowed.shape)
        return mask, asked

    def _pick(self, rng: np.random.Generator, pool: np.ndarray, frac: float) -> np.ndarray:
        """A random ``frac`` of the neurons in ``pool`` (at least one)."""
        return rng.choice(pool, max(1, int(round(frac * pool.size))), replace=False) if pool.size else pool

    def _area_pool(self, areas: list[str]) -> np.ndarray:
        return np.concatenate([self.indices(a) for a in areas])

    def _input_mask(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        groups = cfg.input_groups or {"all": InputGroup(cfg.input_size, cfg.input_areas or [self.area_names[0]])}
        mask = np.zeros((self.n_neurons, cfg.input_size), bool)
        start = 0
        for group in groups.values():
            receivers = self._pick(rng, self._area_pool(group.areas), cfg.input_frac)
            mask[np.ix_(receivers, np.arange(start, start + group.size))] = True
            start += group.size
        return mask

    def _readout_mask(self, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        pool = self._area_pool(cfg.readout_areas or [self.area_names[-1]])
        key = f"readout_areas ({', '.join(cfg.readout_areas or [self.area_names[-1]])})"
        if cfg.readout_from == "excitatory":
            pool = pool[self.sign[pool] > 0]
            check(pool.size > 0, key, "readout_from=excitatory but these areas have no excitatory neurons")
        if not cfg.readout_overlap:
            pool = pool[~self.input_mask[pool].any(axis=1)]
            check(pool.size > 0, key, "readout_overlap=false but every candidate neuron receives input")
        mask = np.zeros((cfg.output_size, self.n_neurons), bool)
        mask[:, self._pick(rng, pool, cfg.readout_frac)] = True
        return mask

    def _rec_plasticity(self) -> np.ndarray:
        plast = self.config.plasticity
        out = np.empty((self.n_neurons, self.n_neurons), np.float32)
        for to in self.area_names:
            for pre in self.area_names:
                default = plast.within if to == pre else plast.between
                out[self.area_slices[to], self.area_slices[pre]] = plast.projections.get(to, {}).get(pre, default)
        return out

    def realized_density(self, to: str, pre: str) -> float:
        """Fraction of the allowed synapses of block (to, pre) that exist."""
        allowed = self._allowed(to, pre)
        block = self.rec_mask[self.area_slices[to], self.area_slices[pre]]
        return float(block.sum() / allowed.sum()) if allowed.any() else 0.0

    def summary(self) -> str:
        """A readable table: areas with E/I counts and tau, then every block's asked/realized density."""
        lines = [f"{self.n_neurons} neurons, {self.config.input_size} inputs, {self.config.output_size} outputs"]
        for name in self.area_names:
            idx = self.indices(name)
            n_e, n_i = int((self.sign[idx] > 0).sum()), int((self.sign[idx] < 0).sum())
            role = [r for r, m in (("input", self.input_mask[idx].any()), ("readout", self.readout_mask[:, idx].any())) if m]
            lines.append(
                f"  area {name:<10} {idx.size:>5} neurons  E {n_e:>4}  I {n_i:>4}  "
                f"tau {_span(self.tau[idx]):>6} ms  {' '.join(role)}"
            )
        lines.append("  projection (post <- pre)     asked  realized  synapses")
        for to in self.area_names:
            for pre in self.area_names:
                n = int(self.rec_mask[self.area_slices[to], self.area_slices[pre]].sum())
                lines.append(
                    f"  {to + ' <- ' + pre:<28} {self.asked_density[to, pre]:5.2f}  "
                    f"{self.realized_density(to, pre):8.3f}  {n:>8}"
                )
        return "\n".join(lines)


def _span(values: np.ndarray) -> str:
    """``100.0`` for equal values, ``52.3-480.1`` for a range."""
    low, high = values.min(), values.max()
    return f"{low:.1f}" if np.isclose(low, high) else f"{low:.1f}-{high:.1f}"


def select_neurons(area_of: np.ndarray, sign: np.ndarray, area: str | None = None, population: str | None = None) -> np.ndarray:
    """Indices of the neurons of ``area`` (all areas if None) and ``population`` ('E' or 'excitatory',
    'I' or 'inhibitory', None for both), given every neuron's area name and sign (+1 E, -1 I)."""
    keep = np.ones(len(sign), bool)
    if area is not None:
        keep &= np.asarray(area_of) == area
        if not keep.any():  # every area has neurons
            names = dict.fromkeys(np.asarray(area_of).tolist())  # declaration order: areas are contiguous
            raise ValueError(f"area: unknown area {area!r}; areas: {', '.join(names)}")
    if population is not None:
        if population not in POPULATIONS:
            raise ValueError(f"population: must be 'E', 'I', 'excitatory' or 'inhibitory', got {population!r}")
        keep &= np.asarray(sign) == POPULATIONS[population]
    return np.flatnonzero(keep)
