"""The perturbation analysis: its statistics against known values, and the science that must hold on small trained
two-area networks (input area ``sensory``, readout area ``motor``) on PerceptualDecisionMaking."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import PREVIOUS_DEFAULT, nn4n_analyze
from nn4n.stats import logistic_fit, wilson

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
SUBSET_SEEDS = range(4)


def test_wilson_intervals_match_their_published_values() -> None:
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert np.isnan(wilson(0, 0)).all()


def test_the_logistic_fit_recovers_a_known_slope_within_its_interval() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 20000)
    y = (rng.random(x.size) < 1 / (1 + np.exp(-(0.5 + 2.0 * x)))).astype(float)
    (bias, slope), cov = logistic_fit(x, y)
    se = np.sqrt(np.diag(cov))
    assert abs(slope - 2.0) < 3 * se[1] and abs(bias - 0.5) < 3 * se[0] and se[1] < 0.1
    (_, flat), cov = logistic_fit(x, np.ones_like(x))  # every answer the same: no slope, and a wide interval
    assert abs(flat) < 1.96 * np.sqrt(cov[1, 1])


@pytest.fixture(scope="module")
def two_area_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two two-area networks (one K=2 run) trained on PerceptualDecisionMaking to ~0.85 (about a minute), with the
    previous default's rate penalty and loss (``PREVIOUS_DEFAULT``), whose networks' behaviour the tests below state
    (with the current one, silencing the input area for 60 ms before the stimulus broke fixation in 3% of trials)."""
    cwd = tmp_path_factory.mktemp("pdm")
    done = subprocess.run([sys.executable, "-m", "nn4n", *PREVIOUS_DEFAULT, "arch=two_area", "train.steps=500", "train.eval_every=250",
                           "train.recurrent_lr_scale=16", "train.n_networks=2", "logging=minimal", "hydra.run.dir=run"],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((cwd / "run" / "metrics.json").read_text())["accuracy"] >= 0.75
    return cwd / "run"


def experiments(run: Path, perturbations: dict) -> list[dict[str, dict[str, float]]]:
    """Each network's conditions, by name: their measures."""
    from nn4n.analysis.perturbations import of_run

    out = []
    for network in range(2):
        results = of_run(run, network, perturbations=perturbations, survey_all=False)
        out.append({c.name: c.measures for c in results.conditions})
    return out


@pytest.mark.slow
def test_silencing_the_readout_or_the_input_during_the_stimulus_makes_the_choice_blind_to_it(two_area_runs: Path) -> None:
    """Silencing the readout area for the whole trial, or the input area during the stimulus: the psychometric
    slope's 95% interval holds 0 (the control's lies above 0); the abort rate says how the trials failed."""
    for m in experiments(two_area_runs, {"readout": {"kind": "silence", "area": "motor"},
                                         "input": {"kind": "silence", "area": "sensory", "periods": ["stimulus"]}}):
        assert m["control"]["slope_low"] > 0, m["control"]
        for name in ("readout", "input"):
            assert m[name]["slope_low"] <= 0 <= m[name]["slope_high"], (name, m[name])
            assert 0 <= m[name]["abort_rate"] <= 1 and np.isnan(m[name]["threshold"])


@pytest.mark.slow
def test_the_input_area_matters_during_the_stimulus_and_carries_the_fixation_cue(two_area_runs: Path) -> None:
    """Silencing the input area in the decision period only leaves accuracy inside the control's interval (the
    evidence has moved on); silencing it during the stimulus takes accuracy far below that. Silencing it for the
    last 60 ms before the stimulus breaks fixation in most trials: the fixation cue, too, enters through it."""
    for m in experiments(two_area_runs, {
            "decision": {"kind": "silence", "area": "sensory", "periods": ["decision"]},
            "stimulus": {"kind": "silence", "area": "sensory", "periods": ["stimulus"]},
            "before": {"kind": "silence", "area": "sensory", "steps": [2, 5]}}):
        control, decision, stimulus, before = m["control"], m["decision"], m["stimulus"], m["before"]
        assert decision["accuracy_high"] >= control["accuracy_low"] and decision["accuracy_low"] <= control["accuracy_high"]
        assert stimulus["accuracy_high"] < control["accuracy_low"] - 0.3
        assert before["abort_rate"] > 0.5 > control["abort_rate"]


@pytest.mark.slow
def test_a_larger_silenced_fraction_never_helps(two_area_runs: Path) -> None:
    """Five nested fractions of the readout area silenced in the decision period, and of the input area during
    the stimulus, averaged over both networks and four draws of the silenced neurons: accuracy never rises
    beyond the 95% interval of the pooled trials."""
    for area, period in (("motor", "decision"), ("sensory", "stimulus")):
        conditions = {f"{f} {s}": {"kind": "silence", "area": area, "periods": [period], "fraction": f, "seed": s}
                      for f in FRACTIONS for s in SUBSET_SEEDS}
        networks = experiments(two_area_runs, conditions)
        n = 256 * len(networks) * len(SUBSET_SEEDS)
        mean = [float(np.mean([m[f"{f} {s}"]["accuracy"] for m in networks for s in SUBSET_SEEDS])) for f in FRACTIONS]
        control = float(np.mean([m["control"]["accuracy"] for m in networks]))
        for before, after in zip([control, *mean], mean):
            low, high = wilson(round(after * n), n)
            assert after <= before + (high - low) / 2, (area, [control, *mean])
        assert mean[-1] < control - 0.3, (area, mean)


@pytest.mark.slow
def test_nn4n_analyze_writes_the_table_activity_figures_and_headlines(two_area_runs: Path, tmp_path: Path) -> None:
    """The survey (every area silenced in every period, every projection cut) and one named perturbation, for
    each network of the run: the csv table, the mean activity, TensorBoard figures read back, and the
    headlines nn4n-sweep-summary shows (mean over the two networks)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    done = nn4n_analyze("analysis=perturbations", f"run={two_area_runs}", f"out={tmp_path / 'out'}",
                        "+analysis.perturbations.motor_E={kind: silence, area: motor, population: E, fraction: 0.5}",
                        cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    names = ["control", "motor_E", *(f"silence {a}{w}" for a in ("sensory", "motor")
                                     for w in ("", " during fixation", " during stimulus", " during decision")),
             "lesion sensory<-motor", "lesion motor<-sensory"]
    summaries = []
    for k in range(2):
        folder = tmp_path / "out" / "networks" / str(k) / "analysis" / "perturbations"
        with open(folder / "perturbations.csv") as f:
            rows = {row["condition"]: row for row in csv.DictReader(f)}
        assert sorted(rows) == sorted(names)
        assert rows["motor_E"]["target"] == "motor/E 50%" and rows["motor_E"]["window"] == "trial"
        for row in rows.values():
            assert float(row["change_accuracy"]) == pytest.approx(float(row["accuracy"]) - float(rows["control"]["accuracy"]))
            assert float(row["accuracy_low"]) <= float(row["accuracy"]) <= float(row["accuracy_high"])
        activity = np.load(folder / "activity.npz")
        assert activity["psth"].shape[:2] == (len(names), 4) and list(activity["groups"]) == ["sensory/E", "sensory/I", "motor/E", "motor/I"]
        silenced = list(activity["conditions"]).index("silence motor")
        assert np.nanmax(activity["psth"][silenced, 2:]) == 0 and np.nanmax(activity["psth"][0, 2:]) > 0
        summaries.append(json.loads((folder / "summary.json").read_text()))
        tags = EventAccumulator(str(tmp_path / "out" / "networks" / str(k) / "tensorboard")).Reload().Tags()["images"]
        assert {"analysis/perturbations/effects", "analysis/perturbations/activity/motor_E",
                "analysis/perturbations/psychometric/lesion motor<-sensory"} <= set(tags)
    assert not (two_area_runs / "networks" / "0" / "analysis").exists()  # out= leaves the run folder alone

    from nn4n.sweep import analysis_headlines

    headlines = analysis_headlines(tmp_path / "out")
    assert headlines["perturbations.motor_E/accuracy"] == pytest.approx(np.mean([s["motor_E/accuracy"] for s in summaries]))
    assert headlines["perturbations.control/accuracy_sd"] == pytest.approx(np.std([s["control/accuracy"] for s in summaries], ddof=1))


@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), [
    ("+analysis.perturbations.x={kind: silence, area: PFC}", "analysis.perturbations.x.area: unknown area 'PFC'; areas: sensory, motor"),
    ("+analysis.perturbations.x={kind: silence, area: motor, periods: [delai]}", "analysis.perturbations.x.periods: unknown period 'delai'"),
    ("+analysis.perturbations.x={kind: silence, area: motor, fraction: 1.5}", "analysis.perturbations.x.fraction: must be a number in [0, 1], got 1.5"),
])
def test_bad_perturbations_exit_2_in_one_line(two_area_runs: Path, tmp_path: Path, override: str, message: str) -> None:
    """A bad key found by the schema (before the run loads) and ones found against the run's areas and periods
    (every other key's message: tests/test_perturb.py), each named with its perturbation's name."""
    done = nn4n_analyze("analysis=perturbations", f"run={two_area_runs}", f"out={tmp_path / 'out'}", "analysis.survey=false",
                        override, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"nn4n-analyze: error: {message}"), \
        done.stderr[-2000:]
    assert not list((tmp_path / "out").rglob("perturbations.csv"))


def test_a_regression_network_is_measured_by_mse_and_r2_against_its_control() -> None:
    """On a regression task the table holds MSE and R^2; a lesion of every readout synapse leaves the outputs at
    the readout's bias, whose MSE is the targets' mean square around it, and changes are perturbed - control."""
    from nn4n import CTRNN
    from nn4n.analysis.perturbations import run_conditions
    from nn4n.data import TrialSampler
    from nn4n.metrics import masked_mse

    sampler = TrialSampler("SineWave-v0", dt=20, batch_size=32, seed=0, decision_period=None)
    spec, batch = sampler.spec, sampler.batch(0)
    net = CTRNN({"areas": {"A": {"size": 32}}, "input_size": spec.n_inputs, "output_size": spec.n_outputs, "out_bias": True})
    results = run_conditions(net, batch, spec, {"mute": {"kind": "lesion", "area": "A"}})
    header, rows = results.table()
    assert header == ["condition", "kind", "target", "window", "mse", "r2", "change_mse", "change_r2"]
    control, mute = rows
    bias = net.b_out.detach().expand_as(batch.targets)
    assert mute[4] == pytest.approx(masked_mse(bias, batch), rel=1e-6)
    assert mute[6] == pytest.approx(mute[4] - control[4]) and mute[7] == pytest.approx(mute[5] - control[5])
    assert results.summary() == {"control/r2": control[5], "mute/r2": mute[5]}


@pytest.mark.slow
def test_activity_from_run_perturbs_the_same_trials_and_noise_as_its_control(two_area_runs: Path) -> None:
    """A perturbation of size 0 is the control bit for bit, noise included; a window leaves every step before it
    as the control's and the silenced neurons' recorded rates 0 inside it (each network of the K-network run)."""
    from nn4n.analysis import activity_from_run, neurons

    for network in range(2):
        control = activity_from_run(two_area_runs, n_trials=64, network=network, noise=True)
        nothing = activity_from_run(two_area_runs, n_trials=64, network=network, noise=True,
                                    perturb=[{"kind": "silence", "area": "motor", "fraction": 0.0}])
        for key in ("rates", "outputs", "outcome"):
            np.testing.assert_array_equal(nothing[key], control[key])
        delay = activity_from_run(two_area_runs, n_trials=64, network=network, noise=True,
                                  perturb=[{"kind": "silence", "area": "sensory", "population": "E", "periods": ["stimulus"]}])
        start, end = control["epoch_stimulus"].T
        exc = neurons(control, "sensory", "E")
        for trial in range(64):
            np.testing.assert_array_equal(delay["rates"][trial, :start[trial]], control["rates"][trial, :start[trial]])
            assert (delay["rates"][trial, start[trial]:end[trial]][:, exc] == 0).all()


@pytest.mark.slow
def test_saved_activity_is_each_conditions_record(two_area_runs: Path, tmp_path: Path) -> None:
    """``analysis.save_activity=true``: each condition's activity record, the rates activity_from_run gives."""
    from nn4n.analysis import activity_from_run

    perturbation = {"kind": "lesion", "projection": "motor<-sensory", "fraction": 0.5}
    done = nn4n_analyze("analysis=perturbations", f"run={two_area_runs}", f"out={tmp_path / 'out'}", "network=1",
                        "analysis.survey=false", "analysis.n_trials=32", "analysis.save_activity=true",
                        "+analysis.perturbations.cut={kind: lesion, projection: 'motor<-sensory', fraction: 0.5}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "out" / "networks" / "1" / "analysis" / "perturbations" / "activity"
    assert sorted(p.name for p in folder.iterdir()) == ["00_control.npz", "01_cut.npz"]
    for name, perturb in (("00_control.npz", None), ("01_cut.npz", [perturbation])):
        want = activity_from_run(two_area_runs, n_trials=32, network=1, perturb=perturb)
        np.testing.assert_array_equal(np.load(folder / name)["rates"], want["rates"])


@pytest.mark.slow
def test_a_sweep_of_a_perturbation_writes_one_folder_per_job(two_area_runs: Path, tmp_path: Path) -> None:
    """``-m`` over a perturbation's fraction: one sub-folder per job, each with its own table and config; the
    fraction 0 is the control to the last digit."""
    done = nn4n_analyze("-m", "analysis=perturbations", f"run={two_area_runs}", f"out={tmp_path / 'out'}", "network=0",
                        "analysis.survey=false", "+analysis.perturbations.s={kind: silence, area: motor}",
                        "+analysis.perturbations.s.fraction=0,1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "out" / "networks" / "0" / "analysis" / "perturbations"
    rows = {}
    for job in ("0", "1"):
        with open(folder / job / "perturbations.csv") as f:
            rows[job] = {row["condition"]: row for row in csv.DictReader(f)}
        assert f"fraction: {job}" in (folder / job / "config.yaml").read_text()
    assert rows["0"]["s"]["accuracy"] == rows["0"]["control"]["accuracy"] and float(rows["0"]["s"]["change_accuracy"]) == 0
    assert rows["1"]["s"]["target"] == "motor" and float(rows["1"]["s"]["abort_rate"]) == 1.0


def test_a_condition_may_apply_several_perturbations_together() -> None:
    """A list is one condition: the network runs with all of them at once, as ``perturb=[...]`` does."""
    import torch

    from nn4n import CTRNN
    from nn4n.analysis.perturbations import run_conditions
    from nn4n.data import TrialSampler

    sampler = TrialSampler("PerceptualDecisionMaking-v0", dt=20, batch_size=64, seed=0)
    spec, batch = sampler.spec, sampler.batch(0)
    net = CTRNN({"areas": {"A": {"size": 24}, "B": {"size": 24}}, "input_size": 3, "output_size": 3,
                 "projections": {"B": {"A": 0.3}}, "input_areas": ["A"], "readout_areas": ["B"]})
    both = [{"kind": "silence", "area": "A", "population": "I", "periods": ["stimulus"]},
            {"kind": "lesion", "projection": "B<-A", "fraction": 0.5}]
    results = run_conditions(net, batch, spec, {"both": both})
    header, rows = results.table()
    row = dict(zip(header, rows[1]))
    assert (row["kind"], row["target"], row["window"]) == ("silence+lesion", "A/I; B<-A 50%", "stimulus; trial")
    with torch.no_grad():
        _, act = net.eval()(batch.inputs, perturb=both, epochs=batch.epochs)
    valid = batch.valid.float()
    b_e = net.structure.indices("B", "E")
    want = (act.rates[..., b_e].mean(-1) * valid).sum(0) / valid.sum(0)
    np.testing.assert_allclose(results.conditions[1].psth[results.groups.index("B/E")], want.numpy(), rtol=1e-6)
