"""The training loop: trial batches -> networks -> loss -> optimizer step, with logs, checkpoints and activity.

A run trains ``train.n_networks`` independent networks at once (:class:`nn4n.ensemble.Ensemble`); where
each file goes is :mod:`nn4n.rundir`'s business.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Generator, Iterator

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from . import recurrence
from .allocator import retain_freed_memory
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config
from .data import TrialBatch, batch_stream
from .ensemble import Ensemble
from .errors import ConfigError, TrainingError
from .evaluate import activity_record, evaluate_ensemble, save_activity
from .experiment import held_out, run_objective
from .machine import available_device, check_memory, loader_workers, use_threads, warn_if_above_cores
from .metrics import scoring, task_loss
from .monitor import Monitor
from .recurrence.rates import RATES
from .regularizers import regularization
from .rundir import (ACTIVITY_FILE, METRICS_FILE, check_disk_space, check_hydra_record, check_resumable, flatten,
                     hydra_record, last_checkpoint, network_dir, summarize_networks, write_metrics)

log = logging.getLogger("nn4n")
DIVERGED = 1e4  # a loss this many times its first value (in this process) stops the run as diverged


class Interrupted(TrainingError):
    """SIGINT/SIGTERM arrived; a checkpoint of the last finished step was written first."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        """Pickled with its signal: a sweep's launcher unpickles what a job raised (scancel on SLURM)."""
        return Interrupted, (str(self), self.signum)


class Requeued(SystemExit):
    """The cluster takes the job back to run it again (its time limit, a preemption): a checkpoint of the last
    finished step was written first, then the cluster's own handler (submitit's) requeued it."""


PREEMPTION = getattr(signal, "SIGUSR2", None)  # submitit's signal before a time limit or a preemption


@contextlib.contextmanager
def _deferred_signals() -> Iterator[list[tuple[int, Any]]]:
    """While training, SIGINT/SIGTERM (and a preemption signal someone handles, as submitit does SIGUSR2) only
    record their arrival, with the handler they replaced, so that the loop can checkpoint first."""
    received: list[tuple[int, Any]] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    wanted = [signal.SIGINT, signal.SIGTERM]
    if PREEMPTION is not None and callable(signal.getsignal(PREEMPTION)):
        wanted.append(PREEMPTION)
    previous = {s: signal.getsignal(s) for s in wanted}
    for s in wanted:
        signal.signal(s, lambda signum, _: received.append((signum, previous[signum])))
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def recurrent_lr(cfg: Config, n_neurons: int) -> float:
    """The recurrent weights' learning rate: ``train.lr * train.recurrent_lr_scale / N`` under Adam and AdamW,
    ``train.lr`` under SGD. Adam moves every weight by about ``lr`` per step whatever its gradient's size, so a
    gradient of rank one (an error times the presynaptic rates) moves an N x N matrix's leading eigenvalue by up
    to ``lr * N``: at ``lr`` 1e-2 and N = 128, past the bulk in a few steps, and relu rates run away. ``lr *
    scale / N`` bounds that move by ``lr * scale`` (SGD's step already shrinks with each gradient's size)."""
    t = cfg.train
    return t.lr if t.optimizer == "sgd" else t.lr * t.recurrent_lr_scale / n_neurons


def _optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Fused (one kernel for all parameters), which also skips a step on the device when ``found_inf`` is set.
    Two groups: the recurrent weights at :func:`recurrent_lr`, every other parameter at ``train.lr``."""
    t = cfg.train
    named = list(model.named_parameters())
    recurrent = [p for name, p in named if name.endswith("w_rec.original")]
    groups = [{"params": [p for name, p in named if not name.endswith("w_rec.original")]},
              {"params": recurrent, "lr": recurrent_lr(cfg, recurrent[0].shape[-1])}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, t.lr, momentum=t.momentum, weight_decay=t.weight_decay, fused=True)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, t.lr, weight_decay=t.weight_decay, fused=True)


def lr_factor(step: int, schedule: str, steps: int, warmup: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based) as a fraction of ``train.lr``: a linear warmup over
    the first ``warmup`` steps, times the schedule: ``none``, ``cosine`` (to 0 at ``steps``) or ``step`` (x0.1
    every third of ``steps``)."""
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "cosine":
        factor *= 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    elif schedule == "step":
        factor *= 0.1 ** (step // max(1, steps // 3))
    return factor


def _schedule(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    t = cfg.train
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, t.schedule, t.steps, t.warmup))


