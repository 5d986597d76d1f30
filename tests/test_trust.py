"""Run folders shared and run folders from others: one writer at a time, and nothing from a folder runs as code."""
from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nn4n import rundir
from nn4n.rundir import LOCK_FILE, RunLock, RunLocked
from helpers import nn4n_train_in_process


def write_lock(run_dir: Path, host: str, pid: int, age_s: float = 0.0) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    path.write_text(json.dumps({"host": host, "pid": pid, "purpose": "training", "since": "2026-12-06 10:00:00"}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_lock_refuses_a_second_writer_and_names_the_holder(tmp_path: Path) -> None:
    with RunLock(tmp_path, "training"):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(RunLocked, match=rf"is in use: training by PID {os.getpid()} on {socket.gethostname()} since "):
            RunLock(tmp_path).__enter__()
    assert not (tmp_path / LOCK_FILE).exists()  # released
    with RunLock(tmp_path):
        pass


def test_a_lock_left_by_a_killed_writer_on_this_host_is_taken_over(tmp_path: Path) -> None:
    write_lock(tmp_path, socket.gethostname(), dead_pid())
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_blocks_until_its_heartbeat_is_old(tmp_path: Path) -> None:
    write_lock(tmp_path, "node042", 12345, age_s=rundir.STALE_AFTER_S - 60)
    with pytest.raises(RunLocked, match=r"PID 12345 on node042 .* taken over once its heartbeat is 300 s old"):
        RunLock(tmp_path).__enter__()
    write_lock(tmp_path, "node042", 12345, age_s=rundir.STALE_AFTER_S + 60)
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == socket.gethostname()


def test_the_holder_keeps_its_heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.05)
    with RunLock(tmp_path):
        os.utime(tmp_path / LOCK_FILE, (0, 0))
        time.sleep(0.3)
        assert time.time() - (tmp_path / LOCK_FILE).stat().st_mtime < 5  # refreshed by the holder


# ----------------------------------------------------------------------------- files read as data
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("content, message", [
    (b"areas:\n  A: {size: 4}\n  A: {size: 8}\n", "line 4: duplicate key 'A'"),
    (b"areas: {A: {size: 4}\n", "line 3: expected ',' or '}'"),
    (b"areas: {A: {size: \xff}}\n", "not UTF-8 text"),
    (b"areas: !!python/object/apply:os.system [touch pwned]\n", "could not determine a constructor for the tag"),
    (ALIAS_BOMB.encode(), "more than 100000 values once its aliases (*name) are expanded: refused"),
    (b"- {size: 4}\n", "a arch file must be a mapping of settings, got list"),
    (b"", "a arch file must be a mapping of settings, got an empty file"),
    (b'areas: {"": {size: 4}}\n', "model.areas.: an area name is a letter followed by letters"),
])
def test_a_config_folder_is_read_as_data_in_one_line(content: bytes, message: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "mine" / "arch").mkdir(parents=True)
    (tmp_path / "mine" / "arch" / "bad.yaml").write_bytes(b"# @package model\n" + content)
    started = time.perf_counter()
    code = nn4n_train_in_process(["--config-dir", "mine", "arch=bad", "debug=fast", "hydra.run.dir=run"], monkeypatch, tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert time.perf_counter() - started < 20 and not (tmp_path / "run").exists() and not (tmp_path / "pwned").exists()


def test_interrupted_pickles_with_its_signal() -> None:
    """A sweep's launcher unpickles what a job raised: scancel's SIGTERM comes back as it was raised."""
    import pickle

    from nn4n.train import Interrupted

    back = pickle.loads(pickle.dumps(Interrupted("SIGTERM at step 3", 15)))
    assert (type(back), str(back), back.exit_code) == (Interrupted, "SIGTERM at step 3", 143)


# ----------------------------------------------------------------------------- someone else's run folder
def fake_run(tmp_path: Path, overrides: str, config: dict | None = None) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(overrides)
    if config is not None:
        (run / ".hydra" / "config.yaml").write_text(json.dumps(config))
    return run


def planted_task_code(tmp_path: Path) -> Path:
    """A task folder whose import leaves a marker: a run folder's code running would show."""
    folder = tmp_path / "their_tasks"
    folder.mkdir()
    (folder / "task.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').write('ran')\n")
    return folder


def test_resume_names_the_runs_task_code_instead_of_importing_it(tmp_path: Path) -> None:
    from nn4n.cli import _resumed
    from nn4n.errors import ConfigError

    folder = planted_task_code(tmp_path)
    run = fake_run(tmp_path, f"- task.dirs=[{folder}]\n- task.name=Mine-v0\n")
    with pytest.raises(ConfigError, match=rf"^resume: the run in {run} imports task code \(task.dirs=\[{folder}\]\); code "
                                          r"from a run folder runs only when you name it"):
        _resumed([f"resume={run}"])
    assert _resumed([f"resume={run}", f"task.dirs=[{folder}]"])[-1] == f"task.dirs=[{folder}]"  # named: trusted
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize("overrides, message", [
    ("- hydra.job_logging.root.level=DEBUG\n", "'hydra.job_logging.root.level=DEBUG' is not an nn4n setting"),
    ("seed: 3\n", "not a list of at most 1000 overrides"),
    ("- seed=1\n- seed=1\n" * 600, "not a list of at most 1000 overrides"),
    (ALIAS_BOMB, "more than 100000 values once its aliases"),
    ("- !!python/object/apply:os.system [touch pwned]\n", "could not determine a constructor"),
])
def test_a_runs_overrides_are_read_as_data(overrides: str, message: str, tmp_path: Path) -> None:
    from nn4n.cli import _resumed
    from nn4n.errors import ConfigError

    run = fake_run(tmp_path, overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        _resumed([f"resume={run}"])


def test_load_run_names_the_runs_task_code_instead_of_importing_it(tmp_path: Path) -> None:
    from nn4n.analysis import load_run

    folder = planted_task_code(tmp_path)
    run = fake_run(tmp_path, "[]\n", {"model": {"areas": {"A": {"size": 4}}}, "task": {"name": "Mine-v0", "dirs": [str(folder)]}})
    with pytest.raises(ValueError, match=r"^trust_task_code: the run in .* imports task code from task.dirs=\[.*their_tasks'\]; "
                                         r"it runs only with trust_task_code=True$"):
        load_run(run)
    assert not (tmp_path / "imported").exists()


def test_a_tampered_checkpoint_cannot_name_a_file_to_write(tmp_path: Path) -> None:
    from nn4n.checkpoint import save_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    for name in ("/abs" + str(tmp_path / "MARKER"), "../../MARKER2", "config.yaml"):
        save_checkpoint(run / "checkpoints" / "last.pt", {"hydra": {name: "x"}})
        rundir.restore_hydra_record(run)
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "MARKER2").exists() and not Path("/abs").exists()
    assert (run / ".hydra" / "config.yaml").read_text() == "x"  # Hydra's own file names only, into .hydra/
    with pytest.raises(ValueError, match=r"its hydra record names '../../MARKER2', not one of config.yaml, hydra.yaml, overrides.yaml"):
        rundir.check_hydra_record({"../../MARKER2": "x"}, run)
    with pytest.raises(ValueError, match=r"its hydra record's config.yaml is not a text of at most"):
        rundir.check_hydra_record({"config.yaml": "x" * (rundir.MAX_RECORD_CHARS + 1)}, run)


# ----------------------------------------------------------------------------- a run that cannot go on
def small_trainer(tmp_path: Path):
    from hydra import compose, initialize_config_module

    from nn4n.config import register_schema
    from nn4n.experiment import resolve
    from nn4n.train import Trainer

    register_schema()
    with initialize_config_module("nn4n_configs", version_base="1.3"):
        return Trainer(resolve(compose("config", ["debug=fast"])), tmp_path / "run")


def test_an_exploding_loss_stops_the_run_even_when_finite(tmp_path: Path) -> None:
    """The documented rule: a loss over DIVERGED times the first one this process saw is a divergence (lr=1e30
    gave 4e30, finite, and ran to its end)."""
    import torch

    from nn4n.errors import TrainingError
    from nn4n.train import DIVERGED

    trainer = small_trainer(tmp_path)
    trainer.unchecked = (1, torch.tensor([[0.7], [1.0]]), None)
    trainer._check_finite()  # the first loss: the reference
    trainer.unchecked = (2, torch.tensor([[0.7 * DIVERGED / 2], [1.0]]), None)
    trainer._check_finite()  # large, not yet diverged
    trainer.unchecked = (3, torch.tensor([[4e30], [1.0]]), None)
    with pytest.raises(TrainingError, match=r"^step 3: loss 4e\+30 is over 10000 times its first value 0.7: the run "
                                            r"diverged \(a lower train.lr\?\); nothing saved after it \(no checkpoint was written before it\)$"):
        trainer._check_finite()
    trainer.unchecked = (4, torch.tensor([[float("nan")], [float("nan")]]), None)
    with pytest.raises(TrainingError, match=r"is not finite; its update was skipped and nothing saved after it \(no checkpoint was written before it\)$"):
        trainer._check_finite()


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    import errno

    from nn4n import files
    from nn4n.checkpoint import load_checkpoint

    writes = []

    def fsync(fd: int) -> None:
        writes.append(fd)
        if len(writes) > 2:  # the first checkpoints fit; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fsync)
    code = nn4n_train_in_process(["debug=fast", "train.checkpoint_every=5", "hydra.run.dir=run"], monkeypatch, tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 3 and len(err.splitlines()) == 1, err
    assert "No space left on device; its last checkpoint" in err and "is kept" in err
    assert not list((tmp_path / "run").rglob("*.tmp"))  # no half-written file left
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] in (5, 10)


@pytest.mark.slow
def test_two_writers_in_one_run_folder(tmp_path: Path) -> None:
    """The second command into a run folder in use is refused, naming the writer, and leaves its files alone;
    once the writer is killed (its lock left behind), the run resumes."""
    train = [sys.executable, "-m", "nn4n", "debug=fast", "logging=minimal", "train.steps=400", "train.checkpoint_every=10"]
    first = subprocess.Popen([*train, "hydra.run.dir=run"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "run" / "nn4n.log"
    deadline = time.time() + 300
    while "step 30/" not in (log.read_text() if log.exists() else ""):
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.1)
    record = {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()}
    for second in ([*train, "hydra.run.dir=run"], [sys.executable, "-m", "nn4n", "resume=run"], [*train, "seed=5", "hydra.run.dir=run"]):
        done = subprocess.run(second, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"run is in use: training by PID {first.pid} on {socket.gethostname()} since " in done.stderr
    assert {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()} == record
    first.kill()
    first.wait()
    assert (tmp_path / "run" / LOCK_FILE).exists()  # left by the killed writer: stale, its PID gone
    resumed = subprocess.run([sys.executable, "-m", "nn4n", "resume=run"], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in log.read_text() and (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


@pytest.mark.slow
def test_the_tampered_checkpoint_of_the_report_writes_nothing_outside_the_run(tmp_path: Path) -> None:
    """The reported attack: a checkpoint's hydra record naming a file outside the run, its config changed so that
    the command fails and the record is put back. Nothing is written outside the run folder."""
    import torch

    run = subprocess.run([sys.executable, "-m", "nn4n", "debug=fast", "logging=minimal", "hydra.run.dir=run"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    marker = tmp_path / "elsewhere" / "MARKER"
    state["hydra"][str(marker)] = "x"
    state["hydra"]["../MARKER2"] = "x"
    state["config"]["seed"] = 12345
    torch.save(state, last)
    resumed = subprocess.run([sys.executable, "-m", "nn4n", "resume=run"], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 3 and "its hydra record names" in resumed.stderr and "Traceback" not in resumed.stderr
    assert not marker.exists() and not (tmp_path / "MARKER2").exists() and not (tmp_path / "run" / "MARKER2").exists()


def test_help_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """``nn4n-train --help | head -1``: the reader goes away; no BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "nn4n", "--help"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0 and proc.stderr.read() == b""


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line_and_leaves_no_run_folder(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "slow.py").write_text(
        "import time\nimport numpy as np\nfrom neurogym.core import TrialEnv\nfrom neurogym.utils import spaces\n\n"
        "class SlowStart(TrialEnv):\n    def __init__(self, dt=20, timing=None):\n        super().__init__(dt=dt)\n"
        "        time.sleep(30)\n")
    # as from a terminal: SIGINT not ignored (a shell's background job, a CI runner's, inherits it ignored)
    proc = subprocess.Popen([sys.executable, "-m", "nn4n", "task.name=SlowStart-v0", f"task.dirs=[{tmp_path / 'tasks'}]",
                             "hydra.run.dir=runs/started"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (tmp_path / "runs" / "started" / ".hydra").exists():  # Hydra has made the run's folder
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines() == ["nn4n-train: interrupted (Ctrl-C); nothing was trained (before training starts; during training it checkpoints and stops)"], err[-3000:]
    assert not (tmp_path / "runs").exists()
