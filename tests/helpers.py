"""Small helpers shared by the tests."""
from __future__ import annotations

import copy


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in recursively (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
