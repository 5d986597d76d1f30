"""Train every shipped task preset in every shipped arch, and every NeuroGym supervised task by its id, over
seeds; write the full table to docs/results.md and its summary into README.md. One invocation, one machine.

    python scripts/results.py                       # everything (hours on a 2-core CPU); resumable
    python scripts/results.py --only presets --archs two_area --seeds 0 1 2 3 4
    python scripts/results.py --jobs 4 --out runs/results

Each run is one ``nn4n-train`` command (listed in the table), in ``OUT/<row>/<config hash>/seed<k>``. Every
finished run is recorded in ``docs/results.jsonl`` with the hash of its composed config: a recorded run is
not trained again while that config is unchanged, so an invocation continues where an earlier one (on this
machine or, through the committed record, another) stopped, and a changed preset trains its rows again.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import math
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import OmegaConf

import nn4n_configs
from nn4n.analysis.ideal import ideal_accuracy
from nn4n.config import register_schema
from nn4n.metrics import ABSENT

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = Path(nn4n_configs.__file__).parent
# task=yang19 (20 tasks in one network) has its own table (scripts/multitask_results.py); task=neurogym, the
# default, is a task by its id: NeuroGym's PerceptualDecisionMaking-v0 is among the ids below
PRESETS = sorted(p.stem for p in (CONFIGS / "task").glob("*.yaml") if p.stem not in ("yang19", "neurogym"))
ARCHS = ("single", "two_area", "three_area")
LEARNED_ACCURACY, LEARNED_OF_IDEAL, LEARNED_R2 = 0.8, 0.9, 0.9
LEDGER = ROOT / "docs" / "results.jsonl"
# what a run records: its held-out scores, activity statistics and wall time
RECORDED = ("accuracy", "abort_rate", "interval_error_ms", "mse", "r2", "loss", "steps", "wall_time_s", "activity")
# train keys that change how a run executes, not what it learns: left out of the config hash
EXECUTION = ("checkpoint_every", "device", "engine", "threads", "retain_freed_memory", "data_workers")
# NeuroGym 2.3.1's supervised tasks, and four more, by id: what each needs beyond its id (the periods to score)
NEUROGYM = {
    "AnnubesEnv-v0": ["+task.params={session:{v:0.5,a:0.5},catch_prob:0.5}", "task.decision_period=stimulus"],
    "ContextDecisionMaking-v0": [],
    "DelayComparison-v0": [],
    "DelayMatchCategory-v0": ["task.decision_period=test"],
    "DelayMatchSample-v0": [],
    "DelayMatchSampleDistractor1D-v0": ["task.decision_period=[test1,test2,test3]"],
    "DelayPairedAssociation-v0": [],
    "DualDelayMatchSample-v0": ["task.decision_period=[test1,test2]"],
    "GoNogo-v0": [],
    "HierarchicalReasoning-v0": ["task.decision_period=[rule_target,decision]", "task.trials_per_row=4"],
    "IntervalDiscrimination-v0": [],
    "MotorTiming-v0": ["task.decision_period=production"],
    "MultiSensoryIntegration-v0": [],
    "OneTwoThreeGo-v0": ["task.decision_period=interval3+response"],
    "PerceptualDecisionMaking-v0": [],
    "PerceptualDecisionMakingDelayResponse-v0": [],
    "ProbabilisticReasoning-v0": [],
    "PulseDecisionMaking-v0": [],
    "ReachingDelayResponse-v0": [],
    "ReadySetGo-v0": ["task.decision_period=production"],
    "ToneDetection-v0": ["task.decision_period=stimulus"],
    "AntiReach-v0": [],
    "PostDecisionWager-v0": [],
    "Reaching1D-v0": ["task.decision_period=reach"],
    "EconomicDecisionMaking-v0": [],
}
# The training preset of each NeuroGym id that train=long leaves below the learned line on a seed, still rising or
# on a plateau it leaves later (docs/science.md)
NEUROGYM_TRAINING = {task: "longer" for task in ("DelayMatchSampleDistractor1D-v0", "IntervalDiscrimination-v0",
                                                 "PostDecisionWager-v0")}
# The NeuroGym ids that cannot be learned as NeuroGym ships them, at dt 20 ms with a supervised loss: why (and the
# preset that changes it, docs/configuration.md, Tasks). A row of one of them that is not learned says so in its table.
AS_SHIPPED = {
    "ContextDecisionMaking-v0": "nothing marks when to answer: the fixation input ends with the fixation period, and the "
                                "random delay and the decision period are both silent (`task=context_dm` changes that)",
    "DelayMatchCategory-v0": "its two ring inputs, at 0 and π, see only the cosine of the sample's direction, the same for "
                             "both categories, the upper and lower half circle (`task=delay_match_category` changes that)",
    "PulseDecisionMaking-v0": "its evidence pulses last 10 ms, less than a step, so none reaches the input "
                              "(`task=pulse_dm` changes that)",
    "HierarchicalReasoning-v0": "the rule switches in unannounced blocks and no input ever tells the network how a trial "
                                "went, so consecutive trials do not reveal it either: the rule period is at chance, and "
                                "so is the decision, which depends on the rule",
}


@dataclass
class Row:
    """One line of the table: a command, run once per seed."""

    section: str
    task: str
    arch: str
    training: str
    overrides: list[str]
    seeds: list[int]
    config: str = ""  # the hash of its composed config (fingerprint)
    runs: list[dict[str, Any]] = field(default_factory=list)  # per seed: metrics, {"error": ...} or PENDING

    @property
    def key(self) -> str:
        return re.sub(r"[^\w.=+-]+", "_", "_".join([self.task, self.arch, self.training]))

    def command(self) -> str:
        return shlex.join(["nn4n-train", *self.overrides])


# The training preset of each task preset that does not learn in train=default's 1000 steps, or in train=long's 3000
# on every seed (docs/science.md)
TRAINING = {task: "long" for task in ("delay_match_sample", "delay_match_category", "pdm_delay_response",
                                      "perceptual_dm", "pulse_dm", "multisensory", "path_integration")}
TRAINING |= {"interval_discrimination": "longer", "sine_wave": "continuous", "flip_flop": "continuous"}


def fingerprint(overrides: list[str]) -> str:
    """The hash of the config ``nn4n-train OVERRIDES`` composes (every key, schema defaults included), less
    the seed, logging, the run's name and the keys in EXECUTION."""
    with hydra.initialize_config_module("nn4n_configs", version_base="1.3"):
        cfg = OmegaConf.to_container(hydra.compose("config", overrides), resolve=False)
    for key in ("seed", "name", "logging"):
        cfg.pop(key)
    for key in EXECUTION:
        cfg["train"].pop(key)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def rows(args: argparse.Namespace) -> list[Row]:
    out = []
    if args.only in (None, "presets"):
        for task in PRESETS:
            for arch in args.archs:
                seeds = args.seeds + args.extra_two_area_seeds if arch == "two_area" else args.seeds
                training = TRAINING.get(task, "default")
                overrides = [f"arch={arch}", f"task={task}", *([f"train={training}"] if training != "default" else []), *args.set]
                out.append(Row("presets", task, arch, training, overrides, seeds))
    if args.only in (None, "neurogym"):
        for task, extra in NEUROGYM.items():
            training = NEUROGYM_TRAINING.get(task, "long")
            out.append(Row("neurogym", task, "two_area", training,
                           ["arch=two_area", f"task.name={task}", f"train={training}", *extra, *args.set], args.seeds))
    return out


