"""The continuous-time rate RNN: ``v <- (1-a) v + a (W_rec r + W_in u + b) + noise``, ``r = f(v)``.

Constraints are reparametrizations (``torch.nn.utils.parametrize``), not clamps: the module stores
raw weights and every read of ``model.w_rec`` (or ``w_in``, ``w_out``) returns the effective weight
``mask * sign * |raw|`` (``mask * raw`` for unconstrained neurons). Dale's law and sparsity therefore
hold exactly at every step for any optimizer, weight decay included, and the forward pass,
checkpoints' consumers and logs all see the same effective matrices. ``|raw|`` rather than
``relu(raw)`` keeps gradients alive: a synapse pushed through zero comes back instead of dying.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from . import recurrence
from .checkpoint import MODEL_FORMAT, load_nn4n_file
from .files import atomic_write
from .linear import linear
from .perturb import Effect, Perturbation
from .perturb import effect as perturbation_effect
from .recurrence.step import time_major
from .structure import NetworkConfig, Structure

TAU_MARGIN = 1e-3  # a learned tau stays >= dt * (1 + TAU_MARGIN): dt/tau < 1 even in float32
SILENT_RATE = 1e-3  # a neuron whose mean rate is below this is counted as silent


class SignedMask(nn.Module):
    """Effective weight from a raw one: zero where ``mask`` is zero, sign of the presynaptic neuron.

    ``sign`` has one entry per column (presynaptic neuron or input feature): +1 / -1 force the sign
    of the whole column, 0 leaves it free.
    """

    def __init__(self, mask: np.ndarray, sign: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mask", torch.as_tensor(mask, dtype=torch.float32))
        self.register_buffer("sign", torch.as_tensor(sign, dtype=torch.float32))
        self.register_buffer("signed", torch.as_tensor(sign != 0))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.mask * torch.where(self.signed, self.sign * raw.abs(), raw)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.where(self.signed, weight.abs(), weight)


@dataclass
class Weights:
    """Effective parameters of one network, or of K networks stacked along a leading dimension."""

    w_in: torch.Tensor  # (neurons, inputs)
    w_rec: torch.Tensor  # (neurons, neurons) [post, pre]
    w_out: torch.Tensor  # (outputs, neurons)
    alpha: torch.Tensor  # (neurons,): dt / tau
    noise_std: torch.Tensor  # (neurons,)
    b_rec: torch.Tensor | None
    b_out: torch.Tensor | None
    h0: torch.Tensor | None

    @classmethod
    def stack(cls, networks: list[Weights]) -> Weights:
        """K networks' weights as one, each field with a leading dimension K."""
        fields = {f.name: [getattr(w, f.name) for w in networks] for f in dataclasses.fields(cls)}
        return cls(**{name: None if parts[0] is None else torch.stack(parts) for name, parts in fields.items()})


def _check_inputs(inputs: torch.Tensor, h0: torch.Tensor | None, w: Weights, n_features: int) -> None:
    """One-line errors for inputs (and h0) that do not fit the network, before torch's own."""
    stacked = w.w_rec.dim() == 3
    shape = "(networks, batch, time, features)" if stacked else "(batch, time, features)"
    if inputs.dim() != 3 + stacked or inputs.shape[-1] != n_features or inputs.shape[-2] == 0:
        raise ValueError(f"inputs: must be {shape} with {n_features} features and at least one time step, "
                         f"got shape {tuple(inputs.shape)}")
    if inputs.dtype != w.w_rec.dtype:
        raise ValueError(f"inputs: dtype {inputs.dtype} differs from the network's {w.w_rec.dtype}")
    want = (*inputs.shape[:-2], w.w_rec.shape[-1])
    if h0 is not None and tuple(h0.shape) != want:
        raise ValueError(f"h0: must have shape {want} (one state per trial), got {tuple(h0.shape)}")
    if h0 is not None and h0.dtype != w.w_rec.dtype:
        raise ValueError(f"h0: dtype {h0.dtype} differs from the network's {w.w_rec.dtype}")


def _per_neuron(x: torch.Tensor) -> torch.Tensor:
    """A per-neuron vector (N,) or stack (K, N) shaped to broadcast over (B, T, N) or (K, B, T, N)."""
    return x if x.dim() == 1 else x[:, None, None]


