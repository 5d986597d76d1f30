"""Train E/I networks on the 20 tasks of Yang et al. 2019 (``task=yang19``) and tabulate every task's held-out
accuracy, with the date, CPU and wall time: the full table in docs/results.md, the summary in README.md. Then the
task-variance clusters of each network (``nn4n-analyze analysis=task_variance``).

    python scripts/multitask_results.py                        # one area of 256 units, and two areas; resumable
    python scripts/multitask_results.py --archs single --steps 20000 --out runs/yang19

Each run is one ``nn4n-train`` command (shown in the table) in ``OUT/<arch>``; a finished run (its
``metrics.json``) is not trained again, an interrupted one resumes, and one given more ``--steps`` trains
further (with a constant learning rate, as the run that had those steps from the start).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import cpu_model, replace_between  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCHS = {"single": ["model.areas.hidden.size=256"], "two_area": ["arch=two_area"]}
GOAL_MIN, GOAL_MEAN = 0.8, 0.9  # every task, and their mean


def train(arch: str, args: argparse.Namespace) -> list[str]:
    """Train (or resume) the ``arch`` network; its command, as the table shows it."""
    overrides = ["task=yang19", *ARCHS[arch], f"train.steps={args.steps}", f"train.eval_every={args.eval_every}",
                 f"train.eval_trials={args.eval_trials}", "logging=minimal", "logging.save_activity=false", *args.set]
    run_dir, metrics = args.out / arch, args.out / arch / "metrics.json"
    if not metrics.exists() or json.loads(metrics.read_text())["steps"] != args.steps:  # new, stopped, or to train further
        done = subprocess.run([sys.executable, "-m", "nn4n", *overrides, "logging.progress=lines", f"hydra.run.dir={run_dir}"])
        if done.returncode:
            sys.exit(f"{arch}: nn4n-train exited {done.returncode}")
    if not (run_dir / "analysis" / "task_variance" / "summary.json").exists():
        subprocess.run([sys.executable, "-c", "from nn4n.analyze import main; main()", "analysis=task_variance",
                        f"run={run_dir}"], check=True)
    return ["nn4n-train", *overrides]


def eval_curves(run_dir: Path, tasks: list[str]) -> tuple[list[int], np.ndarray]:
    """The evaluation steps and every task's held-out accuracy at each, (tasks, evaluations), from TensorBoard."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    curves = np.array([[e.value for e in events.Scalars(f"eval/accuracy/{t}")] for t in tasks])
    return [e.step for e in events.Scalars("eval/accuracy")], curves


def goal_step(steps: list[int], curves: np.ndarray) -> int | None:
    """The first evaluation step at which every task reached GOAL_MIN and their mean GOAL_MEAN (None: never)."""
    reached = (curves.min(0) >= GOAL_MIN) & (curves.mean(0) >= GOAL_MEAN)
    return steps[int(reached.argmax())] if reached.any() else None


def tables(archs: list[str], commands: dict[str, list[str]], args: argparse.Namespace) -> tuple[str, str]:
    """The full table (every task, every arch) and the summary (one line per arch)."""
    metrics = {a: json.loads((args.out / a / "metrics.json").read_text()) for a in archs}
    clusters = {a: json.loads((args.out / a / "analysis" / "task_variance" / "summary.json").read_text()) for a in archs}
    tasks = [k.removeprefix("accuracy/") for k in metrics[archs[0]] if k.startswith("accuracy/")]
    full = ["| task | " + " | ".join(f"{a}: accuracy (aborts)" for a in archs) + " |", "|---|" + "---:|" * len(archs)]
    for t in tasks:
        full.append(f"| {t.removeprefix('yang19.').removesuffix('-v0')} | " + " | ".join(
            f"{metrics[a][f'accuracy/{t}']:.3f} ({metrics[a][f'abort_rate/{t}']:.3f})" for a in archs) + " |")
    summary = ["| network | mean accuracy | least (task) | tasks >= 0.8 | best mean (step) | steps | wall (h) | goal reached at step | clusters | command |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for a in archs:
        m, by_task = metrics[a], {t: metrics[a][f"accuracy/{t}"] for t in tasks}
        least = min(by_task, key=by_task.get)
        steps, curves = eval_curves(args.out / a, tasks)
        goal, best = goal_step(steps, curves), int(curves.mean(0).argmax())
        summary.append(f"| {a} | {m['accuracy']:.3f} | {by_task[least]:.3f} ({least.removeprefix('yang19.').removesuffix('-v0')}) | "
                       f"{sum(v >= GOAL_MIN for v in by_task.values())}/{len(tasks)} | {curves.mean(0)[best]:.3f} ({steps[best]}) | "
                       f"{m['steps']} | {m['wall_time_s'] / 3600:.2f} | {goal if goal is not None else 'not reached'} | "
                       f"{clusters[a]['n_clusters']}{' (the largest tried)' if clusters[a]['n_clusters'] == clusters[a]['largest_k_tried'] else ''} | "
                       f"`{shlex.join(commands[a])}` |")
    when = (f"Measured {datetime.date.today().isoformat()} on {cpu_model()} ({platform.machine()}), wall time as "
            f"nn4n-train measured it (other jobs may have shared the cores), {args.eval_trials // len(tasks)} held-out "
            f"trials per task: `{shlex.join(['python', 'scripts/multitask_results.py', *sys.argv[1:]])}`")
    return "\n".join(full) + f"\n\n{when}.", "\n".join(summary) + f"\n\n{when}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/yang19"))
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--steps", type=int, default=40000)
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--eval-trials", type=int, default=1280, help="held-out trials, shared by the 20 tasks")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides added to every run")
    parser.add_argument("--no-write", action="store_true", help="print the tables; leave docs/ and README.md as they are")
    args = parser.parse_args()
    commands = {a: train(a, args) for a in args.archs}
    full, summary = tables(args.archs, commands, args)
    print(full, summary, sep="\n\n")
    if not args.no_write:
        replace_between(ROOT / "docs" / "results.md", "multitask", full, "scripts/multitask_results.py")
        replace_between(ROOT / "README.md", "multitask summary", summary, "scripts/multitask_results.py")


if __name__ == "__main__":
    main()
