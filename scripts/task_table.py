"""Train one network per shipped task and print a markdown table: task, metric, wall time, command.

    python scripts/task_table.py --out runs/table [--arch two_area] [--tasks go_nogo sine_wave]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nn4n_configs

TASKS = sorted(p.stem for p in (Path(nn4n_configs.__file__).parent / "task").glob("*.yaml"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/table"))
    parser.add_argument("--arch", default="two_area")
    parser.add_argument("--tasks", nargs="*", default=TASKS)
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. train.steps=1000")
    args = parser.parse_args()
    rows = ["| task | arch | held-out result | wall time | command |", "| --- | --- | --- | --- | --- |"]
    for task in args.tasks:
        overrides = [f"arch={args.arch}", f"task={task}", "logging=minimal", *args.overrides]
        run_dir = args.out / task
        subprocess.run([sys.executable, "-m", "nn4n", *overrides, f"hydra.run.dir={run_dir}"], check=True)
        m = json.loads((run_dir / "metrics.json").read_text())
        result = f"accuracy {m['accuracy']:.3f}" if "accuracy" in m else f"MSE {m['mse']:.4f}, R² {m['r2']:.3f}"
        rows.append(f"| {task} | {args.arch} | {result} | {m['wall_time_s'] / 60:.1f} min | `nn4n-train {' '.join(overrides)}` |")
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
