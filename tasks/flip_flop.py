"""N-bit flip-flop working memory."""

from typing import Any

import numpy as np
from neurogym.core import TrialEnv
from neurogym.utils import spaces


class FlipFlop(TrialEnv):
    """Remember the sign of the last pulse on each channel (Sussillo & Barak 2013).

    Each of `n_bits` input channels receives sparse one-step pulses of +1 or -1 (each step,
    each channel, with probability pulse_rate * dt / 1000). The target of each channel is
    the sign of its last pulse, the pulse on the current step included; 0 before its first pulse.
    With `initial="random"` every channel gets a pulse of random sign at the first step, so every bit
    holds +1 or -1 from the start (the memory states are then only the 2**n_bits sign patterns).

    Args:
        dt: time step in ms.
        timing: period durations in ms (`stimulus`), NeuroGym timing syntax.
        n_bits: number of channels.
        pulse_rate: pulses per second on each channel.
        initial: "zero" (each bit is 0 until its first pulse) or "random" (a pulse on every channel first).
        latency: ms the targets lag the pulses (0: a bit flips on its pulse's own step, faster than any
            network of tau ~100 ms can; a few tens of ms give it time to respond).
    """

    metadata = {  # noqa: RUF012
        "paper_link": "https://doi.org/10.1162/NECO_a_00409",
        "paper_name": "Opening the black box: low-dimensional dynamics in high-dimensional recurrent neural networks",
        "description": "Each output holds the sign of the last +1/-1 pulse on its input channel.",
        "render_modes": [],
        "tags": ["working memory", "continuous action space", "multidimensional action space", "supervised"],
    }

    def __init__(
        self,
        dt: float = 20,
        timing: dict[str, Any] | None = None,
        n_bits: int = 3,
        pulse_rate: float = 2.5,
        initial: str = "zero",
        latency: float = 0.0,
    ) -> None:
        super().__init__(dt=dt)
        if initial not in ("zero", "random"):
            raise ValueError(f"initial: must be 'zero' or 'random', got {initial!r}")
        self.n_bits, self.initial, self.lag = n_bits, initial, int(round(latency / dt))
        self.pulse_prob = pulse_rate * dt / 1000
        self.timing = {"stimulus": 2000}
        if timing:
            self.timing.update(timing)
        names = {f"bit{i}": i for i in range(n_bits)}
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(n_bits,), dtype=np.float32, name=names)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n_bits,), dtype=np.float32, name=names)

    def _new_trial(self, **kwargs: Any) -> dict[str, Any]:
        self.add_period("stimulus")
        n = self.end_ind["stimulus"] - self.start_ind["stimulus"]
        pulsed = self.rng.rand(n, self.n_bits) < self.pulse_prob
        if self.initial == "random":
            pulsed[0] = True
        pulses = np.where(pulsed, self.rng.choice([-1.0, 1.0], size=(n, self.n_bits)), 0.0)
        # Index of each channel's last pulse up to each step (-1 before the first one).
        last = np.maximum.accumulate(np.where(pulsed, np.arange(n)[:, None], -1), axis=0)
        held = np.where(last >= 0, pulses[np.maximum(last, 0), np.arange(self.n_bits)], 0.0)
        if self.lag:  # the target follows the pulses after the latency
            held = np.concatenate([np.repeat(held[:1] * 0, min(self.lag, n), 0), held[: n - self.lag]])
        self.add_ob(pulses, "stimulus")
        self.set_groundtruth(held, "stimulus")
        return {"n_pulses": int(pulsed.sum()), **kwargs}

    def _step(self, action: np.ndarray) -> tuple:
        return self.ob_now, 0.0, False, False, {"new_trial": False, "gt": self.gt_now}