def _to_host(values: torch.Tensor) -> tuple[torch.Tensor, torch.Event | None]:
    """Start copying ``values`` to (pinned) host memory; the event, None on the CPU, marks the copy done.
    Waiting on it waits for this copy only, not for the work queued on the device after it."""
    if values.device.type == "cpu":
        return values, None
    host, copied = values.to("cpu", non_blocking=True), torch.Event(device=values.device)
    copied.record()
    return host, copied


def _every(step: int, period: int, last: int) -> bool:
    return step == last or (period > 0 and step % period == 0)


def _progress(cfg: Config, start: int) -> tqdm | None:
    bar = cfg.logging.progress == "bar" or (cfg.logging.progress == "auto" and sys.stderr.isatty())
    return tqdm(total=cfg.train.steps, initial=start, desc="train", dynamic_ncols=True) if bar else None


class Trainer:
    """Everything a run holds between steps: data, networks, optimizer, monitors, best scores."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        use_threads("train.threads", cfg.train.threads)
        if cfg.train.retain_freed_memory:
            retain_freed_memory()
        torch.set_float32_matmul_precision(cfg.train.matmul_precision)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.cfg, self.run_dir, n_networks = cfg, run_dir, cfg.train.n_networks
        self.train_data = cfg.task.sampler(n_networks * cfg.train.batch_size, cfg.seed)
        self.spec = self.train_data.spec
        self.objective = run_objective(cfg, self.spec)
        try:
            self.device = available_device(cfg.train.device, "train.device")
            engine = recurrence.engine_for(cfg.train.engine, self.device)
            n_neurons = sum(area.size for area in cfg.model.areas.values())
            n_steps = int(held_out(cfg, n_trials=32).batch(0).lengths.max())  # a sample's: the batches are not made yet
            check_memory(self.device, n_networks, n_neurons, n_networks * max(cfg.train.batch_size, cfg.train.eval_trials), n_steps)
            run_dir.mkdir(parents=True, exist_ok=True)  # its contents only once every check has passed
            check_disk_space(cfg, run_dir, n_neurons, n_steps)
            self.held_out = held_out(cfg).batch(0).to(self.device)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.loader_workers = loader_workers(cfg.train.data_workers, self.device)
        warn_if_above_cores("train.data_workers", self.loader_workers, "they will take the model step's cores")
        try:
            self.ensemble = Ensemble(cfg.model, n_networks, engine=engine).to(self.device)
        except ValueError as err:  # checks that need the masks drawn from the seed (an empty readout pool, say)
            raise ConfigError(f"model.{err}") from None
        self.networks = list(self.ensemble.networks)
        self.optimizer = _optimizer(cfg, self.ensemble)
        for net in self.networks:
            net.apply_plasticity(self.optimizer)
        self.schedule = _schedule(cfg, self.optimizer)
        self.last_path = last_checkpoint(run_dir)
        self.dirs = [network_dir(run_dir, i, n_networks) for i in range(n_networks)]
        for path in (run_dir, *self.dirs):
            (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.flat_config = flatten(dataclasses.asdict(cfg))
        self.start, self.best, elapsed = 0, [-math.inf] * n_networks, 0.0
        if self.last_path.exists():
            elapsed = self._resume()
        self.hydra = hydra_record(run_dir)  # read once the command is accepted: what the checkpoints carry
        # resumed: keep the checkpointed step's own events; from scratch: hide all of an attempt killed before its first checkpoint
        purge = self.start + 1 if self.start else 0
        self.monitors = [Monitor(path / "tensorboard", purge_step=purge) for path in self.dirs]
        self.began = time.perf_counter() - elapsed
        self.progress: tqdm | None = None
        self.unchecked: tuple[int, torch.Tensor, torch.Event | None] | None = None  # step, (losses, norms), copied
        self.first_loss: torch.Tensor | None = None  # per network, the first loss this process checked

    def _resume(self) -> float:
        """Load ``checkpoints/last.pt``; return the training time it had already taken."""
        try:
            state = load_checkpoint(self.last_path, self.device)
            check_hydra_record(state.get("hydra", {}), self.last_path)
        except ValueError as err:
            raise TrainingError(str(err)) from None
        check_resumable(state, self.flat_config, self.run_dir)
        for net, weights in zip(self.networks, state["models"], strict=True):
            net.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # a checkpoint of an unfused optimizer resumes fused
            group["fused"] = True
        self.schedule.load_state_dict(state["schedule"])
        set_rng_state(state["rng"])
        self.start, self.best = state["step"], list(state["best"])
        if self.start < self.cfg.train.steps:  # a finished run trained further is no longer finished
            for path in (self.run_dir, *self.dirs):
                (path / METRICS_FILE).unlink(missing_ok=True)
        log.info("resuming from step %d of %s", self.start, self.last_path)
        return state["elapsed"]

    def run(self) -> dict[str, Any]:
        """Train from the current step to ``train.steps``, then write the final results."""
        cfg, last = self.cfg, self.cfg.train.steps
        if self.start == 0:
            for net, monitor in zip(self.networks, self.monitors):
                monitor.text("config", "```\n" + OmegaConf.to_yaml(OmegaConf.structured(cfg)) + "\n```")
                monitor.text("structure", "```\n" + net.structure.summary() + "\n```")
            log.info("network:\n%s", self.networks[0].structure.summary())
        log.info("task %s (%s), %d network(s), device %s, engine %s, %d loader worker(s)", cfg.task.name,
                 self.spec.kind.value, len(self.networks), self.device, self.ensemble.engine, self.loader_workers)
        log.info("scored by %s", scoring(self.spec))
        log.info("writing to %s (to watch: tensorboard --logdir %s)", self.run_dir, self.run_dir)
        if "SLURM_JOB_ID" in os.environ:  # scancel, scontrol and sacct know the job by this id
            array = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
            log.info("SLURM job %s", "_".join(array) if all(array) else os.environ["SLURM_JOB_ID"])
        stream: Generator = batch_stream(self.train_data, self.start, self.loader_workers,
                                         pin_memory=self.device.type == "cuda")
        self.progress = _progress(cfg, self.start)
        with _deferred_signals() as received, contextlib.ExitStack() as stack:
            for monitor in self.monitors:
                stack.callback(monitor.close)
            stack.callback(stream.close)  # the loader workers stop here, on every way out
            if self.start == 0:
                self._evaluate(0)  # the untrained network: where the curves start
            for step in range(self.start + 1, last + 1):
                try:
                    batch = next(stream)
                except RuntimeError:  # a loader worker is gone: by the stop signal sent to every process of the run?
                    if not received:
                        raise
                    step -= 1  # the last finished step is checkpointed, and the stop reported, below
                else:
                    self.train_step(step, batch.to(self.device, non_blocking=True))
                    if _every(step, cfg.train.eval_every, last):
                        self._evaluate(step)
                if _every(step, cfg.train.checkpoint_every, last) or received:
                    self._save(step)
                while received:
                    self._stop(step, *received.pop(0))
                if self.progress is not None:
                    self.progress.update(1)
            if self.progress is not None:
                self.progress.close()
            return self._finish()

    def _stop(self, step: int, signum: int, previous: Any) -> None:
        """After the checkpoint of ``step``: a preemption goes on to the handler it replaced (submitit's, which
        requeues the job); SIGINT/SIGTERM stop the run with the command that resumes it."""
        name = signal.Signals(signum).name
        if signum == PREEMPTION:
            log.info("%s at step %d: checkpoint saved; handing over to the cluster's requeue", name, step)
            try:
                previous(signum, None)
            except SystemExit as done:
                raise Requeued(done.code) from None
            return
        raise Interrupted(f"{name} at step {step}: checkpoint saved; resume with: nn4n-train resume={self.run_dir}", signum)

    def train_step(self, step: int, batch: TrialBatch) -> None:
        """Forward all networks on their own trials, backward, clip each network, optimizer step, log."""
        cfg, last, k = self.cfg, self.cfg.train.steps, len(self.networks)
        parts = batch.split(k)
        valid = [part.valid for part in parts]
        outputs, activities = self.ensemble(batch.inputs.view(k, -1, *batch.inputs.shape[1:]))
        terms = [
            {"task": task_loss(out, part, self.spec), **regularization(cfg.train.reg, net, act, ok)}
            for net, out, act, part, ok in zip(self.networks, outputs, activities, parts, valid)
        ]
        totals = torch.stack([sum(t.values()) for t in terms])  # type: ignore[misc]
        self.optimizer.zero_grad(set_to_none=True)
        totals.sum().backward()
        clip = cfg.train.grad_clip or math.inf
        norms = torch.stack([torch.nn.utils.clip_grad_norm_(net.parameters(), clip) for net in self.networks])
        # A non-finite step is skipped on the device (no host sync); it is reported at the next check.
        self.optimizer.found_inf = (~torch.isfinite(norms).all()).float()  # type: ignore[attr-defined]
        self.optimizer.step()
        self.schedule.step()
        self._check_finite()  # the step before, whose values are on the host by now
        self.unchecked = (step, *_to_host(torch.stack([totals.detach(), norms])))
        log_scalars = _every(step, cfg.logging.scalars_every, last)
        log_histograms = cfg.logging.histograms_every and step % cfg.logging.histograms_every == 0
        if log_scalars or log_histograms:
            self._check_finite()
        if log_scalars:
            lr = self.schedule.get_last_lr()[0]
            for i, (monitor, net, act) in enumerate(zip(self.monitors, self.networks, activities)):
                values = {f"loss/{name}": v.item() for name, v in terms[i].items()}
                values |= {"loss/total": totals[i].item(), "train/grad_norm": norms[i].item(), "train/lr": lr}
                monitor.scalars(step, values)
                monitor.activity(step, net, act, valid[i])
            if self.progress is None:
                log.info("step %d/%d  loss %.4f", step, last, totals.mean().item())
        if log_histograms:
            for monitor, net, act, ok in zip(self.monitors, self.networks, activities, valid):
                monitor.histograms(step, net, act, ok)

    def _check_finite(self) -> None:
        """Stop if the last unchecked step's loss or gradient norm was not finite (its update was skipped), or if
        its loss exploded: above ``DIVERGED`` times the first loss this process saw (its update was made)."""
        if self.unchecked is None:
            return
        step, (totals, norms), copied = self.unchecked
        self.unchecked = None
        if copied is not None:
            copied.synchronize()
        if self.first_loss is None:
            self.first_loss = totals.abs().clamp_min(1e-3)
        finite = torch.isfinite(norms)
        exploded = torch.isfinite(totals) & (totals.abs() > DIVERGED * self.first_loss)
        if finite.all() and not exploded.any():
            return
        bad = int((~finite | exploded).nonzero()[0])
        which = f"network {bad}: " if len(norms) > 1 else ""
        saved = f"last good checkpoint: {self.last_path}" if self.last_path.exists() else "no checkpoint was written before it"
        if not finite[bad]:
            raise TrainingError(f"step {step}: {which}loss {totals[bad].item():.4g}, gradient norm {norms[bad].item():.4g} "
                                f"is not finite; its update was skipped and nothing saved after it ({saved})")
        raise TrainingError(f"step {step}: {which}loss {totals[bad].item():.4g} is over {DIVERGED:g} times its first value "
                            f"{self.first_loss[bad].item():.4g}: the run diverged (a lower train.lr?); nothing saved "
                            f"after it ({saved})")

    def _evaluate(self, step: int) -> None:
        """Held-out metrics of every network; a network's best so far is saved as its ``best.pt``."""
        self._check_finite()
        cfg, results = self.cfg, evaluate_ensemble(self.ensemble, self.held_out, self.spec)
        for i, (net, monitor, (metrics, outputs, activity)) in enumerate(zip(self.networks, self.monitors, results)):
            monitor.scalars(step, metrics, "eval/")
            score = self.objective.score(metrics)
            if score > self.best[i]:
                self.best[i] = score
                net.save(self.dirs[i] / "checkpoints" / "best.pt")
            if cfg.logging.figures_every and step % cfg.logging.figures_every == 0:
                monitor.figures(step, activity_record(net, self.held_out, outputs, activity, self.spec))
        mean = {key: float(np.mean([m[key] for m, _, _ in results])) for key in results[0][0]}
        message = "  ".join(f"{key} {value:.4f}" for key, value in mean.items() if not (self.spec.tasks and "/" in key))
        (self.progress.set_postfix_str(message) if self.progress else log.info("step %d eval: %s", step, message))

    def _save(self, step: int) -> None:
        self._check_finite()
        save_checkpoint(self.last_path, {
            "models": [net.state_dict() for net in self.networks],
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": rng_state(),
            "step": step,
            "best": self.best,
            "elapsed": time.perf_counter() - self.began,
            "config": self.flat_config,
            "hydra": self.hydra,
        })

    def _finish(self) -> dict[str, Any]:
        """Final held-out evaluation: activity arrays, figures, HParams, then ``metrics.json`` (last)."""
        cfg, n_networks = self.cfg, len(self.networks)
        wall = round(time.perf_counter() - self.began, 2)
        per_network = []
        results = evaluate_ensemble(self.ensemble, self.held_out, self.spec)
        for i, (net, monitor, (metrics, outputs, activity)) in enumerate(zip(self.networks, self.monitors, results)):
            record = activity_record(net, self.held_out, outputs, activity, self.spec)
            if cfg.logging.save_activity:
                save_activity(self.dirs[i] / ACTIVITY_FILE, record)
            if cfg.logging.figures:
                monitor.figures(cfg.train.steps, record)
            params = self.flat_config
            if n_networks > 1:
                params = params | {"network": i, "network_seed": net.config.seed}
            monitor.hparams(cfg.train.steps, params, metrics)
            ceiling = RATES[cfg.model.activation].ceiling
            metrics |= {"steps": cfg.train.steps, "wall_time_s": wall, "scored": scoring(self.spec),
                        "activity": activity.stats(self.held_out.valid, ceiling)}
            if n_networks > 1:
                metrics["seed"] = net.config.seed
                write_metrics(self.dirs[i], metrics)
            per_network.append(metrics)
        summary = per_network[0] if n_networks == 1 else summarize_networks(per_network)
        summary["objective"] = self.objective.metric  # what a sweep's launcher returns for a finished job
        write_metrics(self.run_dir, summary)
        shown = {k: v for k, v in summary.items() if k not in ("networks", "activity", "scored") and not (self.spec.tasks and "/" in k)}
        log.info("done: %s", "  ".join(f"{k} {v}" for k, v in shown.items()))
        log.info("objective (train.objective): %s %.4g, to %s", self.objective.metric, self.objective.value(summary),
                 self.objective.direction)
        log.info("results in %s", self.run_dir)
        return summary


def train(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; resumes from ``run_dir/checkpoints/last.pt`` if it exists.

    Writes ``tensorboard/``, ``checkpoints/{last,best}.pt``, ``activity.npz`` (per network, see
    :mod:`nn4n.rundir`) and, last of all, ``metrics.json`` (its presence marks a finished run).
    Returns the final metrics.
    """
    return Trainer(cfg, run_dir).run()
