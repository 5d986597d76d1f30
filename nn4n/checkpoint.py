"""Training checkpoints: written atomically, read without unpickling arbitrary objects."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_write
from .machine import available_device

FORMAT = "nn4n.checkpoint/2"
MODEL_FORMAT = "nn4n.CTRNN/1"
_KINDS = {FORMAT: ("training checkpoint", "nn4n.analysis.load_run(run_dir, checkpoint='last')"),
          MODEL_FORMAT: ("model file", "CTRNN.load")}  # format -> (what it is, what reads it)


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop touches (task data is a pure function of the step)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as a training checkpoint, atomically."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_nn4n_file(path: str | Path, fmt: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file of format ``fmt`` with ``weights_only=True``: a file that needs arbitrary code is refused,
    and so is any other file, with a message that says what it is if it is another nn4n file. Tensors go to
    ``map_location`` (``auto``: CUDA where there is one), which must exist on this machine."""
    what = _KINDS[fmt][0]
    map_location = available_device(map_location, "map_location")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:  # missing, a directory, no permission: as the file system says
        raise
    except Exception as err:  # torch raises UnpicklingError (and others) for unsafe, corrupt or foreign files
        code = "unsupported global" in str(err).lower()  # torch's words for a pickled callable it refused
        why = "it holds objects that would run code" if code else "unreadable: truncated, corrupt or not written by torch.save"
        raise ValueError(f"{path}: refused to load: not a plain-tensor nn4n {what}: {why} ({type(err).__name__})") from None
    found = state.get("format") if isinstance(state, dict) else None
    if found != fmt:
        if found in _KINDS:
            other = f"; it is an nn4n {_KINDS[found][0]}, which {_KINDS[found][1]} reads"
        elif isinstance(found, str) and found.split("/")[0] == fmt.split("/")[0]:
            other = f" this version reads: its format is {found}, this nn4n reads {fmt} (written by another nn4n version)"
        else:
            other = ""
        raise ValueError(f"{path}: not an nn4n {what}{other}")
    return state


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint (see :func:`load_nn4n_file`)."""
    return load_nn4n_file(path, FORMAT, map_location)
