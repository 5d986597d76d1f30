"""nn4n: biologically plausible recurrent networks (E/I, multi-area CTRNNs) for neuroscience."""
from __future__ import annotations

import importlib
from typing import Any

from .structure import Area, Density, Init, InputGroup, NetworkConfig, Noise, Plasticity, Structure

_TORCH_PARTS = {"CTRNN": "model", "Activity": "model", "Ensemble": "ensemble"}  # imported on first use

__all__ = ["CTRNN", "Activity", "Area", "Density", "Ensemble", "Init", "InputGroup", "NetworkConfig", "Noise",
           "Plasticity", "Structure"]


def __getattr__(name: str) -> Any:
    """``nn4n.CTRNN`` and the other torch modules load torch on first use, so ``nn4n-train --help`` starts fast."""
    if name in _TORCH_PARTS:
        return getattr(importlib.import_module(f".{_TORCH_PARTS[name]}", __name__), name)
    raise AttributeError(f"module 'nn4n' has no attribute {name!r}")
