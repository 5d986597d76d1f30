"""Head-direction path integration: integrate angular velocity to track heading."""

from typing import Any

import numpy as np
from neurogym.core import TrialEnv
from neurogym.utils import spaces


class PathIntegration(TrialEnv):
    """Track the current heading by integrating angular velocity (Cueva et al. 2020).

    During the cue period the `heading` inputs show the initial heading (cos, sin) and the
    velocity is 0; during the move period the `angular_velocity` input (rad/s) is a smooth
    random signal (Ornstein-Uhlenbeck, std `velocity_std`, time constant `velocity_tau`).
    The target at every step is the current heading (cos, sin), where
    heading[t] = initial heading + dt * sum of the angular velocity up to and including step t.

    Args:
        dt: time step in ms.
        timing: period durations in ms (`cue`, `move`), NeuroGym timing syntax.
        velocity_std: stationary std of the angular velocity, rad/s.
        velocity_tau: correlation time of the angular velocity, ms.
    """

    metadata = {  # noqa: RUF012
        "paper_link": "https://openreview.net/forum?id=HklSeREtPB",
        "paper_name": "Emergence of functional and structural properties of the head direction system "
        "by optimization of recurrent neural networks",
        "description": "Integrate angular velocity from a cued initial heading; report heading as (cos, sin).",
        "render_modes": [],
        "tags": ["navigation", "working memory", "continuous action space", "supervised"],
    }

    def __init__(
        self,
        dt: float = 20,
        timing: dict[str, Any] | None = None,
        velocity_std: float = 2.0,
        velocity_tau: float = 200.0,
    ) -> None:
        super().__init__(dt=dt)
        self.velocity_std = velocity_std
        self.velocity_tau = velocity_tau
        self.timing = {"cue": 100, "move": 2000}
        if timing:
            self.timing.update(timing)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(3,), dtype=np.float32, name={"angular_velocity": 0, "heading": [1, 2]}
        )
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32, name={"cos": 0, "sin": 1})

    def _velocity(self, n: int) -> np.ndarray:
        """Ornstein-Uhlenbeck angular velocity trace of n steps, started from its stationary law."""
        a = np.exp(-self.dt / self.velocity_tau)
        noise = self.rng.randn(n) * self.velocity_std
        noise[1:] *= np.sqrt(1 - a**2)
        w = np.empty(n)
        for k in range(n):
            w[k] = noise[k] + (a * w[k - 1] if k else 0.0)
        return w

    def _new_trial(self, **kwargs: Any) -> dict[str, Any]:
        trial = {"initial_heading": self.rng.uniform(-np.pi, np.pi), **kwargs}
        self.add_period(["cue", "move"])
        theta0 = trial["initial_heading"]
        w = self._velocity(self.end_ind["move"] - self.start_ind["move"]).astype(np.float32)
        heading = theta0 + np.cumsum(w, dtype=np.float64) * self.dt / 1000
        self.add_ob([np.cos(theta0), np.sin(theta0)], "cue", where="heading")
        self.add_ob(w, "move", where="angular_velocity")
        self.set_groundtruth([np.cos(theta0), np.sin(theta0)], "cue")
        self.set_groundtruth(np.stack([np.cos(heading), np.sin(heading)], axis=1), "move")
        return trial

    def _step(self, action: np.ndarray) -> tuple:
        return self.ob_now, 0.0, False, False, {"new_trial": False, "gt": self.gt_now}
