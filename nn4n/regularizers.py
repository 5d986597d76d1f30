"""Regularization terms named in ``train.reg``; each returns a weighted scalar logged on its own."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .validate import choice, non_negative

if TYPE_CHECKING:  # the schema above is read by config checks, before torch loads
    import torch

    from .model import CTRNN, Activity

MATRICES = ("w_in", "w_rec", "w_out")


@dataclass
class Regularizers:
    """Weights of the regularization terms (``train.reg``; 0 = off); each term is logged as its own loss."""

    rate_l1: float = 0.0
    rate_l2: float = 0.0
    rate_l1_area: dict[str, float] = field(default_factory=dict)
    rate_l2_area: dict[str, float] = field(default_factory=dict)
    rate_sd: float = 0.0
    rate_cv: float = 0.0
    rate_mean_abs_dev: float = 0.0
    rate_max_abs_dev: float = 0.0
    weight_l1: dict[str, float] = field(default_factory=dict)
    weight_fro: dict[str, float] = field(default_factory=dict)
    state_prediction: float = 0.0
    entropy: float = 0.0

    def __post_init__(self) -> None:
        for key, value in vars(self).items():
            for sub, weight in (value.items() if isinstance(value, dict) else [("", value)]):
                non_negative(weight, f"train.reg.{key}" + (f".{sub}" if sub else ""))
        for key in ("weight_l1", "weight_fro"):
            for matrix in getattr(self, key):
                choice(matrix, MATRICES, f"train.reg.{key}.{matrix}")


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, T, n) over the valid (B, T) steps and all columns."""
    return (x * valid[..., None]).sum() / (valid.sum() * x.shape[-1]).clamp_min(1)


def regularization(reg: Regularizers, model: CTRNN, activity: Activity, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """The active (non-zero weight) terms for this batch; ``valid`` (B, T) marks steps inside a trial.

    Rates: L1 / L2 overall and per area; spread of per-neuron mean rates (sd, cv, mean and max
    absolute deviation); ``state_prediction`` = mean squared change of rates between steps;
    ``entropy`` = log N - entropy of the distribution of mean rates over neurons (0 when uniform).
    Weights: mean |w| (L1) and Frobenius norm of the effective ``w_in`` / ``w_rec`` / ``w_out``.
    """
    rates, valid = activity.rates, valid.to(activity.rates.dtype)
    terms: dict[str, torch.Tensor] = {}

    def per_neuron_mean() -> torch.Tensor:
        return (rates * valid[..., None]).sum((0, 1)) / valid.sum().clamp_min(1)

    if reg.rate_l1:
        terms["rate_l1"] = reg.rate_l1 * _masked_mean(rates.abs(), valid)
    if reg.rate_l2:
        terms["rate_l2"] = reg.rate_l2 * _masked_mean(rates.square(), valid)
    for area, weight in reg.rate_l1_area.items():
        terms[f"rate_l1/{area}"] = weight * _masked_mean(activity.area(area).abs(), valid)
    for area, weight in reg.rate_l2_area.items():
        terms[f"rate_l2/{area}"] = weight * _masked_mean(activity.area(area).square(), valid)
    if reg.rate_sd or reg.rate_cv or reg.rate_mean_abs_dev or reg.rate_max_abs_dev or reg.entropy:
        mean = per_neuron_mean()
        deviation = (mean - mean.mean()).abs()
        if reg.rate_sd:
            terms["rate_sd"] = reg.rate_sd * mean.std()
        if reg.rate_cv:
            terms["rate_cv"] = reg.rate_cv * mean.std() / mean.mean().abs().clamp_min(1e-6)
        if reg.rate_mean_abs_dev:
            terms["rate_mean_abs_dev"] = reg.rate_mean_abs_dev * deviation.mean()
        if reg.rate_max_abs_dev:
            terms["rate_max_abs_dev"] = reg.rate_max_abs_dev * deviation.max()
        if reg.entropy:
            p = mean.abs() / mean.abs().sum().clamp_min(1e-12)
            terms["entropy"] = reg.entropy * (math.log(p.numel()) + (p * p.clamp_min(1e-12).log()).sum())
    if reg.state_prediction:
        both = valid[:, 1:] * valid[:, :-1]
        terms["state_prediction"] = reg.state_prediction * _masked_mean((rates[:, 1:] - rates[:, :-1]).square(), both)
    for name, weight in reg.weight_l1.items():
        w = getattr(model, name)
        mask = model.parametrizations[name][0].mask
        terms[f"weight_l1/{name}"] = weight * w.abs().sum() / mask.sum().clamp_min(1)
    for name, weight in reg.weight_fro.items():
        terms[f"weight_fro/{name}"] = weight * getattr(model, name).norm()
    return terms
