"""Fixed points against answers known exactly: a contraction's one root, a bistable pair, roots scipy finds."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import torch

from helpers import PREVIOUS_DEFAULT, nn4n_analyze
from nn4n import CTRNN
from nn4n.analysis.fixed_points import Q_TOL, find_fixed_points


def network(w_rec: np.ndarray, activation: str, w_in: np.ndarray | None = None, tau: float = 100.0) -> CTRNN:
    """An unconstrained, fully connected network with the given weights (no biases)."""
    n = len(w_rec)
    net = CTRNN({"areas": {"A": {"size": n}}, "dale": False, "long_range": "all", "readout_from": "all",
                 "self_connections": True, "activation": activation, "tau": tau, "input_size": 1 if w_in is None else w_in.shape[1],
                 "output_size": 2, "rec_bias": False, "out_bias": False})
    with torch.no_grad():
        net.w_rec = torch.as_tensor(w_rec, dtype=torch.float32)
        net.w_in = torch.as_tensor(np.ones((n, 1)) if w_in is None else w_in, dtype=torch.float32)
    return net


def test_a_contraction_has_one_fixed_point_the_linear_system_gives() -> None:
    """|W|_inf < 1 makes v -> W relu(v) + c a contraction: one fixed point, which with every v > 0 is
    (I - W)^-1 c, stable, found from every start to 1e-6."""
    rng = np.random.default_rng(0)
    n = 12
    w = rng.uniform(-1, 1, (n, n))
    w *= 0.6 / np.abs(w).sum(1, keepdims=True)  # row sums 0.6: a contraction in the max norm
    net = network(w, "relu")
    want_v = rng.uniform(0.5, 1.5, n)
    c = want_v - w @ want_v  # the drive that makes want_v the root
    with torch.no_grad():
        net.w_in = torch.as_tensor(c[:, None], dtype=torch.float32)
    want_v = np.linalg.solve(np.eye(n) - net.w_rec.detach().double().numpy(), net.w_in.detach().double().numpy()[:, 0])
    points = find_fixed_points(net, {"u=1": [1.0]}, rng.normal(0, 3, (64, n)))
    assert len(points) == 1 and points.converged.all() and points.n_starts[0] == 64
    np.testing.assert_allclose(points.v[0], want_v, atol=1e-6)
    assert points.stability == ["stable"] and points.q[0] <= Q_TOL


def test_mutual_inhibition_has_two_attractors_and_a_saddle_between() -> None:
    """Two relu units, self-excitation a = 0.5, mutual inhibition b = 1.5, drive 1: both on at 0.5 (a saddle:
    eigenvalues of -I + W are -2 and 1), or one on at 2 and the other at -2 (stable: -0.5 and -1)."""
    w = np.array([[0.5, -1.5], [-1.5, 0.5]])
    net = network(w, "relu", tau=50.0)
    starts = np.random.default_rng(1).uniform(-3, 3, (200, 2))
    points = find_fixed_points(net, {"drive": [1.0]}, starts, n_modes=1)
    order = np.lexsort(points.v.T[::-1])
    v, stability = points.v[order], [points.stability[i] for i in order]
    np.testing.assert_allclose(v, [[-2, 2], [0.5, 0.5], [2, -2]], atol=1e-6)
    assert stability == ["stable", "saddle (1 unstable)", "stable"]
    saddle = points.eigenvalues[order][1]
    np.testing.assert_allclose(sorted(saddle.real), [-2 / 50, 1 / 50], atol=1e-9)  # 1/ms: divided by tau
    np.testing.assert_allclose(sorted(points.eigenvalues[order][0].real), [-1 / 50, -0.5 / 50], atol=1e-9)
    unstable_direction = points.modes_right[order][1]  # the saddle's slowest mode: its unstable one? (|re| 0.02)
    assert unstable_direction.shape == (2, 1)
    assert points.counts() == {"fixed_points": 3, "stable": 2, "saddles": 1, "slow_points": 0, "outliers": 0, "stopped": 0}


@pytest.mark.parametrize("activation, seed, self_weight, drive", [("tanh", 2, 1.5, -0.5), ("softplus", 3, 0.5, -1.5)])
def test_every_root_scipy_finds_is_found(activation: str, seed: int, self_weight: float, drive: float) -> None:
    """Random networks strong enough to have several roots: scipy.optimize.root from many starts, and
    find_fixed_points from the same starts; every root scipy converged to is among ours (1e-6)."""
    rng = np.random.default_rng(seed)
    n = 8
    w = rng.normal(0, 2.0 / np.sqrt(n), (n, n)) + self_weight * np.eye(n)
    net = network(w, activation)
    wd = net.w_rec.detach().double().numpy()
    c = net.w_in.detach().double().numpy()[:, 0] * drive
    f = {"tanh": np.tanh, "softplus": lambda v: np.logaddexp(0, v)}[activation]
    starts = rng.normal(0, 2, (300, n))
    theirs = []
    for start in starts:
        sol = scipy.optimize.root(lambda v: -v + wd @ f(v) + c, start, tol=1e-12)
        if sol.success and np.abs(-sol.x + wd @ f(sol.x) + c).max() < 1e-9:
            theirs.append(sol.x)
    distinct = [r for i, r in enumerate(theirs) if all(np.abs(r - s).max() > 1e-6 for s in theirs[:i])]
    assert len(distinct) >= 3  # a case with several roots
    points = find_fixed_points(net, {"u": [drive]}, starts)
    for root in distinct:
        assert np.abs(points.v[points.converged] - root).max(1).min() < 1e-6, root
    assert (np.abs(-points.v + f(points.v) @ wd.T + c).max(1)[points.converged] < 1e-6).all()  # ours are roots too


def test_bad_arguments_are_named() -> None:
    net = network(np.zeros((2, 2)), "relu")
    for kwargs, message in (({"q_tol": 0}, "q_tol: must be a finite number > 0"), ({"max_iter": 0}, "max_iter"),
                            ({"merge_tol": float("nan")}, "merge_tol")):
        with pytest.raises(ValueError, match=message):
            find_fixed_points(net, {"u": [0.0]}, np.zeros((1, 2)), **kwargs)
    with pytest.raises(ValueError, match=r"inputs: each input must have 1 features"):
        find_fixed_points(net, {"u": [0.0, 1.0]}, np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"starts: must be \(starts, 2\) states"):
        find_fixed_points(net, {"u": [0.0]}, np.zeros((1, 3)))


# ----------------------------------------------------------------------------- on networks nn4n-train trained
FLIP_FLOP = ["task=flip_flop", "+task.timing.stimulus=1000", "model.areas.hidden.size=64",
             "train.steps=1000", "train.recurrent_lr_scale=64", "logging=minimal"]  # W_rec at lr: eight memories in 1000 steps


@pytest.fixture(scope="module")
def flip_flop_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64-unit E/I network trained on the 3-bit flip-flop, every bit starting at a random sign."""
    cwd = tmp_path_factory.mktemp("ff")
    run = subprocess.run([sys.executable, "-m", "nn4n", *FLIP_FLOP, "hydra.run.dir=run"], cwd=cwd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return cwd / "run"


@pytest.mark.slow
def test_a_flip_flop_network_has_eight_memories_and_saddles_between(flip_flop_run: Path) -> None:
    """Sussillo & Barak 2013: at zero input, one stable (or slow) point per memory state (each bit's readout at its +/-1
    level), and saddles between them (one unstable direction: between two states that differ in one bit)."""
    done = nn4n_analyze("analysis=fixed_points", f"run={flip_flop_run}", "analysis.inputs=[zero]", "analysis.n_starts=512",
                        cwd=flip_flop_run.parent)
    assert done.returncode == 0, done.stderr
    folder = flip_flop_run / "analysis" / "fixed_points"
    points = np.load(folder / "fixed_points.npz")
    counts = json.loads((folder / "summary.json").read_text())
    assert f"fixed points ({counts['stable']} stable," in done.stdout + done.stderr
    # a memory: a stable point, or a slow point (relu's kink can leave a memory without an exact root)
    memory = (points["stability"] == "stable") | ~points["converged"]
    stable = points["readout"][memory]
    assert len(stable) == 8 and counts["stable"] >= 6
    assert sorted(map(tuple, np.sign(stable).astype(int))) == sorted(itertools.product((-1, 1), repeat=3))
    assert np.abs(np.abs(stable) - 1).max() < 0.35  # each bit near its level
    one_unstable = points["readout"][points["converged"] & (points["n_unstable"] == 1)]
    apart = np.abs(one_unstable[:, None] - stable[None]).max(-1).min(1)  # to the nearest memory's readout
    assert len(one_unstable) >= 3 and (apart > 0.25).all()  # saddles between memories, at none of them
    assert (points["q"][points["converged"]] <= 1e-20).all()
    assert (folder / "fixed_points.csv").read_text().count("\n") == len(points["q"]) + 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = EventAccumulator(str(flip_flop_run / "tensorboard"), size_guidance={"images": 0}).Reload().Tags()["images"]
    assert {"analysis/fixed_points/pca", "analysis/fixed_points/spectrum", "analysis/fixed_points/slow_modes"} <= set(images)


@pytest.mark.slow
def test_the_analysis_command_names_bad_input_in_one_line(flip_flop_run: Path, tmp_path: Path) -> None:
    for args, message in ((["analysis.inputs=[fixation]"], "analysis.inputs: 'fixation' is not a period of the task (periods: stimulus)"),
                          (["analysis.q_tol=0"], "analysis.q_tol: must be a finite number > 0"),
                          (["analysis.n_starts=-1"], "analysis.n_starts"),
                          (["analysis.unknown=1"], "analysis.unknown"),
                          (["threads=0"], "threads: must be >= 1, got 0"),
                          (["run=nowhere"], "run: nowhere is not a directory"),
                          ([f"run={tmp_path}"], "holds no finished nn4n-train run")):
        argv = ["analysis=fixed_points", f"run={flip_flop_run}", *args] if not args[0].startswith("run=") else ["analysis=fixed_points", *args]
        done = nn4n_analyze(*argv, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr[-2000:]
        assert lines[0].startswith(("nn4n-analyze: error: analysis.", "nn4n-analyze: error: run:",
                                    "nn4n-analyze: error: threads:")), lines[0]


@pytest.mark.slow
def test_a_perceptual_decision_network_holds_fixation_and_leans_to_the_evidence(tmp_path: Path) -> None:
    """The network trained on PerceptualDecisionMaking with the previous default's rate penalty and loss
    (``PREVIOUS_DEFAULT``: with the current one, a search from 256 starts found no stable point under the
    fixation input, where the network oscillates slowly around a weakly unstable focus: docs/analysis.md).
    With the fixation input: one stable point, and it fixates. With the fixation input and a
    strong stimulus for either choice (the stimulus period's mean input over those trials): a stable point that still fixates, its readout leaning to the stimulus' choice.
    No search stops far from every point, and slow points are few (merged)."""
    run = subprocess.run([sys.executable, "-m", "nn4n", *PREVIOUS_DEFAULT, "logging=minimal", "hydra.run.dir=run"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    from nn4n.analysis.fixed_points import of_run

    inputs = ["fixation", "stimulus[coh=51.2,ground_truth=0]", "stimulus[coh=51.2,ground_truth=1]"]
    points = of_run(tmp_path / "run", inputs=inputs, n_starts=256).points
    for i, (choice, other) in enumerate(((None, None), (1, 2), (2, 1))):
        stable = points.converged & (points.n_unstable == 0) & (points.input_index == i)
        assert stable.sum() >= 1 and (points.readout[stable].argmax(1) == 0).all(), inputs[i]
        if choice is not None:
            assert (points.readout[stable, choice] > points.readout[stable, other]).all(), inputs[i]
    counts = points.counts()
    assert counts["slow_points"] <= 0.05 * 3 * 256, counts
