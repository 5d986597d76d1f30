"""Sweeps (``nn4n-train -m``): idempotent jobs, and ``nn4n-sweep-summary DIR``.

A sweep directory holds one sub-directory per job, made by Hydra (``.hydra/overrides.yaml``). A job
is *finished* when its ``metrics.json`` exists (the trainer writes it last), *running* while a live
process holds its lock, *requeued* when the cluster took it back to run it again (``requeued.txt``),
*failed* when its last attempt raised (``error.txt`` holds the one-line reason), and *missing metrics*
otherwise (killed, or never started). A finished job whose later attempt was refused before training
(a different config pointed at the same directory) keeps its record and metrics, and the summary shows
the refusal beside them.

Re-running a sweep into the same ``hydra.sweep.dir`` skips finished jobs (their stored metric is
returned to the sweeper, so an Optuna study sees the same values) and redoes the others, which
resume from ``checkpoints/last.pt`` when it exists.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import logging
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .errors import ConfigError
from .rundir import LOCK_FILE, METRICS_FILE, check_resumable, flatten, last_checkpoint, read_lock, read_metrics, stale

log = logging.getLogger("nn4n")

ERROR_FILE = "error.txt"
REQUEUED_FILE = "requeued.txt"  # the cluster took the job back to run it again; it resumes from its checkpoint


# ----------------------------------------------------------------------------- inside a sweep job
def start_job(run_dir: Path) -> None:
    """A new attempt at this job: forget how an earlier one ended (failed, or requeued)."""
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    (run_dir / REQUEUED_FILE).unlink(missing_ok=True)


def record_failure(run_dir: Path, err: BaseException) -> None:
    """Leave the reason this attempt failed in ``run_dir/error.txt`` (read by nn4n-sweep-summary)."""
    lines = str(err).strip().splitlines()
    message = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).write_text(message + "\n")
    except OSError:
        pass  # the job's own error is what matters; Hydra reports it


def sweep_job(task: Callable[[Any], float]) -> Callable[[Any], float]:
    """Wrap a Hydra task function: in a sweep (``-m``), each attempt at a job first removes the
    ``error.txt`` of an earlier one and, if it fails, writes its own before Hydra records the failure."""

    @functools.wraps(task)
    def run(cfg: Any) -> float:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return task(cfg)
        run_dir = Path(hydra_cfg.runtime.output_dir)
        start_job(run_dir)
        try:
            return task(cfg)
        except BaseException as err:
            from .train import Requeued

            if isinstance(err, Requeued):
                (run_dir / REQUEUED_FILE).write_text("requeued by the cluster (time limit or preemption) after a checkpoint\n")
            else:
                record_failure(run_dir, err)
            raise

    return run


def finished_metrics(run_dir: Path, config: Any) -> dict[str, float] | None:
    """Before a sweep job trains: the stored metrics when ``run_dir`` already holds this job,
    finished; None when it has to train (from scratch, or resuming from ``checkpoints/last.pt``).

    A directory holding a run of a different configuration (a different sweep re-run into the same
    ``hydra.sweep.dir``) is neither reused nor resumed: that raises a ConfigError naming the keys.
    """
    from .checkpoint import load_checkpoint  # torch: only where a job runs

    last, done = last_checkpoint(run_dir), run_dir / METRICS_FILE
    if last.exists():
        try:
            state = load_checkpoint(last)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        check_resumable(state, flatten(dataclasses.asdict(config)), run_dir)
        if state["step"] < config.train.steps:  # to be trained further
            return None
    if not done.exists():
        return None
    log.info("skipped: %s is finished (%s exists)", run_dir, METRICS_FILE)
    return read_metrics(run_dir)


# ----------------------------------------------------------------------------- nn4n-sweep-summary
@dataclasses.dataclass
class Job:
    path: Path
    name: str  # relative to the summarized directory
    overrides: dict[str, str]
    status: str  # finished, failed or missing metrics
    metrics: dict[str, float]
    error: str = ""


def _natural(path: Path) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path.as_posix()) if t]


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["seed=1", "+train.reg.rate_l2=0.1", "~logging"]`` as ``{key: value}``."""
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+")] = value
    return out


