"""nn4n: biologically plausible recurrent networks (E/I, multi-area CTRNNs) for neuroscience."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .structure import Area, Density, Init, InputGroup, NetworkConfig, Noise, Plasticity, Structure

_TORCH_PARTS = {"CTRNN": "model", "Activity": "model", "Ensemble": "ensemble"}  # imported on first use

__all__ = ["CTRNN", "Activity", "Area", "Density", "Ensemble", "Init", "InputGroup", "NetworkConfig", "Noise",
           "Plasticity", "Structure"]


def __getattr__(name: str) -> Any:
    """``nn4n.CTRNN`` and the other torch parts, and submodules (``nn4n.analysis``), load on first use,
    so that ``nn4n-train --help`` starts without torch."""
    if name in _TORCH_PARTS:
        return getattr(importlib.import_module(f".{_TORCH_PARTS[name]}", __name__), name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'nn4n' has no attribute {name!r}")