PENDING: dict[str, Any] = {"pending": True}  # a run not trained yet (--no-train)


def measured(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that have metrics (not failed, not pending)."""
    return [r for r in runs if "error" not in r and r is not PENDING]


class Ledger:
    """The record of finished runs (one JSON line each), by row, config hash and seed; appended as runs finish."""

    def __init__(self, path: Path, jobs: int) -> None:
        self.path, self.jobs, self.lock = path, jobs, threading.Lock()
        self.machine, self.commit = f"{cpu_model()} ({platform.machine()})", commit()
        lines = path.read_text().splitlines() if path.exists() else []
        self.entries = {(e["row"], e["config"], e["seed"]): e for e in map(json.loads, filter(None, lines))}

    def get(self, row: Row, seed: int) -> dict[str, Any] | None:
        return self.entries.get((row.key, row.config, seed))

    def add(self, row: Row, seed: int, run_dir: Path) -> dict[str, Any]:
        """Record the finished run in ``run_dir``; its entry."""
        metrics = json.loads((run_dir / "metrics.json").read_text())
        entry = {"row": row.key, "config": row.config, "seed": seed, "command": row.command(),
                 "date": datetime.date.fromtimestamp((run_dir / "metrics.json").stat().st_mtime).isoformat(),
                 "cpu": self.machine, "commit": self.commit, "jobs": self.jobs,
                 "metrics": {k: metrics[k] for k in RECORDED if k in metrics} | {"targets": targets(run_dir)}}
        with self.lock:
            with self.path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            self.entries[row.key, row.config, seed] = entry
        return entry


def run(row: Row, seed: int, out: Path, ledger: Ledger, train: bool = True) -> dict[str, Any]:
    """The metrics of one seed of ``row``: recorded in ``ledger``, or trained into ``out`` and recorded; the
    one-line error if it fails, PENDING when it is not recorded and ``train`` is false."""
    if (entry := ledger.get(row, seed)) is not None:
        return entry["metrics"]
    if not train:
        return PENDING
    run_dir = out / row.key / row.config / f"seed{seed}"
    if not (run_dir / "metrics.json").exists():
        cmd = [sys.executable, "-m", "nn4n", *row.overrides, f"seed={seed}", "logging=minimal", "logging.progress=lines",
               f"hydra.run.dir={run_dir}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1].removeprefix("nn4n-train: error: ")}
    return ledger.add(row, seed, run_dir)["metrics"]


def targets(run_dir: Path) -> int | None:
    """The number of distinct correct answers in one response period of the run's held-out trials (the
    largest over its periods: a task scored in several asks a different question in each)."""
    import numpy as np

    path = run_dir / "activity.npz"
    if not path.exists():
        return None
    with np.load(path) as record:
        if "target_choice" not in record:
            return None
        answers, present, period = record["target_choice"], record["outcome"] != ABSENT, record["response_period"]
        return max(len(np.unique(answers[:, period == name][present[:, period == name]])) for name in np.unique(period))


def commit() -> str | None:
    """The nn4n commit this script runs from (None outside a git checkout)."""
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def mean_sd(values: list[float], digits: int) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.{digits}f}{sd}"


def summarize(row: Row, ideal: dict[str, float | None]) -> dict[str, str]:
    """The table's cells for ``row``."""
    ok = measured(row.runs)
    pending = row.runs.count(PENDING)
    if not ok:
        if pending == len(row.runs):
            return {"result": "not run yet", "learned": "–"}
        return {"result": f"not run: {next(r for r in row.runs if 'error' in r)['error']}", "learned": "no"}
    cells: dict[str, str] = {"n": f"{len(ok)}/{len(row.runs)}"}
    failed = [r["error"] for r in row.runs if "error" in r]
    if "accuracy" in ok[0]:
        acc = [r["accuracy"] for r in ok]
        cells["result"] = f"accuracy {mean_sd(acc, 3)}, aborts {mean_sd([r['abort_rate'] for r in ok], 3)}"
        timing = "interval_error_ms" in ok[0]  # one correct answer, at the right time: no chance level by counting
        if timing:
            cells["result"] += f", interval error {mean_sd([r['interval_error_ms'] for r in ok], 0)} ms"
        cells["chance"] = f"{1 / ok[0]['targets']:.2f}" if ok[0].get("targets") and not timing else "–"
        best = ideal.get(row.task)
        cells["ideal"] = f"{best:.3f}" if best is not None else "–"
        threshold = LEARNED_OF_IDEAL * best if best is not None else LEARNED_ACCURACY
        cells["learned"] = "yes" if min(acc) >= threshold and not failed else "no"
    elif "r2" in ok[0]:
        cells["result"] = f"MSE {mean_sd([r['mse'] for r in ok], 4)}, R² {mean_sd([r['r2'] for r in ok], 3)}"
        cells["learned"] = "yes" if min(r["r2"] for r in ok) >= LEARNED_R2 and not failed else "no"
    else:
        cells["result"] = f"loss {mean_sd([r['loss'] for r in ok], 4)} (no response period scored)"
        cells["learned"] = "–"
    def population(stat: str, pick: Any) -> list[float]:
        return [pick([v for k, v in r.get("activity", {}).items() if k.startswith(f"{stat}/") and k.endswith("/E")] or [math.nan])
                for r in ok]

    cells["activity"] = (f"rate {mean_sd(population('rates', statistics.fmean), 2)}, silent "
                         f"{mean_sd(population('silent', max), 2)}, saturated {mean_sd(population('saturated', max), 2)}")
    cells["wall"] = f"{statistics.fmean(r['wall_time_s'] for r in ok) / 60:.1f}"
    if cells["learned"] == "no" and row.section == "neurogym" and row.task in AS_SHIPPED:
        cells["learned"] = f"no, as NeuroGym ships it: {AS_SHIPPED[row.task]}"
    if failed:
        cells["result"] += f"; failed: {failed[0]}"
    if pending:
        cells["result"] += f"; {pending} seed{'s' * (pending > 1)} not run yet"
        cells["learned"] = cells["learned"].replace("yes", "so far")
    return cells


