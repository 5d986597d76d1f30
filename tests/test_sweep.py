"""Sweeps: ``nn4n-train -m`` through Hydra's real launchers and sweepers, idempotent re-runs,
``nn4n-sweep-summary``, TensorBoard HParams across a sweep, and the SLURM presets."""
from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from nn4n import sweep

BIN = Path(sys.executable).parent
# A few seconds of training per job; lr small enough that no seed diverges in 4 steps.
FAST = ["debug=fast", "logging=minimal", "train.steps=4", "train.lr=0.001"]


def command(name: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", {"nn4n-train": "nn4n", "nn4n-sweep-summary": "nn4n.sweep"}[name]]


def nn4n_train(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*command("nn4n-train"), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})},
    )


def job_dirs(root: Path) -> dict[str, Path]:
    """Job directory of each job, keyed by its overrides (joined, sorted)."""
    out = {}
    for path in root.glob("*/.hydra/overrides.yaml"):
        out[" ".join(sorted(yaml.safe_load(path.read_text())))] = path.parent.parent
    return out


def key(*overrides: str) -> str:
    return " ".join(sorted([*FAST, *overrides]))


# ----------------------------------------------------------------------------- a real 2 x 2 sweep
@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """seed=0,1 x model.noise.rec=0.0,0.1: four submitit jobs run as local processes."""
    cwd = tmp_path_factory.mktemp("grid")
    run = nn4n_train("-m", "hydra/launcher=submitit_local", *FAST, "seed=0,1", "model.noise.rec=0.0,0.1",
                     "hydra.sweep.dir=sweep", cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    return cwd / "sweep"


@pytest.mark.slow
def test_grid_sweep_runs_every_job_through_submitit(grid: Path) -> None:
    jobs = job_dirs(grid)
    expected = {key(f"seed={s}", f"model.noise.rec={n}") for s in (0, 1) for n in ("0.0", "0.1")}
    assert set(jobs) == expected
    assert sorted(p.name for p in jobs.values()) == ["0", "1", "2", "3"]
    for job in jobs.values():
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["steps"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0
        assert not (job / sweep.ERROR_FILE).exists()
        assert (job / "checkpoints" / "last.pt").exists()
    assert len(list((grid / ".submitit").glob("*/*_result.pkl"))) == 4  # really submitit jobs
    assert (grid / "multirun.yaml").exists()


@pytest.mark.slow
def test_summary_numbers_are_each_jobs_metrics(grid: Path, tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    shutil.copytree(grid, root)
    run = subprocess.run([*command("nn4n-sweep-summary"), str(root)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "4 jobs" in run.stdout and "4 finished" in run.stdout and "mean ± sd over seed" in run.stdout

    with open(root / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        metrics = json.loads((root / row["job"] / "metrics.json").read_text())
        assert row["status"] == "finished"
        numbers = {name: value for name, value in metrics.items() if isinstance(value, (int, float))}
        assert {"loss", "accuracy", "abort_rate", "steps"} <= set(numbers) and "scored" not in row  # text and tables stay out
        for name, value in numbers.items():
            assert float(row[name]) == value, name
        assert row["train.lr"] == "0.001" and row["debug"] == "fast"

    with open(root / "summary_groups.csv") as f:
        groups = {g["model.noise.rec"]: g for g in csv.DictReader(f)}
    assert set(groups) == {"0.0", "0.1"}
    for noise, group in groups.items():
        losses = [float(r["loss"]) for r in rows if r["model.noise.rec"] == noise]
        assert int(group["n_jobs"]) == int(group["n_finished"]) == 2
        assert float(group["loss_mean"]) == pytest.approx(statistics.fmean(losses))
        assert float(group["loss_sd"]) == pytest.approx(statistics.stdev(losses))


@pytest.mark.slow
def test_tensorboard_sees_hparams_of_every_job(grid: Path) -> None:
    """``tensorboard --logdir SWEEP``: one run per job, each with its own HParams session."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(grid))
    mux.Reload()
    sessions = {}
    for run, content in mux.PluginRunToTagToContent(metadata.PLUGIN_NAME).items():
        if metadata.SESSION_START_INFO_TAG in content:
            info = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
            sessions[run] = {k: v.number_value for k, v in info.hparams.items() if v.HasField("number_value")}
    assert sorted(sessions) == [f"{n}/tensorboard/hparams" for n in range(4)]
    for run, hparams in sessions.items():
        job = grid / run.split("/")[0]
        overrides = sweep.parse_overrides(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert hparams["seed"] == int(overrides["seed"])
        assert hparams["model.noise.rec"] == pytest.approx(float(overrides["model.noise.rec"]))
        accuracy = mux.Scalars(run, "eval/accuracy")[-1].value
        assert accuracy == pytest.approx(json.loads((job / "metrics.json").read_text())["accuracy"])


@pytest.mark.slow
def test_rerun_skips_finished_jobs_and_redoes_missing_ones(grid: Path, tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    shutil.copytree(grid, root)
    jobs = job_dirs(root)
    redo = jobs[key("seed=1", "model.noise.rec=0.1")]
    (redo / "metrics.json").unlink()  # as if killed after its last checkpoint
    before = {p: (p / "metrics.json").stat().st_mtime_ns for p in jobs.values() if p != redo}

    # the same sweep again (the skip is in the job, whichever launcher runs it)
    run = nn4n_train("-m", *FAST, "seed=0,1", "model.noise.rec=0.0,0.1", f"hydra.sweep.dir={root}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert log.count("skipped:") == 3
    assert f"resuming from step 4 of {redo / 'checkpoints' / 'last.pt'}" in log
    assert {p: (p / "metrics.json").stat().st_mtime_ns for p in before} == before
    assert json.loads((redo / "metrics.json").read_text())["steps"] == 4
    for job in before:
        assert "skipped: " in (job / "nn4n.log").read_text()  # the job's own log says so too


@pytest.mark.slow
def test_a_job_dir_of_another_config_is_not_reused(grid: Path) -> None:
    from nn4n.errors import ConfigError
    from nn4n.experiment import resolve

    job = job_dirs(grid)[key("seed=0", "model.noise.rec=0.1")]
    config = resolve(OmegaConf.load(job / ".hydra" / "config.yaml"))
    assert sweep.finished_metrics(job, config) == json.loads((job / "metrics.json").read_text())
    other = resolve(OmegaConf.merge(OmegaConf.load(job / ".hydra" / "config.yaml"), {"train": {"lr": 0.5}}))
    with pytest.raises(ConfigError, match=r"train.lr: is 0.5 but the run in .* was started with 0.001"):
        sweep.finished_metrics(job, other)
    threads = resolve(OmegaConf.merge(OmegaConf.load(job / ".hydra" / "config.yaml"), {"train": {"threads": 2}}))
    assert sweep.finished_metrics(job, threads) is not None  # how a job runs is not what it computes
    longer = resolve(OmegaConf.merge(OmegaConf.load(job / ".hydra" / "config.yaml"), {"train": {"steps": 8}}))
    assert sweep.finished_metrics(job, longer) is None  # trained further from its last checkpoint


# ----------------------------------------------------------------------------- failures, Optuna
@pytest.mark.slow
def test_one_bad_job_fails_alone(tmp_path: Path) -> None:
    run = nn4n_train("-m", "hydra/launcher=submitit_local", *FAST[:-1], "train.lr=0.001,-1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert run.returncode != 0
    assert "train.lr: must be a finite number > 0" in run.stderr
    root = tmp_path / "sweep"
    jobs = {j.overrides["train.lr"]: j for j in sweep.find_jobs(root)}
    assert jobs["0.001"].status == "finished" and (root / jobs["0.001"].name / "metrics.json").exists()
    assert jobs["-1"].status == "failed" and "train.lr: must be a finite number > 0" in jobs["-1"].error
    assert "1 finished, 1 failed" in sweep.summarize(root, write=False)


@pytest.mark.slow
def test_optuna_sweep_records_the_best_trial(tmp_path: Path) -> None:
    """On a regression task the preset minimizes the MSE (train.objective) without being told to."""
    # the preset's search space, with a learning rate range no 4-step run diverges in
    args = ["-m", "hydra/sweeper=optuna_tune", "hydra.sweeper.n_trials=2", *FAST[:-1], "task=sine_wave",
            "hydra.sweep.dir=study", "train.lr=tag(log, interval(1e-4, 1e-3))"]
    run = nn4n_train(*args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    root = tmp_path / "study"
    best = yaml.safe_load((root / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"train.lr", "model.noise.rec"}
    assert 1e-4 <= best["best_params"]["train.lr"] <= 1e-3 and 0.0 <= best["best_params"]["model.noise.rec"] <= 0.3
    jobs = sweep.find_jobs(root)
    assert [j.status for j in jobs] == ["finished", "finished"]
    assert best["best_value"] == min(j.metrics["mse"] for j in jobs) < max(j.metrics["mse"] for j in jobs)
    assert "optuna best: " in sweep.summarize(root, write=False)

    # the sampler is seeded: the same command proposes the same trials, finds them finished, skips them
    again = nn4n_train(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("skipped:") == 2
    assert yaml.safe_load((root / "optimization_results.yaml").read_text()) == best


# ----------------------------------------------------------------------------- launcher presets
def compose_hydra(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_module

    from nn4n.config import register_schema

    register_schema()  # the schema config.yaml starts from

    with initialize_config_module(version_base="1.3", config_module="nn4n_configs"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # type: ignore[return-value]


@pytest.mark.parametrize("overrides, direction", [
    ([], "maximize"), (["task=sine_wave"], "minimize"), (["task=sine_wave", "train.objective=r2"], "maximize"),
    (["train.objective=loss"], "minimize"),
])
def test_optuna_preset_direction_follows_the_objective(overrides: list[str], direction: str) -> None:
    from hydra import compose, initialize_config_module

    from nn4n.config import register_schema

    register_schema()
    with initialize_config_module(version_base="1.3", config_module="nn4n_configs"):
        cfg = compose("config", overrides=["hydra/sweeper=optuna_tune", *overrides], return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == direction


def sbatch_script(params: dict, folder: Path) -> str:
    """The sbatch script the submitit launcher would submit for these launcher settings."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = {k: v for k, v in params.items() if k not in ("_target_", "submitit_folder")}
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python job.py", "uid")


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``srun`` on PATH, all submitit's slurm executor checks for before writing a script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name in list(os.environ):
        if name.startswith("NN4N_"):
            monkeypatch.delenv(name)


def test_slurm_preset_needs_a_partition(fake_slurm: None) -> None:
    from omegaconf.errors import InterpolationResolutionError

    with pytest.raises(InterpolationResolutionError, match="NN4N_SLURM_PARTITION"):
        compose_hydra(["hydra/launcher=slurm"])
    params = compose_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=short"])
    assert params["partition"] == "short" and params["account"] is None and params["gpus_per_node"] is None


def test_slurm_settings_from_environment(fake_slurm: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {"PARTITION": "gpu", "ACCOUNT": "lab7", "TIME_MIN": "90", "MEM_GB": "16", "GPUS": "2"}.items():
        monkeypatch.setenv(f"NN4N_SLURM_{name}", value)
    script = sbatch_script(compose_hydra(["hydra/launcher=slurm_gpu"]), tmp_path / "submitit")
    for line in ["--partition=gpu", "--account=lab7", "--time=90", "--mem=16GB", "--gpus-per-node=2", "--cpus-per-task=4"]:
        assert f"#SBATCH {line}\n" in script, line


def test_user_cluster_config_extends_the_preset(fake_slurm: None, tmp_path: Path) -> None:
    """What docs/sweeps.md tells a user to write into the directory given to --config-dir."""
    user = tmp_path / "my-cluster" / "hydra" / "launcher"
    user.mkdir(parents=True)
    (user / "my_gpu_cluster.yaml").write_text(
        "defaults:\n  - slurm_gpu\n\npartition: gpu-a100\naccount: lab42\ntimeout_min: 240\nmem_gb: 32\n"
        "setup:\n  - module load cuda/12.1\n  - source $HOME/venvs/nn4n/bin/activate\n"
    )
    params = compose_hydra(["hydra/launcher=my_gpu_cluster", f"hydra.searchpath=[file://{tmp_path / 'my-cluster'}]",
                            "hydra.launcher.timeout_min=30"])
    script = sbatch_script(params, tmp_path / "submitit")
    for line in ["--partition=gpu-a100", "--account=lab42", "--time=30", "--mem=32GB", "--gpus-per-node=1"]:
        assert f"#SBATCH {line}\n" in script, line
    assert "\nmodule load cuda/12.1\nsource $HOME/venvs/nn4n/bin/activate\n" in script


@pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/submitit_local' is validated against ConfigStore")
def test_local_launcher_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NN4N_N_JOBS", raising=False)
    assert compose_hydra(["hydra/launcher=local_parallel"])["n_jobs"] == -1
    monkeypatch.setenv("NN4N_N_JOBS", "3")
    params = compose_hydra(["hydra/launcher=local_parallel"])
    assert params["n_jobs"] == 3 and params["_target_"].endswith("JoblibLauncher")
    local = compose_hydra(["hydra/launcher=submitit_local"])
    assert local["_target_"] == "hydra_plugins.nn4n_launchers.LocalLauncher" and local["timeout_min"] == 60


# ----------------------------------------------------------------------------- summary, synthetic
def make_job(root: Path, name: str, overrides: list[str], metrics: dict | None = None, error: str | None = None) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / sweep.ERROR_FILE).write_text(error + "\n")
    return job


def test_summary_statuses_groups_and_order(tmp_path: Path) -> None:
    acc = {(0.0, 0): 0.5, (0.0, 1): 0.7, (0.0, 2): 0.9, (0.1, 0): 0.4, (0.1, 1): 0.6}
    n = 0
    for noise in (0.0, 0.1):
        for seed in range(3):
            metrics = {"accuracy": acc[noise, seed], "loss": 1 - acc[noise, seed], "steps": 10} if (noise, seed) in acc else None
            make_job(tmp_path, str(n), ["debug=fast", f"model.noise.rec={noise}", f"seed={seed}"], metrics)
            n += 1
    make_job(tmp_path, "10", ["debug=fast", "model.noise.rec=0.1", "seed=3"], error="TrainingError: diverged")
    refused = "ConfigError: seed: is 5 but the run in 11 was started with 4"  # a re-run of another sweep
    make_job(tmp_path, "11", ["debug=fast", "model.noise.rec=0.1", "seed=4"], {"accuracy": 0.8, "loss": 0.2, "steps": 10}, error=refused)
    text = sweep.summarize(tmp_path)
    assert "8 jobs" in text and "6 finished, 1 failed, 1 missing metrics" in text
    assert "10: TrainingError: diverged" in text and f"11: finished; a later attempt failed: {refused}" in text
    assert "common overrides: debug=fast" in text

    jobs = sweep.find_jobs(tmp_path)
    assert [j.name for j in jobs] == ["0", "1", "2", "3", "4", "5", "10", "11"]  # natural order
    assert [j.status for j in jobs][-3:] == ["missing metrics", "failed", "finished"] and jobs[-2].metrics == {}
    assert jobs[-1].metrics["accuracy"] == 0.8

    with open(tmp_path / "summary_groups.csv") as f:
        groups = {g["model.noise.rec"]: g for g in csv.DictReader(f)}
    assert groups["0.0"]["n_jobs"] == "3" and groups["0.0"]["n_finished"] == "3"
    assert float(groups["0.0"]["accuracy_mean"]) == pytest.approx(0.7)
    assert float(groups["0.0"]["accuracy_sd"]) == pytest.approx(0.2)  # sample sd of 0.5, 0.7, 0.9
    assert groups["0.1"]["n_jobs"] == "5" and groups["0.1"]["n_finished"] == "3"
    assert float(groups["0.1"]["accuracy_mean"]) == pytest.approx(0.6)
    assert float(groups["0.1"]["accuracy_sd"]) == pytest.approx(statistics.stdev([0.4, 0.6, 0.8]))


def test_summary_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        sweep.main([str(tmp_path / "nowhere")])
    assert exit_.value.code == 2 and "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        sweep.main([str(tmp_path)])
    assert exit_.value.code == 2 and "no job directories" in capsys.readouterr().err
    make_job(tmp_path, "0", ["seed=0"], {"accuracy": 1.0})
    sweep.main([str(tmp_path), "--no-write"])
    assert "1 job under" in capsys.readouterr().out and not (tmp_path / "summary.csv").exists()


def test_parse_overrides() -> None:
    assert sweep.parse_overrides(["seed=1", "+train.reg.rate_l2=0.1", "task.dirs=[a,b]", "~logging"]) == {
        "seed": "1", "train.reg.rate_l2": "0.1", "task.dirs": "[a,b]", "~logging": ""}
