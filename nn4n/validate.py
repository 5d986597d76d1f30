"""Value checks shared by every schema: each raises ``ValueError("<key>: <what is wrong>")``."""
from __future__ import annotations

import math
from typing import Any


def check(ok: bool, key: str, message: str) -> None:
    """Raise ``ValueError("key: message")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{key}: {message}")


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): YAML reads ``1e2`` as a string, and ``.inf`` passes ``> 0``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, key: str) -> None:
    check(is_number(value), key, f"must be a finite number, got {value!r}")


def positive(value: Any, key: str) -> None:
    check(is_number(value) and value > 0, key, f"must be a finite number > 0, got {value!r}")


def non_negative(value: Any, key: str, zero: str = "") -> None:
    """``value >= 0``; ``zero`` says what 0 means, e.g. ``"0 = off"``."""
    check(is_number(value) and value >= 0, key, f"must be a finite number >= 0{f' ({zero})' if zero else ''}, got {value!r}")


def integer(value: Any, key: str) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and value > 0, key, f"must be an integer > 0, got {value!r}")


def unit(value: Any, key: str) -> None:
    check(is_number(value) and 0.0 <= value <= 1.0, key, f"must be in [0, 1], got {value!r}")


def fraction(value: Any, key: str) -> None:
    check(is_number(value) and 0.0 < value <= 1.0, key, f"must be in (0, 1], got {value!r}")


def choice(value: Any, allowed: tuple[str, ...], key: str) -> None:
    check(value in allowed, key, f"must be one of {', '.join(allowed)}, got {value!r}")


def seed(value: Any, key: str) -> None:
    """A seed numpy and torch both take: an integer in [0, 2**32)."""
    check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32, key,
          f"must be an integer in [0, 2**32), got {value!r}")
