"""K independent networks of one architecture, trained together through a leading network dimension.

Each network has its own seed (so its own masks, initial weights and noise), its own parameters
and, in training, its own trials. They run as one network with stacked weights (``Weights.stack``):
one batched time loop and batched input and readout products, so that on a GPU one kernel launch
serves all K networks instead of K.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .model import CTRNN, Activity, Weights
from .perturb import Effect, Perturbation
from .structure import NetworkConfig


def network_seed(seed: int, index: int) -> int:
    """Seed of network ``index`` of an ensemble seeded ``seed``; network 0 keeps ``seed`` itself."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)


class Ensemble(nn.Module):
    """``n_networks`` :class:`CTRNN`s of one config, network ``k`` seeded ``network_seed(seed, k)``.

    ``forward(inputs)`` takes ``(K, batch, time, input_size)`` (network k reads ``inputs[k]``) and
    returns outputs ``(K, batch, time, output_size)`` and one :class:`Activity` per network.
    ``ensemble.networks[k]`` is a plain CTRNN: save it, analyse it, run it on its own.
    """

    def __init__(self, config: NetworkConfig | Mapping[str, Any], n_networks: int, engine: str = "reference") -> None:
        super().__init__()
        if not isinstance(config, NetworkConfig):
            config = NetworkConfig.from_dict(config)
        if not isinstance(n_networks, int) or isinstance(n_networks, bool) or n_networks < 1:
            raise ValueError(f"n_networks: must be an integer >= 1, got {n_networks!r}")
        self.networks = nn.ModuleList(
            CTRNN(dataclasses.replace(config, seed=network_seed(config.seed, k)), engine) for k in range(n_networks)
        )
        self.engine = engine

    def __len__(self) -> int:
        return len(self.networks)

    def forward(
        self, inputs: torch.Tensor, noise: bool | None = None, return_preact: bool = False,
        perturb: Iterable[Perturbation | Mapping[str, Any]] | None = None, epochs: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[torch.Tensor, list[Activity]]:
        """``perturb`` and ``epochs`` as in :meth:`CTRNN.forward`, on every network (each its own lesions)."""
        nets = list(self.networks)
        if inputs.dim() == 4 and inputs.shape[0] != len(nets):  # other shapes: run() names them
            raise ValueError(f"inputs: leading dimension {inputs.shape[0]} is not the number of networks {len(nets)}")
        effects = [net.effect(perturb, inputs, epochs) for net in nets] if perturb is not None else None
        if len(nets) == 1:  # exactly the plain network's computation (unbatched matrix products)
            outputs, activity = nets[0](inputs[0], noise=noise, return_preact=return_preact,
                                        perturb=effects[0] if effects else None)
            return outputs[None], [activity]
        weights = Weights.stack([net.effective_weights() for net in nets])
        effect = Effect.stack(effects) if effects else None
        outputs, rates, preact = nets[0].run(weights, inputs, noise=noise, return_preact=return_preact, effect=effect)
        activities = [
            Activity(rates[k], net.structure, None if preact is None else preact[k]) for k, net in enumerate(nets)
        ]
        return outputs, activities
