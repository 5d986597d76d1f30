"""The torch device a name asks for, checked against this machine before anything is put there."""
from __future__ import annotations

import torch


def available_device(name: str | torch.device, key: str) -> torch.device:
    """``name`` as a device (``auto``: CUDA where there is one, else the CPU); a one-line ValueError
    naming ``key`` when this machine lacks it (torch's own error comes later and says less)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{key}: {name!r} is not a device (cpu, cuda, cuda:N, mps or auto)") from None
    count = {"cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}.get(device.type, 1)
    if (device.index or 0) >= count:
        what = f"{count} {device.type.upper()} device(s)" if count else f"{device.type.upper()} is not available"
        raise ValueError(f"{key}: {str(name)!r} requested but {what}; use auto or cpu")
    return device
