"""Ideal observers: the best accuracy any decision rule can reach on a task, from the task's own generative model.

A network's accuracy is read against them: 0.91 on a task whose ideal observer reaches 0.92 is near perfect,
on one whose ideal observer reaches 1.0 it is not. Each is computed on trials the task itself generates:

- ``PerceptualDecisionMaking``, ``PostDecisionWager``: the stimulus is each choice's mean level plus Gaussian
  noise of one standard deviation at every step, the same for both choices; the log-likelihood ratio of the two
  choices is then proportional to the summed difference of the two stimulus channels over the stimulus period,
  and the ideal observer picks the choice it favours (a coin toss at coherence 0). Its accuracy is measured on
  the trials, noise included.
- ``ProbabilisticReasoning``: the correct choice is drawn with probability ``p = 1 / (1 + 10^-log_odd)``, the
  shapes' summed log odds; the ideal observer picks the more probable choice and is right with probability
  ``max(p, 1 - p)``, averaged over the trials.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..data import TrialBatch, TrialSampler


def _evidence_rule(batch: TrialBatch, sampler: TrialSampler) -> float:
    """Accuracy of choosing the stimulus channel with the larger sum over the stimulus period."""
    stimulus = sampler.spec.input_names["stimulus"]
    start, end = batch.epochs["stimulus"].T
    steps = np.arange(batch.inputs.shape[1])
    during = (steps >= start[:, None]) & (steps < end[:, None])
    inputs = batch.inputs.numpy()
    summed = np.stack([(inputs[..., k] * during).sum(1) for k in stimulus], 1)  # (trials, choices)
    ties = summed[:, 0] == summed[:, 1]
    chosen = np.asarray(sampler.spec.output_names["choice"])[summed.argmax(1)]
    target = np.array([batch.targets[b, e - 1].item() for b, e in enumerate(batch.epochs["decision"][:, 1])])
    return float(np.where(ties, 0.5, chosen == target).mean())


def _more_probable_choice(batch: TrialBatch, sampler: TrialSampler) -> float:
    """Expected accuracy of choosing the choice the shapes' log odds favour."""
    p = 1.0 / (1.0 + 10.0 ** -np.asarray(batch.conditions["log_odd"], dtype=float))
    return float(np.maximum(p, 1 - p).mean())


IDEAL_OBSERVERS: dict[str, Callable[[TrialBatch, TrialSampler], float]] = {
    "PerceptualDecisionMaking-v0": _evidence_rule,
    "PostDecisionWager-v0": _evidence_rule,
    "ProbabilisticReasoning-v0": _more_probable_choice,
}


def ideal_accuracy(task: str, dt: float = 20.0, n_trials: int = 10000, seed: int = 0,
                   timing: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None) -> float | None:
    """The ideal observer's accuracy on ``n_trials`` trials of ``task`` (``timing`` and ``params`` as in a
    run's ``task.*``); None for a task without one here (:data:`IDEAL_OBSERVERS`)."""
    if task not in IDEAL_OBSERVERS:
        return None
    sampler = TrialSampler(task, dt, n_trials, seed, timing, params)
    return IDEAL_OBSERVERS[task](sampler.batch(0), sampler)
