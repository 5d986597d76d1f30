"""The README's perturbation example, generated: train the three-area network on the delayed perceptual decision,
run the perturbation survey on it, and write its tables into README.md (between the markers
``<!-- perturbation example: scripts/perturbation_example.py -->`` and ``<!-- end of perturbation example -->``).

    python scripts/perturbation_example.py                  # trains into runs/three_area unless it is there
    python scripts/perturbation_example.py --run DIR --no-write
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from results import ROOT, cpu_model, replace_between

TRAIN = ["arch=three_area", "task=pdm_delay_response"]


def command(name: str) -> list[str]:
    """The console script ``name`` of this Python's environment."""
    return [str(Path(sys.executable).parent / name)]


def cell(row: dict[str, str]) -> str:
    return f"{float(row['accuracy']):.2f} ({float(row['abort_rate']):.2f})"


def tables(rows: dict[str, dict[str, str]]) -> str:
    """Silencing: areas x windows; lesions: one row per projection. Accuracy (abort rate) in each cell."""
    silence = {(r["target"], r["window"]): r for r in rows.values() if r["kind"] == "silence"}
    areas = list(dict.fromkeys(area for area, _ in silence))
    windows = list(dict.fromkeys(window for _, window in silence))  # the whole trial, then the task's periods
    lines = ["| silenced area | " + " | ".join("whole trial" if w == "trial" else w for w in windows) + " |",
             "|---" * (len(windows) + 1) + "|"]
    lines += [f"| {a} | " + " | ".join(cell(silence[a, w]) for w in windows) + " |" for a in areas]
    lines += ["", "| projection cut | accuracy (abort rate) | change in accuracy |", "|---|---|---|"]
    lines += [f"| {r['target']} | {cell(r)} | {float(r['change_accuracy']):+.2f} |" for r in rows.values() if r["kind"] == "lesion"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "three_area")
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave README.md as it is")
    args = parser.parse_args()
    if not (args.run / "metrics.json").exists():
        subprocess.run([*command("nn4n-train"), *TRAIN, f"hydra.run.dir={args.run}"], check=True)
    trained = time.time()
    subprocess.run([*command("nn4n-analyze"), "analysis=perturbations", f"run={args.run}"], check=True)
    analysed = time.time()
    with open(args.run / "analysis" / "perturbations" / "perturbations.csv") as f:
        rows = {row["condition"]: row for row in csv.DictReader(f)}
    control = rows["control"]
    metrics = json.loads((args.run / "metrics.json").read_text())
    text = (f"Control (trained {metrics.get('steps')} steps, best checkpoint): accuracy {cell(control)} on the 256 held-out "
            f"trials, 95% interval {float(control['accuracy_low']):.2f}-{float(control['accuracy_high']):.2f}.\n\n"
            f"{tables(rows)}\n\nMeasured {datetime.date.today().isoformat()} on {cpu_model()} ({platform.machine()}): "
            f"training {metrics['wall_time_s'] / 60:.1f} min, the analysis {analysed - trained:.0f} s: "
            "`python scripts/perturbation_example.py`.")
    print(text)
    if not args.no_write:
        replace_between(ROOT / "README.md", "perturbation example", text, "scripts/perturbation_example.py")


if __name__ == "__main__":
    main()
