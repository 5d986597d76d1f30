"""TensorBoard logging of a run: losses, activity per area and E/I population, weights, figures."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from . import figures
from .model import CTRNN, Activity
from .recurrence.rates import RATES

HPARAMS_RUN = "hparams"  # the sub-run of each run's tensorboard/ that holds its HParams session


class Monitor:
    """A ``SummaryWriter`` that knows how to log an nn4n network.

    ``purge_step`` (on resume) drops events at or after that step left by an interrupted run.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        self.log_dir = log_dir
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        for key, value in values.items():
            self.writer.add_scalar(prefix + key, value, step)

    def activity(self, step: int, model: CTRNN, activity: Activity, valid: torch.Tensor) -> None:
        """Per area and E/I population: mean rate, fraction silent, fraction saturated (:meth:`Activity.stats`);
        the spectral radius of the effective recurrent weights."""
        self.scalars(step, activity.stats(valid, RATES[model.config.activation].ceiling))
        self.writer.add_scalar("weights/spectral_radius", model.spectral_radius(), step)

    def histograms(self, step: int, model: CTRNN, activity: Activity, valid: torch.Tensor) -> None:
        """Existing synapses of every (post, pre) block and of input/readout; per-neuron mean rates per area,
        and each area's taus where its neurons differ or learn them."""
        st = model.structure
        w = {k: v.cpu().numpy() for k, v in model.weights().items()}
        for to in st.area_names:
            for pre in st.area_names:
                block = w["w_rec"][st.area_slices[to], st.area_slices[pre]]
                mask = st.rec_mask[st.area_slices[to], st.area_slices[pre]]
                if mask.any():
                    self.writer.add_histogram(f"w_rec/{to}<-{pre}", block[mask], step)
        self.writer.add_histogram("w_in", w["w_in"][st.input_mask], step)
        self.writer.add_histogram("w_out", w["w_out"][st.readout_mask], step)
        mean = ((activity.rates * valid[..., None]).sum((0, 1)) / valid.sum().clamp_min(1)).detach().cpu().numpy()
        tau = model.tau.detach().cpu().numpy()
        for area in st.area_names:
            idx = st.indices(area)
            self.writer.add_histogram(f"neuron_mean_rate/{area}", mean[idx], step)
            if model.config.learn_tau or np.ptp(tau[idx]) > 0:
                self.writer.add_histogram(f"tau/{area}", tau[idx], step)

    def figures(self, step: int, record: Mapping[str, np.ndarray]) -> None:
        for name, fig in figures.all_figures(dict(record)).items():
            self.writer.add_figure(f"figures/{name}", fig, step)

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text)

    def hparams(self, step: int, params: Mapping[str, Any], scores: Mapping[str, float]) -> None:
        """Write the HParams session, with the held-out ``scores`` at ``step`` (the last one trained), as this
        run's sub-run ``hparams/``, replacing an earlier one: TensorBoard keeps the first session record of a
        run, so a run trained further would otherwise show the ``train.steps`` it first finished with. The
        scores are tagged as the evaluations are (``eval/accuracy``): in the Scalars tab they are the last
        point of those curves, not charts of their own."""
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        run = self.log_dir / HPARAMS_RUN
        shutil.rmtree(run, ignore_errors=True)
        with SummaryWriter(str(run)) as writer:
            for summary in hparams(clean, {f"eval/{k}": v for k, v in scores.items()}):
                writer.file_writer.add_summary(summary, step)
            for key, value in scores.items():
                writer.add_scalar(f"eval/{key}", value, step)

    def close(self) -> None:
        self.writer.close()
