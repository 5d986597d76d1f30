"""The time loop ``v <- v + a (W r + drive_t - v)``, ``r = f(v)``: its engines and its rate functions.

Names are listed here without importing torch, so that configs are checked before torch loads. Each engine
is a module of this package (``reference``, ``fused``, ``triton``) whose ``run`` takes the input drive of
all steps at once and returns the rates after each step, with the values and gradients of ``reference``;
each rate function is an entry of :data:`nn4n.recurrence.rates.RATES`.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

ACTIVATIONS = ("relu", "tanh", "softplus", "sigmoid", "retanh")  # the Triton kernels branch on the position
ENGINES = ("reference", "fused", "triton")


@functools.cache
def installed_engines() -> tuple[str, ...]:
    """The engines this installation can run (``triton`` needs the triton package; CUDA builds of torch bring it)."""
    return tuple(name for name in ENGINES if name != "triton" or importlib.util.find_spec("triton") is not None)


def engine(name: str) -> Callable:
    """The ``run`` function of engine ``name`` (its module is imported on first use)."""
    if name not in installed_engines():
        hint = " (the triton engine needs the triton package: pip install 'nn4n[triton]')" if name == "triton" else ""
        raise ValueError(f"engine: unknown engine {name!r}; engines here: {', '.join(installed_engines())}{hint}")
    return importlib.import_module(f"{__name__}.{name}").run


def triton_runs_on(device: torch.device) -> bool:
    """Whether the triton engine can run on ``device``: CUDA, or anything under ``TRITON_INTERPRET=1``."""
    return "triton" in installed_engines() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def engine_for(setting: str, device: torch.device, key: str = "train.engine") -> str:
    """The engine ``setting`` names on ``device`` (``auto``: ``fused``); a one-line ValueError where it cannot run."""
    if setting == "auto":
        return "fused"
    if setting not in installed_engines():
        raise ValueError(f"{key}: {setting} needs the triton package (pip install 'nn4n[triton]')")
    if setting == "triton" and not triton_runs_on(device):
        raise ValueError(f"{key}: triton runs on CUDA, not on {device}; use auto or fused")
    return setting