def ideal_of(row: Row) -> float | None:
    """The ideal observer's accuracy on the row's task, with its preset's timing and parameters."""
    if row.section == "neurogym":
        return ideal_accuracy(row.task)
    preset = yaml.safe_load((CONFIGS / "task" / f"{row.task}.yaml").read_text())
    return ideal_accuracy(preset["name"], preset.get("dt", 20.0), timing=preset.get("timing"), params=preset.get("params"))


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def table(selected: list[Row], ideal: dict[str, float | None]) -> str:
    header = ("| task | arch | training | seeds run | held-out result (mean ± sd over seeds) | chance | ideal | learned | "
              "E populations: mean rate, largest silent fraction, largest saturated fraction | wall (min) | command |")
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for row in selected:
        c = summarize(row, ideal)
        lines.append(f"| {row.task} | {row.arch} | {row.training} | {c.get('n', '0')} | {c['result']} | {c.get('chance', '–')} "
                     f"| {c.get('ideal', '–')} | {c['learned']} | {c.get('activity', '–')} | {c.get('wall', '–')} | `{row.command()}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/results"), help="where runs train")
    parser.add_argument("--ledger", type=Path, default=LEDGER, help="the record of finished runs (appended)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one core each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extra-two-area-seeds", type=int, nargs="*", default=[3, 4],
                        help="more seeds for the presets in two_area (the stability check)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--only", choices=["presets", "neurogym"])
    parser.add_argument("--tasks", nargs="*", help="only these presets or task ids")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides added to every run (an ablation: give it its own --out)")
    parser.add_argument("--no-write", action="store_true", help="print the tables; leave docs/ and README.md as they are")
    parser.add_argument("--no-train", action="store_true",
                        help="tabulate the finished runs only; the others are marked 'not run yet'")
    args = parser.parse_args()
    selected = [r for r in rows(args) if not args.tasks or r.task in args.tasks]
    register_schema()
    for row in selected:
        row.config = fingerprint(row.overrides)
    ledger = Ledger(args.ledger, args.jobs)
    # the seeds every row has first, two-area presets first: the stability seeds last
    jobs = sorted(((row, seed) for row in selected for seed in row.seeds),
                  key=lambda job: (job[1] not in args.seeds, job[0].section != "presets", job[0].arch != "two_area"))
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for (row, seed), metrics in zip(jobs, pool.map(lambda job: run(job[0], job[1], args.out, ledger, not args.no_train), jobs)):
            row.runs.append(metrics)
            print(f"{row.key} seed {seed}: {metrics.get('accuracy', metrics.get('r2', metrics.get('error', 'not run yet')))}", flush=True)
    ideal = {row.task: ideal_of(row) for row in selected}
    when = provenance(selected, ledger)
    tables = {name: table([r for r in selected if r.section == name], ideal)
              for name in ("presets", "neurogym") if any(r.section == name for r in selected)}
    print(*tables.values(), when, sep="\n\n")
    if not args.no_write:
        write(tables, when, selected, ideal)