@dataclass
class Activity:
    """Hidden activity of a batch, with views by area and E/I population (no index arithmetic)."""

    rates: torch.Tensor  # (batch, time, neurons), after each update
    structure: Structure
    preact: torch.Tensor | None = None  # membrane potentials v, same shape, on request

    def select(self, area: str | None = None, population: str | None = None) -> torch.Tensor:
        """Rates of one area and/or population ('E'/'excitatory', 'I'/'inhibitory'): ``(batch, time, selected neurons)``."""
        idx = torch.as_tensor(self.structure.indices(area, population), device=self.rates.device)
        return self.rates.index_select(-1, idx)

    def area(self, name: str) -> torch.Tensor:
        return self.select(area=name)

    def excitatory(self, area: str | None = None) -> torch.Tensor:
        return self.select(area, "E")

    def inhibitory(self, area: str | None = None) -> torch.Tensor:
        return self.select(area, "I")

    def by_area(self) -> dict[str, torch.Tensor]:
        return {name: self.area(name) for name in self.structure.area_names}

    def populations(self) -> list[tuple[str, str | None]]:
        """(area, population) pairs present in the network: 'E' and 'I', or None where neurons are unconstrained."""
        st, pairs = self.structure, []
        for area in st.area_names:
            signs = set(st.sign[st.indices(area)].tolist())
            pairs += [(area, p) for p, s in (("E", 1), ("I", -1)) if s in signs] or [(area, None)]
        return pairs

    @torch.no_grad()
    def stats(self, valid: torch.Tensor, ceiling: float | None = None) -> dict[str, float]:
        """Per area and population (``PFC/E``) over the ``valid`` (batch, time) steps: the mean rate
        (``rates/``), the fraction of neurons whose mean rate is below ``SILENT_RATE`` (``silent/``) and,
        for a rate function bounded by ``ceiling``, the fraction of rate samples within 10% of it
        (``saturated/``)."""
        weight = valid.to(self.rates.dtype)[..., None]
        steps = weight.sum().clamp_min(1)
        mean = (self.rates * weight).sum((0, 1)) / steps
        near = (self.rates.abs() >= 0.9 * ceiling).to(self.rates.dtype) if ceiling is not None else None
        near = (near * weight).sum((0, 1)) / steps if near is not None else None
        out = {}
        for area, pop in self.populations():
            idx = torch.as_tensor(self.structure.indices(area, pop), device=self.rates.device)
            name = area + (f"/{pop}" if pop else "")
            out[f"rates/{name}"] = mean[idx].mean().item()
            out[f"silent/{name}"] = (mean[idx] < SILENT_RATE).float().mean().item()
            if near is not None:
                out[f"saturated/{name}"] = near[idx].mean().item()
        return out


