"""The statistics nn4n reports beside a number: confidence intervals of a proportion and a psychometric fit."""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: two-sided 95% intervals


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (NaNs for ``n = 0``): unlike p +/- z se it stays
    inside [0, 1] and does not collapse to a point at 0 or 1."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """``(bias, slope)`` of ``P(y=1) = sigmoid(bias + slope x)`` by ridge-regularised Newton iterations, and their
    covariance (the inverse of the penalised Hessian, for standard errors). The small ridge keeps both finite
    where the data do not pin them down (every ``y`` equal, or perfectly separated): the slope then comes out
    near 0 with a wide interval, or large with a wide interval, instead of diverging."""
    design = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)
    for _ in range(50):
        p = 1 / (1 + np.exp(-design @ beta))
        hess = design.T @ (design * (p * (1 - p))[:, None]) + ridge * np.eye(2)
        beta += np.linalg.solve(hess, design.T @ (y - p) - ridge * beta)
    p = 1 / (1 + np.exp(-design @ beta))
    hess = design.T @ (design * (p * (1 - p))[:, None]) + ridge * np.eye(2)
    return beta, np.linalg.inv(hess)
