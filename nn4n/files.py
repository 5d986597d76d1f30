"""Files written whole or not at all: a temporary file, flushed to disk, then renamed over the target."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Callable


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, fsync it, then rename it over ``path``: a crash
    leaves the old file or the new one, never half of one, and no temporary file."""
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, values: Any) -> None:
    """``values`` as indented JSON, atomically."""
    atomic_write(path, lambda f: f.write(json.dumps(values, indent=2).encode()))
