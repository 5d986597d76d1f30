"""One training run: trial batches -> network -> loss -> optimizer step, with logs, checkpoints and activity."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, ConfigError, TaskConfig, check_schema, to_config
from .data import TrialSampler, batch_stream
from .engines import ENGINES
from .evaluate import activity_record, evaluate, save_activity
from .metrics import task_loss
from .model import CTRNN
from .monitor import Monitor
from .regularizers import regularization

log = logging.getLogger("nn4n")
EVAL_SEED_OFFSET = 2**31  # held-out trials come from a seed stream training never uses


class TrainingError(RuntimeError):
    """Training stopped (e.g. diverged); the message is one line, the last good checkpoint is kept."""

    exit_code = 3


class Interrupted(TrainingError):
    """SIGINT/SIGTERM arrived; a checkpoint of the last finished step was written first."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# Settings that may differ when a run is resumed; everything else must match the checkpoint.
RESUMABLE_CHANGES = ("train.device", "train.engine", "train.threads", "train.data_workers",
                     "train.eval_every", "train.checkpoint_every", "logging.")


@contextlib.contextmanager
def _deferred_signals() -> Iterator[list[int]]:
    """While training, SIGINT/SIGTERM only record their arrival so the loop can checkpoint and stop."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda signum, _: received.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_resumable(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """Refuse to continue the run in ``run_dir`` (flattened config ``saved``) with another config."""
    for key in sorted(set(saved) | set(current)):
        if not key.startswith(RESUMABLE_CHANGES) and saved.get(key) != current.get(key):
            raise ConfigError(
                f"{key}: is {current.get(key)!r} but the run in {run_dir} was started with "
                f"{saved.get(key)!r}; use the same value or another output directory"
            )


def check_disk_space(cfg: Config, run_dir: Path, n_neurons: int, n_steps: int) -> None:
    """Fail before training if ``run_dir`` cannot hold the checkpoints and activity arrays."""
    params = n_neurons * (n_neurons + cfg.model.input_size + cfg.model.output_size + 4)
    activity = cfg.train.eval_trials * n_steps * (n_neurons + 2 * cfg.model.output_size) * 4
    needed = 6 * params * 4 + 2 * activity + 50 * 2**20  # last + best (+ temporaries) + optimizer state + logs
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise ConfigError(f"hydra.run.dir: only {free / 2**20:.0f} MiB free in {run_dir}; this run needs about {needed / 2**20:.0f} MiB")


def sampler(t: TaskConfig, batch_size: int, seed: int) -> TrialSampler:
    """Batches of task ``t`` that depend only on (seed, batch index)."""
    return TrialSampler(t.name, t.dt, batch_size, seed, t.timing, t.params, t.dirs, t.decision_weight, t.decision_period)


def resolve(raw: DictConfig | dict) -> Config:
    """Validate a composed config and fill in what the task decides (input/output sizes, dt)."""
    cfg = check_schema(raw)
    try:
        spec = sampler(OmegaConf.to_object(cfg.task), 1, 0).spec  # type: ignore[arg-type]
    except ValueError as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    cfg.model.input_size, cfg.model.output_size, cfg.model.dt = spec.n_inputs, spec.n_outputs, spec.dt
    return to_config(cfg)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available; use auto or cpu")
    return torch.device(name)


def _engine(name: str) -> str:
    return ("fused" if "fused" in ENGINES else "reference") if name == "auto" else name


def _optimizer(cfg: Config, model: CTRNN) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), t.lr, weight_decay=t.weight_decay)


def _schedule(cfg: Config, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    t = cfg.train
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, t.steps)
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, max(1, t.steps // 3), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists as ``{"a.b.c": leaf}`` (for HParams)."""
    if isinstance(values, dict):
        return {k: v for key, item in values.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: values}


def _every(step: int, period: int, last: int) -> bool:
    return step == last or (period > 0 and step % period == 0)


def _progress(cfg: Config, start: int) -> tqdm | None:
    bar = cfg.logging.progress == "bar" or (cfg.logging.progress == "auto" and sys.stderr.isatty())
    return tqdm(total=cfg.train.steps, initial=start, desc="train", dynamic_ncols=True) if bar else None


