"""Ideal observers against answers known in closed form."""
from __future__ import annotations

import math

import pytest

from nn4n.analysis.ideal import ideal_accuracy


def test_perceptual_decision_matches_the_closed_form() -> None:
    """One coherence c, a fixed stimulus of n steps: the summed channel difference has mean c/100 * n and
    standard deviation sqrt(2 n) * sigma / sqrt(dt), so the ideal observer is right with probability
    Phi(c/100 * sqrt(n dt / 2) / sigma)."""
    coh, n_steps, dt = 6.4, 15, 20.0
    want = 0.5 * (1 + math.erf(coh / 100 * math.sqrt(n_steps * dt / 2) / math.sqrt(2)))
    got = ideal_accuracy("PerceptualDecisionMaking-v0", dt, n_trials=20000, timing={"stimulus": n_steps * dt},
                         params={"cohs": [coh]})
    assert got == pytest.approx(want, abs=0.01) and 0.75 < want < 0.8
    assert ideal_accuracy("PerceptualDecisionMaking-v0", dt, n_trials=4000, params={"cohs": [0.0]}) == pytest.approx(0.5, abs=0.03)


def test_probabilistic_reasoning_is_the_more_probable_choice() -> None:
    certain = ideal_accuracy("ProbabilisticReasoning-v0", n_trials=500, params={"shape_weight": [-10, 10], "n_loc": 1})
    uninformative = ideal_accuracy("ProbabilisticReasoning-v0", n_trials=500, params={"shape_weight": [0.0, 0.0]})
    assert certain == pytest.approx(1.0) and uninformative == 0.5
    assert 0.85 < ideal_accuracy("ProbabilisticReasoning-v0", n_trials=4000) < 0.95


def test_tasks_without_one() -> None:
    assert ideal_accuracy("GoNogo-v0") is None
