"""End-to-end ``nn4n-train`` in a subprocess: run directory, TensorBoard events, arrays, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nn4n import CTRNN
from nn4n.checkpoint import load_checkpoint
from nn4n.errors import ConfigError
from helpers import hparams_session


def nn4n_train(*overrides: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nn4n", *overrides],
        cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real debug run, from a working directory that is not the repository."""
    cwd = tmp_path_factory.mktemp("cwd")
    run = nn4n_train("debug=fast", "arch=two_area", "seed=3", "model.areas.motor.tau_range=[40,400]", "hydra.run.dir=run", cwd=cwd)
    assert run.returncode == 0, run.stderr
    return cwd / "run"


@pytest.mark.slow
def test_run_directory(debug_run: Path) -> None:
    names = {p.name for p in debug_run.iterdir()}
    assert {".hydra", "nn4n.log", "checkpoints", "tensorboard", "metrics.json", "activity.npz"} <= names
    assert {"last.pt", "best.pt"} <= {p.name for p in (debug_run / "checkpoints").iterdir()}
    metrics = json.loads((debug_run / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["steps"] == 20
    log = (debug_run / "nn4n.log").read_text()
    assert "step 20 eval" in log and f"writing to {debug_run.resolve()} (to watch: tensorboard --logdir" in log
    assert log.rstrip().endswith(f"results in {debug_run.resolve()}")


@pytest.mark.slow
def test_tensorboard_events(debug_run: Path) -> None:
    acc = EventAccumulator(str(debug_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = acc.Tags()
    for tag in ["loss/task", "loss/total", "train/lr", "train/grad_norm", "eval/accuracy", "eval/loss",
                "rates/sensory/E", "rates/sensory/I", "rates/motor/E", "silent/motor/E", "weights/spectral_radius"]:
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("loss/task")] == [5, 10, 15, 20]
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [0, 10, 20]  # the curve starts at the untrained network
    assert all(np.isfinite(e.value) and e.value > 0 for e in acc.Scalars("loss/task"))
    for tag in ["w_rec/motor<-sensory", "w_rec/sensory<-motor", "w_in", "w_out", "neuron_mean_rate/motor"]:
        assert tag in tags["histograms"], tag
    arrays = np.load(debug_run / "activity.npz")
    motor_tau = arrays["tau"][arrays["area"] == "motor"]
    taus = acc.Histograms("tau/motor")[-1].histogram_value  # only where an area's neurons differ
    assert (taus.min, taus.max, taus.num) == pytest.approx((motor_tau.min(), motor_tau.max(), motor_tau.size))
    assert 40 <= motor_tau.min() < motor_tau.max() <= 400 and "tau/sensory" not in tags["histograms"]
    assert {"figures/activity", "figures/connectivity", "figures/pca", "figures/trial_io", "figures/psychometric"} <= set(tags["images"])
    metrics = json.loads((debug_run / "metrics.json").read_text())
    params, hparam_metrics = hparams_session(debug_run / "tensorboard")
    assert hparam_metrics["eval/accuracy"] == [(20, pytest.approx(metrics["accuracy"]))] and params["train.steps"] == 20
    assert set(hparam_metrics) == {"eval/loss", "eval/accuracy", "eval/abort_rate"}  # no one-point charts of their own
    assert acc.Scalars("eval/accuracy")[-1].value == pytest.approx(metrics["accuracy"])
    assert "config" in " ".join(tags["tensors"])  # resolved config as text


@pytest.mark.slow
def test_activity_arrays_show_biology(debug_run: Path) -> None:
    act = np.load(debug_run / "activity.npz")
    n_trials, n_steps, n = act["rates"].shape
    assert n_trials == 32 and n == 192 and act["w_rec"].shape == (n, n)
    for key in ["inputs", "outputs", "targets", "mask", "w_in", "w_out", "sign", "area", "choice", "cond_ground_truth", "epoch_decision"]:
        assert key in act.files, key
    assert str(act["kind"]) == "classification"
    sign, w_rec, w_out, area = act["sign"], act["w_rec"], act["w_out"], act["area"]
    assert (w_rec[:, sign > 0] >= 0).all() and (w_rec[:, sign < 0] <= 0).all()  # Dale, post x pre
    assert (w_out[:, sign < 0] == 0).all()  # readout from excitatory neurons only
    assert set(area) == {"sensory", "motor"}
    inhibitory_sensory = (area == "sensory") & (sign < 0)
    assert (w_rec[np.ix_(area == "motor", inhibitory_sensory)] == 0).all()  # only E project between areas
    assert (w_out[:, area == "sensory"] == 0).all() and (act["w_in"][area == "motor"] == 0).all()
    density = (w_rec[np.ix_(area == "motor", (area == "sensory") & (sign > 0))] != 0).mean()
    assert density == pytest.approx(0.2, abs=0.01)


@pytest.mark.slow
def test_checkpoints_reload(debug_run: Path) -> None:
    model = CTRNN.load(debug_run / "checkpoints" / "best.pt")
    state = load_checkpoint(debug_run / "checkpoints" / "last.pt")
    assert state["step"] == 20 and state["config"]["seed"] == 3
    final = CTRNN(model.config)
    final.load_state_dict(state["models"][0])
    act = np.load(debug_run / "activity.npz")
    np.testing.assert_allclose(final.w_rec.detach().numpy(), act["w_rec"])
    outputs, _ = final.eval()(torch.as_tensor(act["inputs"][:4]))
    np.testing.assert_allclose(outputs.detach().numpy(), act["outputs"][:4], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=-1", "train.lr"),
        ("train.steps=many", "train.steps"),
        ("task.name=NoSuchTask-v0", "task.name"),
        ("model.areas.hidden.size=0", "model.areas.hidden.size"),
        ("+model.projections.PFC.hidden=0.1", "model.projections.PFC"),
        ("model.tau=5", "model.tau"),
    ],
)
def test_config_errors(tmp_path: Path, override: str, key: str) -> None:
    run = nn4n_train("debug=fast", override, "hydra.run.dir=run", cwd=tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written left behind


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.optimizr=adam", "train.optimizr: unknown key"),
        ("task=no_such_task", "task: no option 'no_such_task'; available: context_dm, delay_comparison"),
        ("train.lr=fast", "train.lr: Value 'fast' of type 'str' could not be converted to Float"),
    ],
)
def test_hydra_errors_are_one_line(tmp_path: Path, override: str, message: str) -> None:
    """Errors Hydra finds while composing (unknown key, unknown option, wrong type) read like ours."""
    run = nn4n_train("debug=fast", override, "hydra.run.dir=run", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.startswith(f"nn4n-train: error: {message}")
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_full_error_shows_traceback(tmp_path: Path) -> None:
    run = nn4n_train("train.lr=-1", "hydra.run.dir=run", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert run.returncode != 0 and "Traceback" in run.stderr and "train.lr: must be a finite number > 0" in run.stderr


@pytest.mark.slow
def test_default_network_learns(tmp_path: Path) -> None:
    """The default E/I network on PerceptualDecisionMaking, briefly trained, is far above chance (0.5)."""
    run = nn4n_train("train.steps=300", "train.eval_every=300", "logging=minimal", "hydra.run.dir=run", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["accuracy"] >= 0.75


@pytest.mark.slow
def test_figures_from_a_run_in_python(debug_run: Path) -> None:
    """Notebook route: a run directory gives the model, its config, fresh activity and figures."""
    from nn4n import figures
    from nn4n.analysis import activity_from_run, load_run, neurons

    model, cfg = load_run(debug_run, "last")
    assert cfg.seed == 3 and list(model.config.areas) == ["sensory", "motor"]
    saved = np.load(debug_run / "activity.npz")
    record = activity_from_run(debug_run, n_trials=32, checkpoint="last")
    np.testing.assert_allclose(record["rates"], saved["rates"], rtol=1e-4, atol=1e-6)  # same held-out trials
    for area, population in (("motor", "E"), ("sensory", "inhibitory"), ("motor", None), (None, "I")):
        np.testing.assert_array_equal(neurons(saved, area, population), model.structure.indices(area, population))
    assert (saved["sign"][neurons(saved, "motor", "E")] == 1).all() and (saved["area"][neurons(saved, "motor")] == "motor").all()
    with pytest.raises(ValueError, match="^area: unknown area 'PFC'; areas: sensory, motor$"):
        neurons(saved, "PFC")
    assert set(figures.all_figures(record)) == {"activity", "connectivity", "pca", "trial_io", "psychometric"}
    assert list(saved["input_labels"]) == list(record["input_labels"]) == ["fixation", "stimulus 0", "stimulus 1"]
    assert list(saved["output_labels"]) == ["fixation", "choice 0", "choice 1"]


@pytest.mark.slow
def test_activity_from_run_probes_other_trials_and_settings(debug_run: Path) -> None:
    """Beyond the held-out trials: another seed, a longer delay than trained with, one coherence only."""
    from nn4n.analysis import activity_from_run

    held_out = activity_from_run(debug_run, n_trials=16, checkpoint="last")
    other = activity_from_run(debug_run, n_trials=16, checkpoint="last", seed=11)
    assert not np.array_equal(held_out["inputs"], other["inputs"])
    longer = activity_from_run(debug_run, n_trials=16, checkpoint="last", timing={"delay": 1000})  # trained with none
    assert (np.diff(held_out["epoch_delay"], axis=1) == 0).all() and (np.diff(longer["epoch_delay"], axis=1) == 50).all()
    assert longer["rates"].shape[1] == held_out["rates"].shape[1] + 50
    zero = activity_from_run(debug_run, n_trials=16, checkpoint="last", params={"cohs": [0.0]})
    assert set(zero["cond_coh"]) == {0.0} and len(set(held_out["cond_coh"])) > 1
    torch.manual_seed(5)
    noisy = activity_from_run(debug_run, n_trials=16, checkpoint="last", noise=True)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the caller's random state is untouched
    np.testing.assert_array_equal(noisy["inputs"], held_out["inputs"])  # the same trials, now with noise
    np.testing.assert_array_equal(noisy["rates"], activity_from_run(debug_run, n_trials=16, checkpoint="last", noise=True)["rates"])
    drift = np.abs(noisy["rates"] - held_out["rates"]).mean()
    assert 1e-3 < drift < 0.2, drift  # model.noise.rec 0.05: variability of that order, not a different network


@pytest.mark.slow
def test_load_run_names_a_directory_that_is_not_a_run(debug_run: Path) -> None:
    from nn4n.analysis import load_run

    with pytest.raises(FileNotFoundError, match=r"checkpoints: not an nn4n-train run directory \(it has no .hydra/config.yaml\)$"):
        load_run(debug_run / "checkpoints")


@pytest.mark.parametrize("kwargs, message", [
    ({"checkpoint": "lastt"}, r"^checkpoint: must be 'best' or 'last', got 'lastt'$"),
    ({"n_trials": 0}, r"^n_trials: must be an integer > 0, got 0$"),
    ({"n_trials": 2.5}, r"^n_trials: must be an integer > 0, got 2.5$"),
    ({"network": 1}, r"^network: must be in \[0, 1\) for the run in .*, got 1$"),
    ({"seed": -1}, r"^seed: must be an integer in \[0, 2\*\*32\), got -1$"),
    ({"timing": {"delai": 100}}, r"^timing: unknown period 'delai' for PerceptualDecisionMaking-v0; periods: fixation, stimulus, delay, decision$"),
    ({"timing": {"delay": -1}}, r"^timing.delay: must be a duration in ms \(>= 0\)"),
    ({"params": {"coh": [0]}}, r"^params: unknown parameter 'coh' for PerceptualDecisionMaking-v0; accepted: dim_ring, "),
    ({"params": {"dim_ring": 4}}, r"^params: the task then has 5 inputs and 5 outputs, the network in .* 3 and 3$"),
])
def test_activity_from_run_names_a_bad_argument(debug_run: Path, kwargs: dict, message: str) -> None:
    from nn4n.analysis import activity_from_run

    with pytest.raises(ValueError, match=message):
        activity_from_run(debug_run, **kwargs)


def test_help_says_what_the_command_does(tmp_path: Path) -> None:
    run = nn4n_train("--help", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("nn4n-train: train a recurrent network")
    assert "task: context_dm, delay_comparison" in run.stdout and "tau_range: null" in run.stdout
    assert run.stdout.rstrip().endswith("--hydra-help for Hydra's own flags.") and not list(tmp_path.iterdir())


def test_help_and_config_printing_do_not_load_torch() -> None:
    """``--help``, ``--cfg`` and shell completion only compose configs: torch and NeuroGym load once a job runs."""
    code = ("import sys, nn4n, nn4n.cli, nn4n.sweep; print(sorted({'torch', 'neurogym'} & set(sys.modules)));"
            "print(list(nn4n.recurrence.ENGINES)[:2], nn4n.CTRNN.__name__)")  # submodules and classes load on use
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[]", "['reference', 'fused'] CTRNN"]


def test_resume_puts_the_runs_own_command_line_in_its_place(tmp_path: Path) -> None:
    from nn4n.cli import _resumed

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- arch=mine\n- seed=3\n- train.steps=100\n- name=run_${seed}\n")
    sources = [{"path": "nn4n_configs", "schema": "pkg", "provider": "main"},
               {"path": "/my/configs", "schema": "file", "provider": "command-line"}]
    (run / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {"runtime": {"config_sources": sources}}}))
    assert _resumed(["--config-dir=/my/configs", "--cfg", "job", f"resume={run}", "train.steps=200"]) == [
        "--config-dir=/my/configs", "--cfg", "job", "arch=mine", "seed=3", "name=run_${seed}", f"hydra.run.dir={run}",
        "train.steps=200"]
    assert _resumed([f"resume={run}", "-cd", "/other"]) == [
        "arch=mine", "seed=3", "train.steps=100", "name=run_${seed}", f"hydra.run.dir={run}", "-cd", "/other"]
    with pytest.raises(ConfigError, match=r"^resume: the run in .* was started with --config-dir /my/configs; a config "
                                          r"folder is read only when you name it: nn4n-train --config-dir /my/configs resume="):
        _resumed([f"resume={run}"])
    assert _resumed(["seed=1"]) == ["seed=1"]