def train(cfg: Config, run_dir: Path) -> dict[str, float]:
    """Train ``cfg`` into ``run_dir``; resumes from ``run_dir/checkpoints/last.pt`` if it exists.

    Writes ``tensorboard/``, ``checkpoints/{last,best}.pt``, ``activity.npz`` and, last of all,
    ``metrics.json`` (its presence marks a finished run). Returns the final metrics.
    """
    torch.set_num_threads(cfg.train.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = _device(cfg.train.device)
    train_data = sampler(cfg.task, cfg.train.batch_size, cfg.seed)
    kind = train_data.spec.kind
    held_out = sampler(cfg.task, cfg.train.eval_trials, cfg.seed + EVAL_SEED_OFFSET).batch(0).to(device)
    model = CTRNN(cfg.model, engine=_engine(cfg.train.engine)).to(device)
    optimizer = _optimizer(cfg, model)
    model.apply_plasticity(optimizer)
    schedule = _schedule(cfg, optimizer)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    check_disk_space(cfg, run_dir, model.structure.n_neurons, held_out.inputs.shape[1])
    flat_config = flatten(dataclasses.asdict(cfg))
    start, best, elapsed = 0, -math.inf, 0.0
    if (ckpt_dir / "last.pt").exists():
        try:
            state = load_checkpoint(ckpt_dir / "last.pt", device)
        except ValueError as err:
            raise TrainingError(str(err)) from None
        check_resumable(state["config"], flat_config, run_dir)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        set_rng_state(state["rng"])
        start, best, elapsed = state["step"], state["best"], state["elapsed"]
        log.info("resuming from step %d of %s", start, ckpt_dir / "last.pt")
    monitor = Monitor(run_dir / "tensorboard", purge_step=start + 1 if start else None)  # keep step `start`
    if start == 0:
        monitor.text("config", "```\n" + OmegaConf.to_yaml(OmegaConf.structured(cfg)) + "\n```")
        monitor.text("structure", "```\n" + model.structure.summary() + "\n```")
        log.info("network:\n%s", model.structure.summary())
    log.info("task %s (%s), device %s, engine %s", cfg.task.name, kind, device, model.engine)
    stream: Iterator = batch_stream(train_data, start, cfg.train.data_workers, pin_memory=device.type == "cuda")
    progress = _progress(cfg, start)
    clip = cfg.train.grad_clip or math.inf
    began = time.perf_counter() - elapsed
    last = cfg.train.steps

    def save_state(step: int) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": rng_state(),
            "step": step,
            "best": best,
            "elapsed": time.perf_counter() - began,
            "config": flat_config,
        }
        save_checkpoint(ckpt_dir / "last.pt", state)

    with _deferred_signals() as received, contextlib.closing(monitor):
        for step in range(start + 1, last + 1):
            batch = next(stream).to(device, non_blocking=True)
            outputs, activity = model(batch.inputs)
            valid = batch.mask > 0
            losses = {"task": task_loss(outputs, batch, kind), **regularization(cfg.train.reg, model, activity, valid)}
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if not torch.isfinite(grad_norm):
                raise TrainingError(
                    f"step {step}: loss {loss.item():.4g}, gradient norm {grad_norm.item():.4g} is not finite; "
                    f"stopped without updating weights (last good checkpoint: {ckpt_dir / 'last.pt'})"
                )
            optimizer.step()
            schedule.step()
            if _every(step, cfg.logging.scalars_every, last):
                values = {f"loss/{k}": v.item() for k, v in losses.items()}
                values |= {"loss/total": loss.item(), "train/grad_norm": grad_norm.item(), "train/lr": schedule.get_last_lr()[0]}
                monitor.scalars(step, values)
                monitor.activity(step, model, activity, valid)
                if progress is None:
                    log.info("step %d/%d  loss %.4f", step, last, loss.item())
            if cfg.logging.histograms_every and step % cfg.logging.histograms_every == 0:
                monitor.histograms(step, model, activity, valid)
            if _every(step, cfg.train.eval_every, last):
                metrics, eval_outputs, eval_activity = evaluate(model, held_out, kind)
                monitor.scalars(step, metrics, "eval/")
                score = metrics.get("accuracy", -metrics.get("mse", math.inf))
                if score > best:
                    best = score
                    model.save(ckpt_dir / "best.pt")
                if cfg.logging.figures_every and step % cfg.logging.figures_every == 0:
                    monitor.figures(step, activity_record(model, held_out, eval_outputs, eval_activity, kind))
                message = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                (progress.set_postfix_str(message) if progress else log.info("step %d eval: %s", step, message))
            if _every(step, cfg.train.checkpoint_every, last) or received:
                save_state(step)
            if received:
                name = signal.Signals(received[0]).name
                raise Interrupted(f"{name} at step {step}: checkpoint saved; run the same command again to resume", received[0])
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()
        return _finish(cfg, run_dir, model, held_out, kind, monitor, time.perf_counter() - began)


def _finish(cfg: Config, run_dir: Path, model: CTRNN, held_out: Any, kind: str, monitor: Monitor, wall: float) -> dict[str, float]:
    """Final held-out evaluation: activity arrays, figures, HParams, then ``metrics.json``."""
    metrics, outputs, activity = evaluate(model, held_out, kind)
    record = activity_record(model, held_out, outputs, activity, kind)
    if cfg.logging.save_activity:
        save_activity(run_dir / "activity.npz", record)
    if cfg.logging.figures:
        monitor.figures(cfg.train.steps, record)
    metrics |= {"steps": cfg.train.steps, "wall_time_s": round(wall, 2)}
    monitor.hparams(flatten(dataclasses.asdict(cfg)), metrics)
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(run_dir / "metrics.json")
    log.info("done: %s", "  ".join(f"{k} {v}" for k, v in metrics.items()))
    return metrics
