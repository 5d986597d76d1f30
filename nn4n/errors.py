"""The two errors a run reports in one line: a bad configuration value, and training that had to stop."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


class TrainingError(RuntimeError):
    """Training stopped (e.g. diverged); the message is one line, the last good checkpoint is kept."""

    exit_code = 3
