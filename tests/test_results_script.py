"""scripts/results.py: runs are recorded with the hash of their composed config, reused while it holds and
trained again when it changes."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "results.py"


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("results_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    module.register_schema()
    return module


def test_fingerprint_follows_what_a_run_learns(results) -> None:
    base = results.fingerprint(["arch=two_area", "task=go_nogo"])
    assert results.fingerprint(["arch=two_area", "task=go_nogo"]) == base
    # how the run executes and the seed (a separate key of the record) leave it unchanged
    assert results.fingerprint(["arch=two_area", "task=go_nogo", "train.device=cpu", "train.threads=2", "seed=3"]) == base
    changed = [["arch=three_area", "task=go_nogo"], ["arch=two_area", "task=pulse_dm"],
               ["arch=two_area", "task=go_nogo", "train.lr=0.001"], ["arch=two_area", "task=go_nogo", "++task.timing.decision=300"],
               ["arch=two_area", "task=go_nogo", "model.areas.motor.tau=150"]]
    assert len({base, *(results.fingerprint(overrides) for overrides in changed)}) == 1 + len(changed)


def _results(tmp_path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), "--only", "presets", "--archs", "single", "--seeds", "0",
                           "--out", str(tmp_path / "runs"), "--ledger", str(tmp_path / "results.jsonl"), "--no-write", *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_a_recorded_run_is_reused_until_its_config_changes(tmp_path: Path) -> None:
    short = ["--set", "train.steps=4", "train.eval_every=4", "train.eval_trials=16"]
    first = _results(tmp_path, "--tasks", "go_nogo", *short)
    (entry,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert (entry["row"], entry["seed"], entry["jobs"]) == ("go_nogo_single_default", 0, 2)
    run_dir = tmp_path / "runs" / entry["row"] / entry["config"] / "seed0"
    assert entry["metrics"]["accuracy"] == json.loads((run_dir / "metrics.json").read_text())["accuracy"]
    assert entry["metrics"]["targets"] == 2 and entry["metrics"]["steps"] == 4
    assert "1 runs" in first and "| go_nogo | single | default | 1/1 |" in first

    # the run folders are gone: the record alone gives the same table, and nothing trains again
    shutil.rmtree(tmp_path / "runs")
    again = _results(tmp_path, "--tasks", "go_nogo", "context_dm", "--no-train", *short)
    assert first.split("\n\n")[0].splitlines()[2] in again  # go_nogo's line, unchanged
    assert "| context_dm | single | default | 0 | not run yet |" in again and "(1 not run yet)" in again
    assert not (tmp_path / "runs").exists()

    # another config (more steps) is another row: trained and recorded beside the first
    _results(tmp_path, "--tasks", "go_nogo", "--set", "train.steps=6", "train.eval_every=6", "train.eval_trials=16")
    entries = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [e["metrics"]["steps"] for e in entries] == [4, 6] and entries[0]["config"] != entries[1]["config"]


def test_a_neurogym_id_that_cannot_be_learned_as_shipped_says_why(results) -> None:
    def learned(task: str, accuracy: float) -> str:
        row = results.Row("neurogym", task, "two_area", "long", [f"task.name={task}"], [0, 1])
        row.runs = [{"accuracy": accuracy, "abort_rate": 0.0, "wall_time_s": 60.0, "targets": 2}] * 2
        return results.summarize(row, {})["learned"]

    assert learned("DelayMatchCategory-v0", 0.95) == "yes"
    assert learned("DelayMatchCategory-v0", 0.5).startswith("no, as NeuroGym ships it: its two ring inputs")
    assert learned("DelayMatchCategory-v0", 0.5).endswith("(`task=delay_match_category` changes that)")
    assert learned("GoNogo-v0", 0.5) == "no"  # no reason known: a plain no
    assert set(results.AS_SHIPPED) <= set(results.NEUROGYM)


def test_a_timing_task_has_no_chance_level_by_counting(results) -> None:
    row = results.Row("neurogym", "ReadySetGo-v0", "two_area", "long", ["task.name=ReadySetGo-v0"], [0])
    row.runs = [{"accuracy": 0.9, "abort_rate": 0.0, "interval_error_ms": 12.0, "wall_time_s": 60.0, "targets": 1}]
    cells = results.summarize(row, {})
    assert cells["chance"] == "–" and cells["result"].endswith("interval error 12 ms") and cells["learned"] == "yes"


def test_chance_counts_the_answers_of_one_response_period(results, tmp_path: Path) -> None:
    import numpy as np

    # two trials, each scored in a rule period (answers 1 or 2) and a decision period (3 or 4): four answers
    # in all, two per question; the second trial's last window is absent (-3), its target not an answer
    np.savez(tmp_path / "activity.npz", target_choice=np.array([[1, 3, 2, 4], [2, 4, 1, 0]]),
             outcome=np.array([[1, 0, 1, 1], [1, -1, 0, -3]]),
             response_period=np.array(["rule", "decision", "rule", "decision"]))
    assert results.targets(tmp_path) == 2
    np.savez(tmp_path / "activity.npz", target_choice=np.array([[1, 3], [2, 4], [3, 1]]),
             outcome=np.ones((3, 2), dtype=int), response_period=np.array(["rule", "decision"]))
    assert results.targets(tmp_path) == 3
    (tmp_path / "activity.npz").unlink()
    assert results.targets(tmp_path) is None


def test_each_row_names_its_training_preset(results) -> None:
    import argparse

    args = argparse.Namespace(only=None, archs=["two_area"], seeds=[0], extra_two_area_seeds=[3], set=[])
    by_task = {row.task: row for row in results.rows(args)}
    assert by_task["DelayMatchSampleDistractor1D-v0"].training == "longer"
    assert "train=longer" in by_task["DelayMatchSampleDistractor1D-v0"].command()
    assert by_task["interval_discrimination"].training == by_task["IntervalDiscrimination-v0"].training == "longer"
    assert by_task["GoNogo-v0"].command().count("train=") == 1 and by_task["GoNogo-v0"].training == "long"
    assert by_task["sine_wave"].training == "continuous" and by_task["go_nogo"].training == "default"
    assert by_task["go_nogo"].seeds == [0, 3] and by_task["GoNogo-v0"].seeds == [0]


def test_provenance_names_the_first_and_last_commit_recorded(results, tmp_path: Path) -> None:
    """The commits span the record in the order runs were recorded, not the order of the table's rows."""
    rows = [results.Row("presets", task, "single", "default", [], [0], config="c") for task in ("a_task", "b_task")]
    ledger_path = tmp_path / "results.jsonl"
    entries = [{"row": row.key, "config": "c", "seed": 0, "date": "2026-01-01", "cpu": "cpu", "commit": commit, "jobs": 1,
                "metrics": {"wall_time_s": 60.0}} for row, commit in ((rows[1], "old"), (rows[0], "new"))]
    ledger_path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert "nn4n old to new (2 commits)" in results.provenance(rows, results.Ledger(ledger_path, 1))
