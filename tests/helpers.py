"""Small helpers shared by the tests."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest

from nn4n.monitor import HPARAMS_RUN

# the rate penalty and reaction loss before 2026-12-07: tests that state a trained network's behaviour (its fixed
# points, what silencing an area does) train with them, the behaviour they were measured on
PREVIOUS_DEFAULT = ("train.reg.rate_l2=0.01", "task.penalize_guess=false")


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in recursively (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def hparams_session(tensorboard_dir: Path) -> tuple[dict[str, Any], dict[str, list[tuple[int, float]]]]:
    """A run's HParams session as TensorBoard reads it: the hyperparameters of its session record and
    every metric (the held-out scores, ``eval/accuracy`` say) as (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(tensorboard_dir / HPARAMS_RUN), size_guidance={"scalars": 0}).Reload()
    info = metadata.parse_session_start_info_plugin_data(acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG])
    params = {k: v.number_value if v.HasField("number_value") else v.string_value if v.HasField("string_value") else v.bool_value
              for k, v in info.hparams.items()}
    metrics = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return params, metrics


def nn4n_train_in_process(argv: list[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> int:
    """``nn4n-train *argv`` run in this process from ``cwd``: its exit status."""
    from nn4n import cli

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["nn4n-train", *argv])
    try:
        cli.main()
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def assert_batches_equal(a: Any, b: Any) -> None:
    """Two TrialBatches hold the same trials, field by field."""
    import numpy as np
    import torch

    for field in ("inputs", "targets", "mask", "window", "lengths"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    for x, y in ((a.conditions, b.conditions), (a.epochs, b.epochs)):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def nn4n_analyze(*args: str, cwd: Path) -> "subprocess.CompletedProcess":
    """``nn4n-analyze ARGS`` in a subprocess, from ``cwd``."""
    import subprocess

    return subprocess.run([sys.executable, "-c", "from nn4n.analyze import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
