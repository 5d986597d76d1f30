"""Sine-wave generation cued by a static frequency input."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from neurogym.core import TrialEnv
from neurogym.utils import spaces


class SineWave(TrialEnv):
    """Produce a sine wave whose frequency is set by a static input (Sussillo & Abbott 2009).

    The `frequency` input holds f / f_max for the whole trial; the `fixation` input is 1
    during the cue period and 0 in the response period, where the target is
    amplitude * sin(2 pi f t), t the time since response onset.

    Args:
        dt: time step in ms.
        timing: period durations in ms (`cue`, `response`), NeuroGym timing syntax.
        frequencies: frequencies (Hz) drawn uniformly at random.
        freq_range: (low, high) in Hz: draw f from this continuous range instead.
        amplitude: amplitude of the target wave.
    """

    metadata = {  # noqa: RUF012
        "paper_link": "https://doi.org/10.1016/j.neuron.2009.07.018",
        "paper_name": "Generating coherent patterns of activity from chaotic neural networks",
        "description": "Generate a sine wave at the frequency cued by a static input.",
        "render_modes": [],
        "tags": ["motor", "timing", "trajectory generation", "continuous action space", "supervised"],
    }

    def __init__(
        self,
        dt: float = 20,
        timing: dict[str, Any] | None = None,
        frequencies: Sequence[float] = (1.0, 1.5, 2.0, 2.5, 3.0),
        freq_range: tuple[float, float] | None = None,
        amplitude: float = 1.0,
    ) -> None:
        super().__init__(dt=dt)
        self.frequencies = np.asarray(frequencies, dtype=float)
        self.freq_range = freq_range
        self.f_max = freq_range[1] if freq_range else self.frequencies.max()
        self.amplitude = amplitude
        self.timing = {"cue": 200, "response": 2000}
        if timing:
            self.timing.update(timing)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(2,), dtype=np.float32, name={"fixation": 0, "frequency": 1}
        )
        self.action_space = spaces.Box(-amplitude, amplitude, shape=(1,), dtype=np.float32, name={"output": 0})

    def _new_trial(self, **kwargs: Any) -> dict[str, Any]:
        if self.freq_range:
            f = self.rng.uniform(*self.freq_range)
        else:
            f = self.rng.choice(self.frequencies)
        trial = {"frequency": float(f), **kwargs}
        self.add_period(["cue", "response"])
        self.add_ob(1, "cue", where="fixation")
        self.add_ob(trial["frequency"] / self.f_max, where="frequency")
        n = self.end_ind["response"] - self.start_ind["response"]
        t = np.arange(n) * self.dt / 1000
        self.set_groundtruth(self.amplitude * np.sin(2 * np.pi * trial["frequency"] * t)[:, None], "response")
        return trial

    def _step(self, action: np.ndarray) -> tuple:
        return self.ob_now, 0.0, False, False, {"new_trial": False, "gt": self.gt_now}
