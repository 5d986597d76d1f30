"""Sweeps on a real SLURM cluster: cancelled, requeued and vanished jobs, a refused GPU request.

These run where a SLURM controller answers (``sinfo`` succeeds; CI starts a single-node cluster with
``../shared/slurm/start.sh``) and are skipped elsewhere. Each sweep uses a launcher file in its own
``--config-dir``, as a user's cluster settings would be.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nn4n import sweep
from nn4n.checkpoint import load_checkpoint


def _controller_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _controller_answers(), reason="no SLURM controller answers (sinfo fails)")]
PARTITION = os.environ.get("NN4N_TEST_PARTITION", "debug")
TRAIN = ["debug=fast", "logging=minimal", "train.steps=60", "train.checkpoint_every=10", "train.eval_every=60"]


def launcher_dir(tmp_path: Path, *extra: str) -> Path:
    folder = tmp_path / "cluster" / "hydra" / "launcher"
    folder.mkdir(parents=True)
    (folder / "test_cluster.yaml").write_text("\n".join(["defaults: [slurm]", f"partition: {PARTITION}",
                                                         "cpus_per_task: 1", "timeout_min: 20", *extra]) + "\n")
    return tmp_path / "cluster"


def start_sweep(tmp_path: Path, name: str, seeds: str, env: dict | None = None, launcher: str = "test_cluster") -> subprocess.Popen:
    args = ["-m", "--config-dir", str(launcher_dir(tmp_path) if not (tmp_path / "cluster").exists() else tmp_path / "cluster"),
            f"hydra/launcher={launcher}", *TRAIN, f"seed={seeds}", f"hydra.sweep.dir={name}"]
    return subprocess.Popen([sys.executable, "-m", "nn4n", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def wait_for(condition, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def at_step(job: Path, step: int) -> bool:
    log = job / "nn4n.log"
    return log.exists() and f"step {step}/" in log.read_text()


def slurm_job(job: Path) -> str:
    """The SLURM job id of the sweep job in ``job`` (its log says it), the latest attempt's."""
    return [line.rsplit(" ", 1)[1] for line in (job / "nn4n.log").read_text().splitlines() if " - SLURM job " in line][-1]


def reference(tmp_path: Path, seed: int) -> dict[str, torch.Tensor]:
    """The weights of the same run, trained uninterrupted as a single run."""
    run = subprocess.run([sys.executable, "-m", "nn4n", *TRAIN, f"seed={seed}", "hydra.run.dir=reference"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")["models"][0]


def weights(job: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(job / "checkpoints" / "last.pt")["models"][0]


def test_a_cancelled_job_is_followed_and_resumed_bitwise_by_the_next_run(tmp_path: Path) -> None:
    proc = start_sweep(tmp_path, "sweep", "0,1,2")
    job = tmp_path / "sweep" / "0"
    wait_for(lambda: at_step(job, 20), what="job 0 at step 20")
    statuses = {j.name: j.status for j in sweep.find_jobs(tmp_path / "sweep")}
    assert statuses["0"] == "running"
    subprocess.run(["scancel", slurm_job(job)], check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]  # the launcher followed the sweep to its end
    jobs = {j.name: j for j in sweep.find_jobs(tmp_path / "sweep")}
    assert jobs["0"].status == "failed" and "SIGTERM at step" in jobs["0"].error
    assert jobs["1"].status == jobs["2"].status == "finished"
    again = start_sweep(tmp_path, "sweep", "0,1,2")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert "1 job(s) to run, 2 finished already (not submitted again)" in out + err
    assert "resuming from step" in (job / "nn4n.log").read_text()
    assert [j.status for j in sweep.find_jobs(tmp_path / "sweep")] == ["finished"] * 3
    mine, want = weights(job), reference(tmp_path, 0)
    assert all(torch.equal(mine[k], want[k]) for k in want)


def test_a_time_limit_requeue_checkpoints_and_resumes(tmp_path: Path) -> None:
    """SLURM's warning before a time limit (submitit's SIGUSR2): checkpoint, requeue, resume; never 'failed'."""
    proc = start_sweep(tmp_path, "sweep", "0")
    job = tmp_path / "sweep" / "0"
    wait_for(lambda: at_step(job, 20), what="job 0 at step 20")
    slurm_id = slurm_job(job)
    subprocess.run(["scancel", "--signal=USR2", slurm_id.split("_")[0]], check=True)
    wait_for(lambda: (job / "requeued.txt").exists(), what="the requeue")
    assert [j.status for j in sweep.find_jobs(tmp_path / "sweep")] == ["requeued"]
    wait_for(lambda: "PD" in subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%t"], capture_output=True,
                                            text=True).stdout, what="the requeued job pending")
    subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"], check=True)  # skip SLURM's requeue delay
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    log = (job / "nn4n.log").read_text()
    assert "SIGUSR2 at step" in log and "resuming from step" in log and not (job / "error.txt").exists()
    mine, want = weights(job), reference(tmp_path, 0)
    assert all(torch.equal(mine[k], want[k]) for k in want)


def test_a_job_killed_hard_without_accounting_fails_in_one_line(tmp_path: Path) -> None:
    """No sacct to ask (a cluster without accounting): a job gone from the queue without a result is a failure,
    not a wait for ever."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    (fake / "sacct").chmod(0o755)
    proc = start_sweep(tmp_path, "sweep", "0", env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    job = tmp_path / "sweep" / "0"
    wait_for(lambda: at_step(job, 10), what="job 0 at step 10")
    os.kill(json.loads((job / ".nn4n.lock").read_text())["pid"], signal.SIGKILL)  # as the OOM killer would
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "left the queue without a result (killed, out of memory or time, and no sacct to say which)" in err
    assert "Traceback" not in err


def test_a_gpu_asked_of_a_partition_without_one_is_one_line(tmp_path: Path) -> None:
    launcher_dir(tmp_path)
    (tmp_path / "cluster" / "hydra" / "launcher" / "gpu_cluster.yaml").write_text(
        f"defaults: [slurm_gpu]\npartition: {PARTITION}\ncpus_per_task: 1\n")
    proc = start_sweep(tmp_path, "sweep", "0", launcher="gpu_cluster")
    out, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.startswith("nn4n-train: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "hydra.launcher: the cluster refused the jobs:" in lines[0] and "partition, account and GPUs" in lines[0]