class CTRNN(nn.Module):
    """Leaky rate network built from a :class:`NetworkConfig` (or a dict of the same keys).

    ``forward(inputs)`` takes ``(batch, time, input_size)`` and returns ``(outputs, Activity)`` with
    outputs ``(batch, time, output_size)``. Noise is on in training mode and off in eval mode unless
    ``noise=`` says otherwise.
    """

    def __init__(self, config: NetworkConfig | Mapping[str, Any], engine: str = "reference") -> None:
        super().__init__()
        if not isinstance(config, NetworkConfig):
            config = NetworkConfig.from_dict(config)
        self._run_engine = recurrence.engine(engine)
        self.config, self.engine = config, engine
        self._plasticity_of: dict[int, object] = {}  # id(optimizer) -> the apply_plasticity call in force
        self.structure = st = Structure(config)
        n = st.n_neurons
        self.register_buffer("sign", torch.as_tensor(st.sign, dtype=torch.float32))
        self.register_buffer("noise_std", torch.as_tensor(st.noise))
        self._rec_noise = bool((st.noise > 0).any())  # known on the host: no device sync per forward
        tau = torch.as_tensor(st.tau)
        if config.learn_tau:  # tau = dt (1 + margin) + exp(raw): dt/tau in (0, 1), steps relative in tau
            floor = config.dt * (1 + TAU_MARGIN)
            self.tau_raw = nn.Parameter(torch.log((tau - floor).clamp_min(1e-3)))
        else:
            self.register_buffer("tau_fixed", tau)
        self.h0 = nn.Parameter(torch.zeros(n)) if config.learn_h0 else None
        self.b_rec = nn.Parameter(torch.zeros(n)) if config.rec_bias else None
        self.b_out = nn.Parameter(torch.zeros(config.output_size)) if config.out_bias else None
        self.w_in = nn.Parameter(torch.empty(n, config.input_size))
        self.w_rec = nn.Parameter(torch.empty(n, n))
        self.w_out = nn.Parameter(torch.empty(config.output_size, n))
        parametrize.register_parametrization(self, "w_in", SignedMask(st.input_mask, np.zeros(config.input_size)))
        parametrize.register_parametrization(self, "w_rec", SignedMask(st.rec_mask, st.sign))
        parametrize.register_parametrization(self, "w_out", SignedMask(st.readout_mask, st.sign))
        for name, plast in (("w_in", st.input_plasticity), ("w_rec", st.rec_plasticity), ("w_out", st.readout_plasticity)):
            self.register_buffer(f"plasticity_{name}", torch.as_tensor(plast))
        self.reset_parameters()

    # ----------------------------------------------------------------------------- parameters
    def reset_parameters(self) -> None:
        """Initialise weights from ``config.seed`` (see :class:`~nn4n.structure.Init`)."""
        cfg, st = self.config, self.structure
        rng = np.random.default_rng([cfg.seed, 1])

        def signed(shape: tuple[int, int], mask: np.ndarray, col_sign: np.ndarray) -> np.ndarray:
            if cfg.init.dist == "gamma":
                mag = rng.gamma(2.0, 0.5, shape)
            elif cfg.init.dist == "uniform":
                mag = rng.uniform(0.0, 1.0, shape)
            else:
                mag = np.abs(rng.standard_normal(shape))
            free_sign = rng.choice([-1.0, 1.0], shape)
            return mask * mag * np.where(col_sign != 0, col_sign, free_sign)

        w = signed(st.rec_mask.shape, st.rec_mask, st.sign)
        exc, inh = st.sign > 0, st.sign < 0
        if cfg.init.balance == "neuron":  # each neuron's inhibition equals its excitation (rows with both)
            excitation, inhibition = w[:, exc].sum(1), -w[:, inh].sum(1)
            both = (excitation > 0) & (inhibition > 0)
            w[np.ix_(both, inh)] *= (excitation[both] / inhibition[both])[:, None]
        elif w[:, inh].any() and w[:, exc].any():  # total inhibition equals total excitation
            w[:, inh] *= w[:, exc].sum() / -w[:, inh].sum()
        radius = np.abs(np.linalg.eigvals(w)).max() if w.any() else 0.0
        if radius > 0 and cfg.init.spectral_radius > 0:
            w *= cfg.init.spectral_radius / radius
        w_in = signed(st.input_mask.shape, st.input_mask, np.zeros(cfg.input_size))
        w_out = signed(st.readout_mask.shape, st.readout_mask, st.sign)
        n_read = max(1, int(st.readout_mask.any(0).sum()))
        with torch.no_grad():
            self.w_rec = torch.as_tensor(w, dtype=torch.float32)
            self.w_in = torch.as_tensor(w_in * cfg.init.input_scale, dtype=torch.float32)
            self.w_out = torch.as_tensor(w_out * cfg.init.readout_scale / math.sqrt(n_read), dtype=torch.float32)

    def extra_repr(self) -> str:
        st, cfg = self.structure, self.config
        areas = ", ".join(f"{name} {len(st.indices(name))}" for name in st.area_names)
        return f"{st.n_neurons} neurons ({areas}), inputs={cfg.input_size}, outputs={cfg.output_size}, {cfg.activation}, engine={self.engine}"

    @property
    def tau(self) -> torch.Tensor:
        """Time constant of every neuron (ms); learned: ``dt (1 + TAU_MARGIN) + exp(tau_raw)``.

        The log scale lets an optimizer step change tau by a fraction of itself (Adam at lr 0.01:
        ~1% per step) instead of by a fixed number of ms. The margin keeps ``tau > dt`` once rounded
        to float32, where ``dt + exp(raw)`` would round to ``dt`` for a raw value far below zero.
        """
        if self.config.learn_tau:
            return self.config.dt * (1 + TAU_MARGIN) + torch.exp(self.tau_raw)
        return self.tau_fixed

    @property
    def alpha(self) -> torch.Tensor:
        """``dt / tau`` per neuron, in (0, 1]."""
        return self.config.dt / self.tau

    def weights(self) -> dict[str, torch.Tensor]:
        """Effective (masked, signed) weights, detached: ``w_in``, ``w_rec`` [post, pre], ``w_out``."""
        return {name: getattr(self, name).detach() for name in ("w_in", "w_rec", "w_out")}

    def spectral_radius(self) -> float:
        return float(torch.linalg.eigvals(self.w_rec.detach().double().cpu()).abs().max())

    def apply_plasticity(self, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        """Scale every update of ``optimizer`` per synapse by its plasticity (0 = frozen).

        The step is rescaled after the optimizer has computed it (``new = old + p * (new - old)``),
        so the ratio holds for Adam, AdamW (decay included) and SGD alike, unlike scaling gradients.
        Calling it again for the same optimizer replaces the earlier call (the scale is never applied twice).
        """
        scaled = {
            self.parametrizations[name].original: getattr(self, f"plasticity_{name}")
            for name in ("w_in", "w_rec", "w_out")
            if bool((getattr(self, f"plasticity_{name}") < 1).any())
        }
        before: dict[torch.Tensor, torch.Tensor] = {}
        self._plasticity_of[id(optimizer)] = call = object()

        def save(*_: Any) -> None:
            if self._plasticity_of.get(id(optimizer)) is call:  # not replaced by a later call
                before.update({p: p.detach().clone() for p in scaled})

        def rescale(*_: Any) -> None:
            with torch.no_grad():
                for p, old in before.items():
                    p.copy_(torch.lerp(old, p, scaled[p]))
            before.clear()

        return [optimizer.register_step_pre_hook(save), optimizer.register_step_post_hook(rescale)]

    # ----------------------------------------------------------------------------- dynamics
    def effective_weights(self) -> Weights:
        """The effective parameters the dynamics use (with autograd); see :meth:`run`."""
        return Weights(self.w_in, self.w_rec, self.w_out, self.alpha.expand(self.structure.n_neurons),
                       self.noise_std, self.b_rec, self.b_out, self.h0)

    def forward(
        self,
        inputs: torch.Tensor,
        h0: torch.Tensor | None = None,
        noise: bool | None = None,
        return_preact: bool = False,
        perturb: Iterable[Perturbation | Mapping[str, Any]] | Effect | None = None,
        epochs: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[torch.Tensor, Activity]:
        """Run ``inputs`` (batch, time, input_size) from ``h0`` (batch, neurons) or the resting state.

        ``perturb``: perturbations (:mod:`nn4n.perturb`: silence, stimulate, lesion) applied in this run;
        ``epochs`` (``TrialBatch.epochs``) places windows given as task periods. The fused and triton engines
        run perturbations without gradients (``torch.no_grad()``); reference differentiates through them.
        """
        effect = self.effect(perturb, inputs, epochs) if perturb is not None else None
        outputs, rates, preact = self.run(self.effective_weights(), inputs, h0, noise, return_preact, effect)
        return outputs, Activity(rates, self.structure, preact)

    def effect(self, perturb: Iterable[Perturbation | Mapping[str, Any]] | Effect, inputs: torch.Tensor,
               epochs: Mapping[str, np.ndarray] | None = None) -> Effect:
        """What ``perturb`` does to this network on ``inputs`` (``(..., batch, time, features)``)."""
        if isinstance(perturb, Effect):
            return perturb
        return perturbation_effect(perturb, self.structure, inputs.shape[-3], inputs.shape[-2], epochs, like=inputs)

    def run(
        self,
        w: Weights,
        inputs: torch.Tensor,
        h0: torch.Tensor | None = None,
        noise: bool | None = None,
        return_preact: bool = False,
        effect: Effect | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Outputs, rates and (on request) preactivations of this architecture with weights ``w``, perturbed
        by ``effect`` (:meth:`effect`).

        ``w`` is :meth:`effective_weights` or K networks' stacked (:meth:`Weights.stack`); then
        ``inputs`` (K, batch, time, input_size) and every result have the same leading K.
        """
        _check_inputs(inputs, h0, w, self.config.input_size)
        if effect is not None:  # lesions
            w = dataclasses.replace(w, w_rec=w.w_rec if effect.w_rec is None else w.w_rec * effect.w_rec,
                                    w_out=w.w_out if effect.w_out is None else w.w_out * effect.w_out.unsqueeze(-2))
        noisy = self.training if noise is None else noise
        alpha = _per_neuron(w.alpha)
        u = time_major(inputs)  # the drive is made time-major: each step of the loop is one contiguous block
        drive = linear(u, w.w_in, w.b_rec)
        # Both noises are white in continuous time, discretised so that their effect on v does not
        # change with dt: a * (drive + sqrt(2/a) sigma xi) = a * drive + sqrt(2a) sigma xi.
        # Input noise is on the input features (shared by every neuron that receives a feature),
        # as in Song et al. 2016 (u + sqrt(2/a) sigma_in xi), with each neuron's own a.
        if noisy and self.config.noise.input > 0:
            shared = linear(torch.randn_like(u) * self.config.noise.input, w.w_in, None)
            drive = torch.addcmul(drive, shared, torch.sqrt(2.0 / alpha))
        if noisy and self._rec_noise:
            drive = torch.addcmul(drive, torch.randn_like(drive), _per_neuron(w.noise_std) * torch.sqrt(2.0 / alpha))
        if effect is not None and effect.current is not None:
            drive = drive + time_major(effect.current)
        if h0 is None:
            rest = w.h0 if w.h0 is not None else drive.new_zeros(w.alpha.shape)
            h0 = rest.unsqueeze(-2).expand(*rest.shape[:-1], inputs.shape[-3], -1)
        keep = effect.keep if effect is not None else None
        rates, preact = self._run_engine(time_major(drive), h0, w.w_rec, w.alpha, self.config.activation, return_preact, keep)
        return time_major(linear(time_major(rates), w.w_out, w.b_out)), rates, preact

    # ----------------------------------------------------------------------------- files
    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (multiprocessing, ``torch.save(net)``) as config, engine, mode and tensors: a module with
        parametrizations does not pickle otherwise."""
        frozen = [name for name, p in self.named_parameters() if not p.requires_grad]
        return _unpickle, (self.config.to_dict(), self.engine, self.training, frozen, self.state_dict())

    def save(self, path: str | Path) -> None:
        """Write config and weights to ``path`` (atomically: temporary file, then rename)."""
        blob = {"format": MODEL_FORMAT, "config": self.config.to_dict(), "state_dict": self.state_dict()}
        atomic_write(Path(path), lambda f: torch.save(blob, f))

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu", engine: str = "reference") -> CTRNN:
        """Rebuild a saved model on ``map_location`` (``auto``: CUDA where there is one); only tensors and
        plain values are read (``weights_only=True``)."""
        blob = load_nn4n_file(path, MODEL_FORMAT, map_location)  # on map_location, checked there
        return cls._from_state(blob["config"], blob["state_dict"], engine)

    @classmethod
    def _from_state(cls, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], engine: str) -> CTRNN:
        """The network of ``config`` holding ``state``, on the device and in the dtype of its tensors."""
        net = cls(NetworkConfig.from_dict(config), engine)
        like = state["parametrizations.w_rec.original"]
        net.to(like.device, like.dtype).load_state_dict(state)
        return net


def _unpickle(config: dict[str, Any], engine: str, training: bool, frozen: list[str], state: dict[str, torch.Tensor]) -> CTRNN:
    """The network :meth:`CTRNN.__reduce__` pickled, as it was."""
    net = CTRNN._from_state(config, state, engine)
    for name, p in net.named_parameters():
        p.requires_grad_(name not in frozen)
    return net.train(training)