def load_job(job_dir: Path, root: Path) -> Job:
    overrides = parse_overrides(yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    name = job_dir.relative_to(root).as_posix() if job_dir != root else "."
    error_file, metrics_file = job_dir / ERROR_FILE, job_dir / METRICS_FILE
    error = error_file.read_text().strip() if error_file.exists() else ""
    metrics: dict[str, float] = {}
    if metrics_file.exists():
        try:
            metrics = {k: v for k, v in json.loads(metrics_file.read_text()).items() if isinstance(v, (int, float))}
        except (ValueError, AttributeError):
            error = error or f"{METRICS_FILE} is unreadable"
    finished = bool(metrics)
    metrics |= analysis_headlines(job_dir)
    holder = read_lock(job_dir / LOCK_FILE)
    if finished:
        status = "finished"
    elif holder is not None and not stale(holder):
        status, error = "running", f"running: PID {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
    elif (job_dir / REQUEUED_FILE).exists():
        status, error = "requeued", (job_dir / REQUEUED_FILE).read_text().strip()
    else:
        status = "failed" if error_file.exists() else "missing metrics"
    if finished and error:  # refused before training (e.g. another config): the directory keeps its run and record
        error = f"finished; a later attempt failed: {error}"
    return Job(job_dir, name, overrides, status, metrics, error)


def analysis_headlines(job_dir: Path) -> dict[str, float]:
    """The headline numbers of the job's analyses (``analysis/<name>/summary.json``) as ``<name>.<key>``; for a
    K-network job (``networks/<k>/analysis/``), their mean over the networks, and ``<name>.<key>_sd``."""
    per_network: dict[str, list[float]] = {}
    for path in sorted(job_dir.glob("analysis/*/summary.json")) + sorted(job_dir.glob("networks/*/analysis/*/summary.json")):
        try:
            values = json.loads(path.read_text())
        except ValueError:
            continue
        for k, v in values.items():
            if isinstance(v, (int, float)):
                per_network.setdefault(f"{path.parent.name}.{k}", []).append(v)
    out: dict[str, float] = {}
    for name, values in per_network.items():
        out[name] = statistics.fmean(values) if len(values) > 1 else values[0]
        if len(values) > 1:
            out[f"{name}_sd"] = statistics.stdev(values)
    return out


def find_jobs(root: Path) -> list[Job]:
    """Every job directory under ``root`` (one with ``.hydra/overrides.yaml``), in natural order."""
    dirs = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    return [load_job(d, root) for d in sorted(dirs, key=_natural)]


def _metric_names(jobs: list[Job]) -> list[str]:
    first = ["accuracy", "mse", "loss"]
    names = {k for j in jobs for k in j.metrics}
    return [k for k in first if k in names] + sorted(names - set(first))


def _override_keys(jobs: list[Job]) -> tuple[list[str], list[str]]:
    """(keys whose value differs between jobs, keys with one value in every job)."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    varying = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    return varying, [k for k in keys if k not in varying]


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; nan for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


@dataclasses.dataclass
class Group:
    overrides: dict[str, str]
    jobs: list[Job]
    stats: dict[str, tuple[float, float]]  # metric -> (mean, sd) over the finished jobs


def group_jobs(jobs: list[Job], seed_key: str = "seed") -> list[Group]:
    """Jobs that differ only in ``seed_key``, with mean and sd of each metric over the finished ones."""
    varying, _ = _override_keys(jobs)
    by = [k for k in varying if k != seed_key]
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.overrides.get(k, "") for k in by), []).append(job)
    names = _metric_names(jobs)
    out = []
    for values, members in groups.items():
        done = [j for j in members if j.status == "finished"]
        stats = {m: mean_sd([j.metrics[m] for j in done if m in j.metrics]) for m in names}
        out.append(Group(dict(zip(by, values)), members, stats))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def summarize(root: Path, seed_key: str = "seed", write: bool = True) -> str:
    """The summary of the sweep(s) under ``root`` as text; also ``summary.csv`` (one row per job)
    and ``summary_groups.csv`` (mean and sd over seeds) in ``root`` when ``write``."""
    jobs = find_jobs(root)
    if not jobs:
        raise FileNotFoundError(f"{root}: no job directories (none has .hydra/overrides.yaml)")
    varying, common = _override_keys(jobs)
    metrics = _metric_names(jobs)
    printed = [m for m in metrics if not m.startswith(("accuracy/", "abort_rate/"))]  # per task and period: the csv only
    counts = {s: sum(j.status == s for j in jobs) for s in ("finished", "running", "requeued", "failed", "missing metrics")}
    out = [f"{len(jobs)} job{'s' * (len(jobs) != 1)} under {root}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    if common:
        out.append("common overrides: " + " ".join(f"{k}={jobs[0].overrides[k]}" for k in common))
    rows = [[j.name, *(j.overrides.get(k, "") for k in varying), j.status, *(_fmt(j.metrics.get(m, "")) for m in printed)] for j in jobs]
    out += ["", _table(["job", *varying, "status", *printed], rows)]
    for job in jobs:
        if job.error:
            out.append(f"  {job.name}: {job.error}")

    groups = group_jobs(jobs, seed_key)
    by = [k for k in varying if k != seed_key]
    if any(len(g.jobs) > 1 for g in groups):
        shown = [m for m in printed if m != "steps"]
        out += ["", f"mean ± sd over {seed_key} (sample sd; finished jobs only)"]
        grows = [
            [*(g.overrides[k] for k in by), f"{sum(j.status == 'finished' for j in g.jobs)}/{len(g.jobs)}",
             *(f"{_fmt(g.stats[m][0])} ± {_fmt(g.stats[m][1])}" for m in shown)]
            for g in groups
        ]
        out.append(_table([*by, "finished", *shown], grows))

    results = root / "optimization_results.yaml"
    if results.exists():
        best = yaml.safe_load(results.read_text()) or {}
        params = " ".join(f"{k}={v}" for k, v in (best.get("best_params") or {}).items())
        out += ["", f"optuna best: {params}  value {best.get('best_value')}"]

    if write:
        keys = varying + common
        write_csv(root / "summary.csv", ["job", *keys, "status", *metrics, "error"],
                  [[j.name, *(j.overrides.get(k, "") for k in keys), j.status, *(j.metrics.get(m, "") for m in metrics), j.error] for j in jobs])
        write_csv(root / "summary_groups.csv",
                  [*by, "n_jobs", "n_finished", *(f"{m}_{s}" for m in metrics for s in ("mean", "sd"))],
                  [[*(g.overrides[k] for k in by), len(g.jobs), sum(j.status == "finished" for j in g.jobs),
                    *(v for m in metrics for v in g.stats[m])] for g in groups])
        per = " (every task's and response period's scores too)" if len(printed) < len(metrics) else ""
        out += ["", f"wrote {root / 'summary.csv'} and {root / 'summary_groups.csv'}{per}"]
    out.append(f"TensorBoard (HParams tab compares the jobs): tensorboard --logdir {root}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nn4n-sweep-summary",
        description="Status and final metrics of every job of the nn4n-train -m sweep(s) under DIR, "
        "with mean ± sd over seeds; writes DIR/summary.csv and DIR/summary_groups.csv.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a sweep directory (hydra.sweep.dir), or a folder of them")
    parser.add_argument("--seed-key", default="seed", help="the override averaged over (default: seed)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no CSV files")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.exit(2, f"nn4n-sweep-summary: error: {args.dir}: not a directory\n")
    try:
        print(summarize(args.dir, args.seed_key, write=not args.no_write))
    except (FileNotFoundError, OSError, yaml.YAMLError) as err:
        parser.exit(2, f"nn4n-sweep-summary: error: {err}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