def provenance(selected: list[Row], ledger: Ledger) -> str:
    """When, where and how the recorded runs behind the tables were trained (they may span several
    invocations, dates and commits)."""
    chosen = {(row.key, row.config, seed) for row in selected for seed in row.seeds}
    entries = [e for key, e in ledger.entries.items() if key in chosen]  # in the order they were recorded
    pending = sum(row.runs.count(PENDING) for row in selected)
    waiting = f" ({pending} not run yet)" if pending else ""
    command = shlex.join(["python", "scripts/results.py", *sys.argv[1:]])
    if not entries:
        return f"No run recorded yet{waiting}: `{command}`"
    dates = [e["date"] for e in entries]
    span = " to ".join(dict.fromkeys([min(dates), max(dates)]))
    where = ", ".join(dict.fromkeys(e["cpu"] for e in entries))
    commits = list(dict.fromkeys(str(e["commit"]) for e in entries))
    at = f"nn4n {commits[0]}" if len(commits) == 1 else f"nn4n {commits[0]} to {commits[-1]} ({len(commits)} commits)"
    at_once = "/".join(map(str, sorted({e["jobs"] for e in entries})))
    hours = sum(e["metrics"]["wall_time_s"] for e in entries) / 3600
    return (f"Measured {span} on {where} at {at}, {at_once} runs at once: {len(entries)} runs{waiting}, "
            f"{hours:.1f} h of training in all (the sum of their wall times; every run in docs/results.jsonl): `{command}`")


def replace_between(path: Path, name: str, text: str, script: str = "scripts/results.py") -> None:
    """Replace what lies between ``<!-- name: script -->`` and ``<!-- end of name -->`` in ``path``."""
    begin, end = f"<!-- {name}: {script} -->", f"<!-- end of {name} -->"
    old = path.read_text()
    path.write_text(old.split(begin)[0] + f"{begin}\n{text}\n{end}" + old.split(end)[1])


def write(sections: dict[str, str], when: str, selected: list[Row], ideal: dict[str, float | None]) -> None:
    """docs/results.md's generated sections (those this invocation ran), and the README's summary of the
    two-area presets."""
    for name, text in sections.items():
        replace_between(ROOT / "docs" / "results.md", name, f"{when}.\n\n{text}")
    two_area = [r for r in selected if r.section == "presets" and r.arch == "two_area"]
    if not two_area:
        return
    summary = table(two_area, ideal).splitlines()
    keep = [0, 2, 3, 4, 7, 9]  # task, training, seeds, result, learned, wall
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in summary]
    short = ["| " + " | ".join(cells[i][k] for k in keep) + " |" for i in range(len(cells))]
    short[1] = "| " + " | ".join("---" for _ in keep) + " |"
    replace_between(ROOT / "README.md", "results summary", "\n".join(short) + f"\n\n{when}.")


if __name__ == "__main__":
    main()
