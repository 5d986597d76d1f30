"""Task sets (Yang et al. 2019): the shared layout, rule inputs, mixing, the ring read-out and per-task scores."""
from __future__ import annotations

import csv
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nn4n.checkpoint import load_checkpoint
from nn4n.data import TrialSampler
from nn4n.layout import shared_layout
from nn4n.metrics import (BROKE_FIXATION, CORRECT, NO_RESPONSE, WRONG, objective, ring_targets, scores, task_loss,
                          trial_outcomes)
from nn4n.tasks import TaskKind, make_variants
from helpers import assert_batches_equal, nn4n_analyze

YANG = {"yang19.go-v0": 1.0, "yang19.dm1-v0": 1.0, "yang19.dms-v0": 2.0}


def task_set(batch_size: int = 64, seed: int = 0, **kwargs) -> TrialSampler:
    return TrialSampler("set", 20, batch_size, seed, params={"dim_ring": 32}, tasks=kwargs.pop("tasks", YANG), **kwargs)


@pytest.fixture(scope="module")
def ring() -> TrialSampler:
    return task_set(balanced=True, output="ring", grace=100)


def test_channels_are_shared_by_name_with_a_rule_input_per_task() -> None:
    tasks = {t: make_variants(t, 20) for t in ("PerceptualDecisionMaking-v0", "MultiSensoryIntegration-v0", "GoNogo-v0")}
    layout = shared_layout(tasks)
    assert layout.input_names == {"fixation": [0], "stimulus": [1, 2], "stimulus_mod1": [3, 4], "stimulus_mod2": [5, 6],
                                  "nogo": [7], "go": [8], "rule PerceptualDecisionMaking-v0": [9],
                                  "rule MultiSensoryIntegration-v0": [10], "rule GoNogo-v0": [11]}
    assert layout.output_names == {"fixation": [0], "choice": [1, 2], "go": [3]}
    assert (layout.n_inputs, layout.n_outputs, layout.rules, layout.task) == (12, 4, (9, 10, 11), (0, 1, 2))
    assert [p.tolist() for p in layout.inputs] == [[0, 1, 2], [0, 3, 4, 5, 6], [0, 7, 8]]
    assert [p.tolist() for p in layout.outputs] == [[0, 1, 2], [0, 1, 2], [0, 3]]


def test_yang19_layout_is_the_papers() -> None:
    sampler = TrialSampler("yang19", 20, 8, 0, params={"dim_ring": 32}, tasks={t: 1 for t in YANG}, output="ring")
    spec = sampler.spec
    assert spec.input_names["stimulus_mod1"] == list(range(1, 33)) and spec.input_names["stimulus_mod2"] == list(range(33, 65))
    assert (spec.n_inputs, spec.n_outputs, spec.kind, spec.fixation) == (68, 33, TaskKind.RING, 0)
    assert spec.tasks == tuple(YANG) and spec.input_labels[65:] == [f"rule {t}" for t in YANG]


def test_each_trial_carries_its_tasks_rule_and_its_modality(ring: TrialSampler) -> None:
    batch = ring.batch(0)
    task, variant = batch.conditions["task"], batch.conditions["variant"]
    assert np.bincount(task).tolist() == [22, 21, 21]  # balanced: the tasks in turn
    inputs = batch.inputs.numpy()
    for b in range(len(task)):
        steps = int(batch.lengths[b])
        rules = inputs[b, :steps, 65:]
        assert (rules[:, task[b]] == 1).all() and (np.delete(rules, task[b], 1) == 0).all()  # the whole trial
        assert (inputs[b, steps:] == 0).all()
        if task[b] != 1:  # go and DMS show their stimulus in one modality's ring only
            shown = np.abs(inputs[b, :steps, 1:65]).reshape(steps, 2, 32).sum((0, 2)) > 0
            assert shown.tolist() == [variant[b] == 0, variant[b] == 1]
    assert set(variant[task == 0]) == {0, 1} and set(variant[task == 1]) == {0}


def test_a_collection_alone_draws_its_modalities() -> None:
    go = TrialSampler("yang19.go-v0", 20, 64, 0, params={"dim_ring": 32})
    assert go.spec.tasks == () and go.spec.n_inputs == 65 and list(go.spec.input_names) == ["fixation", "stimulus_mod1", "stimulus_mod2"]
    batch = go.batch(0)
    assert "task" not in batch.conditions and 20 < batch.conditions["variant"].sum() < 44


def test_mixing_by_weight_per_trial_or_per_batch() -> None:
    counts = np.bincount(np.concatenate([task_set(256).batch(i).conditions["task"] for i in range(8)]), minlength=3)
    assert np.allclose(counts / counts.sum(), [0.25, 0.25, 0.5], atol=0.03)
    per_batch = [task_set(32, mixing="batch").batch(i).conditions["task"] for i in range(12)]
    assert all(len(set(t)) == 1 for t in per_batch) and len({t[0] for t in per_batch}) > 1
    only = task_set(32, tasks={"yang19.go-v0": 0.0, "yang19.dms-v0": 1.0}).batch(0).conditions["task"]
    assert set(only) == {1}


def test_batches_are_a_function_of_seed_and_index() -> None:
    sampler = task_set(16)
    clone = pickle.loads(pickle.dumps(sampler))
    assert_batches_equal(clone.batch(3), sampler.batch(3))
    assert not torch.equal(sampler.batch(4).inputs[:, :40], sampler.batch(3).inputs[:, :40])


def test_single_tasks_keep_their_own_channels_and_batches() -> None:
    plain = TrialSampler("PerceptualDecisionMaking-v0", 20, 8, 5)
    assert plain.layout.rules == (None,) and plain.spec.tasks == ()
    env = make_variants("PerceptualDecisionMaking-v0", 20)[0].env  # the env alone, seeded as the sampler seeds batch 0
    env.seed(int(np.random.SeedSequence([5, 0]).generate_state(1)[0]))
    env.new_trial()
    assert np.array_equal(plain.batch(0).inputs[0, :len(env.ob)].numpy(), env.ob)


@pytest.mark.parametrize("tasks, message", [
    ({"PerceptualDecisionMaking-v0": 1, "DelayComparison-v0": 1},
     "task.tasks: DelayComparison-v0's observation channels 'stimulus' has 1 channels where an earlier task's has 2"),
    ({"PerceptualDecisionMaking-v0": 1, "yang19.go-v0": 1}, "task.tasks: yang19.go-v0's actions 'choice' has 16 channels where an earlier task's has 2"),
    ({"PerceptualDecisionMaking-v0": 1, "PathIntegration-v0": 1}, "task.tasks: PathIntegration-v0 has a continuous action space"),
    ({"PerceptualDecisionMaking-v0": 1, "ReadySetGo-v0": 1}, "task.tasks: ReadySetGo-v0 is a timing task"),
])
def test_tasks_that_cannot_share_a_layout_are_named(tasks: dict, message: str) -> None:
    decision = "production" if "ReadySetGo-v0" in tasks else "decision"
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        TrialSampler("set", 20, 4, 0, tasks=tasks, decision_period=[decision] if decision == "decision" else None).spec


def test_ring_targets_are_the_papers_bump() -> None:
    spec = task_set(4, output="ring").spec
    table = ring_targets(spec)
    assert table[0].tolist() == pytest.approx([0.8] + [0.05] * 32)  # fixate
    near = 0.05 + 0.8 * math.exp(-0.5 * (2 * math.pi / 32 / (math.pi / 8)) ** 2)
    assert table[1, 0] == pytest.approx(0.05) and table[1, 1] == pytest.approx(0.85)  # class 1: direction 0
    assert table[1, 2] == pytest.approx(near) and table[1, 32] == pytest.approx(near)  # neighbours, on the circle
    assert table[17, 1] == pytest.approx(0.05 + 0.8 * math.exp(-0.5 * 64))  # the opposite direction


def logits(probabilities: torch.Tensor) -> torch.Tensor:
    return torch.log(probabilities) - torch.log1p(-probabilities)


def test_ring_outcomes_of_hand_built_read_outs(ring: TrialSampler) -> None:
    """Read-outs built from the targets score correct; rotated by 0.19 pi still correct, by 0.21 pi wrong; fixation
    let go before the response window is an abort, as is fixating through it."""
    batch, spec = ring.batch(0), ring.spec
    perfect = logits(ring_targets(spec)[batch.targets])
    out = trial_outcomes(perfect, batch, spec)
    assert (out.outcome[:, 0] == CORRECT).all() and torch.equal(out.choice[:, 0], out.target[:, 0])
    task = torch.as_tensor(batch.conditions["task"])
    go = torch.nonzero((task == 0)).flatten()  # go trials: a direction to report
    directions = torch.arange(32) * (2 * math.pi / 32)

    def pointing(offset: float) -> torch.Tensor:
        rotated = perfect.clone()
        for b in go.tolist():
            target = out.target[b, 0] - 1
            bump = 0.05 + 0.8 * torch.exp(-0.5 * (torch.remainder(directions - directions[target] - offset + math.pi, 2 * math.pi) - math.pi) ** 2 / (math.pi / 8) ** 2)
            window = batch.window[b] > 0
            rotated[b, window, 1:] = logits(bump)
        return trial_outcomes(rotated, batch, spec).outcome[go, 0]

    assert (pointing(0.19 * math.pi) == CORRECT).all() and (pointing(0.21 * math.pi) == WRONG).all()
    broke, held = perfect.clone(), perfect.clone()
    first = int(go[0])
    start = int((batch.window[first] > 0).nonzero()[0])
    broke[first, start - 3, 0] = -5.0  # fixation unit below 0.5 three steps before the response
    held[first, :, 0] = 5.0  # fixating to the end
    assert trial_outcomes(broke, batch, spec).outcome[first, 0] == BROKE_FIXATION
    assert trial_outcomes(held, batch, spec).outcome[first, 0] == NO_RESPONSE


def test_each_task_is_scored_on_its_own(ring: TrialSampler) -> None:
    batch, spec = ring.batch(0), ring.spec
    read_out = logits(ring_targets(spec)[batch.targets])
    dms = torch.as_tensor(batch.conditions["task"]) == 2
    read_out[dms, :, 0] = 5.0  # DMS: never respond (right on non-match trials only)
    metrics = scores(read_out, batch, spec)
    non_match = (batch.targets[dms].amax(1) == 0).float().mean().item()  # a DMS trial to fixate through
    assert metrics["accuracy/yang19.go-v0"] == metrics["accuracy/yang19.dm1-v0"] == 1.0
    assert metrics["accuracy/yang19.dms-v0"] == pytest.approx(non_match) and 0 < non_match < 1
    assert metrics["accuracy"] == pytest.approx((2 + non_match) / 3) and metrics["accuracy_min"] == pytest.approx(non_match)
    assert metrics["abort_rate/yang19.dms-v0"] == pytest.approx(1 - non_match)
    assert objective(spec, "accuracy_min").metric == "accuracy_min" and objective(spec).metric == "accuracy"


def test_ring_loss_is_the_weighted_squared_error_of_sigmoid_units(ring: TrialSampler) -> None:
    batch, spec = ring.batch(0), ring.spec
    outputs = torch.randn(*batch.targets.shape, 33, generator=torch.Generator().manual_seed(0))
    error = (torch.sigmoid(outputs) - ring_targets(spec)[batch.targets]) ** 2
    error[..., 0] *= 4  # the fixation unit
    expected = (error.mean(-1) * batch.mask).sum() / batch.mask.sum()
    assert task_loss(outputs, batch, spec).item() == pytest.approx(expected.item(), rel=1e-5)
    assert task_loss(logits(ring_targets(spec)[batch.targets]), batch, spec).item() == pytest.approx(0, abs=1e-10)


def test_task_variance_of_hand_built_rates() -> None:
    """Unit 0 follows each trial's condition after fixation (its variance is the conditions'), unit 1 is the same on
    every trial; trials of different fixation lengths are aligned at fixation's end and cut at the shortest."""
    from nn4n.analysis.task_variance import task_variance

    condition = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 5.0])
    task = np.array([0, 0, 0, 0, 1, 1])
    start = np.array([2, 3, 4, 2, 2, 2])
    lengths = np.array([10, 12, 9, 10, 10, 10])
    rates = np.zeros((6, 12, 3))
    for b in range(6):
        rates[b, start[b]:lengths[b], 0] = condition[b]
        rates[b, :start[b], 0] = 100.0  # fixation: left out
        rates[b, :, 1] = 0.7
    variance = task_variance(rates, lengths, start, task, 2)
    assert variance[0].tolist() == pytest.approx([np.var([0, 1, 2, 3]), 0.0])
    assert variance[1].tolist() == pytest.approx([0.0, 0.0]) and variance[2].tolist() == [0.0, 0.0]


def test_clusters_found_where_they_were_planted() -> None:
    """Three groups of units, each varying in its own tasks (plus noise), and silent units: three clusters, each
    group whole, the silent units dropped, clusters numbered by their preferred task."""
    from nn4n.analysis.task_variance import cluster_units

    rng = np.random.default_rng(0)
    planted = np.repeat([2, 0, 1], 20)  # group of each unit: group g varies in tasks 2g, 2g + 1
    variance = np.zeros((70, 6))
    for unit, g in enumerate(planted):
        variance[unit, [2 * g, 2 * g + 1]] = rng.uniform(0.5, 1.0, 2)
    variance[:60] += rng.uniform(0, 0.05, (60, 6))
    variance[60:] = rng.uniform(0, 1e-4, (10, 6))  # below min_variance in total
    clusters = cluster_units(variance, min_variance=1e-3, max_clusters=10)
    assert clusters.kept.tolist() == list(range(60)) and clusters.n_clusters == 3
    assert clusters.labels.tolist() == planted.tolist()  # numbered by preferred task: the planted groups' order
    assert (clusters.preferred // 2).tolist() == [0, 1, 2]  # cluster c prefers task 2c or 2c + 1
    assert clusters.silhouette.argmax() == 1 and clusters.ks[1] == 3
    assert (clusters.profiles.max(1) == 1).all()


@pytest.fixture(scope="module")
def trained_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real nn4n-train run of a vanilla network on Yang et al.'s 20 tasks, one of them at weight 0 (a few steps:
    every file, not a skill)."""
    cwd = tmp_path_factory.mktemp("set")
    done = subprocess.run([sys.executable, "-m", "nn4n", "debug=fast", "task=yang19", "model=vanilla", "model.areas.hidden.size=64",
                           "++task.weights={yang19.anti-v0: 0}", "train.eval_trials=40", "hydra.run.dir=run"],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return cwd / "run"


@pytest.mark.slow
def test_a_task_set_run_scores_every_task(trained_set: Path) -> None:
    metrics = json.loads((trained_set / "metrics.json").read_text())
    accuracies = {k.removeprefix("accuracy/"): v for k, v in metrics.items() if k.startswith("accuracy/")}
    assert len(accuracies) == 20 and "yang19.anti-v0" in accuracies  # weight 0: not trained, still scored
    assert metrics["accuracy"] == pytest.approx(np.mean(list(accuracies.values())))
    assert metrics["accuracy_min"] == min(accuracies.values()) and metrics["objective"] == "accuracy"
    assert "each of the 20 tasks on its own" in metrics["scored"]
    events = EventAccumulator(str(trained_set / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    wanted = {f"eval/accuracy/{t}" for t in accuracies} | {"eval/accuracy", "eval/accuracy_min", "eval/abort_rate"}
    assert wanted <= set(events.Tags()["scalars"])
    with np.load(trained_set / "activity.npz") as record:
        assert record["tasks"].tolist() == list(accuracies) and record["inputs"].shape[-1] == 85
        assert np.bincount(record["cond_task"]).tolist() == [2] * 20  # held out: every task alike


@pytest.mark.slow
def test_nn4n_analyze_task_variance(trained_set: Path, tmp_path: Path) -> None:
    done = nn4n_analyze("analysis=task_variance", f"run={trained_set}", f"out={tmp_path}", "analysis.n_trials=8",
                        "analysis.max_clusters=6", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "analysis" / "task_variance"
    summary = json.loads((folder / "summary.json").read_text())
    with np.load(folder / "task_variance.npz") as arrays:
        assert arrays["variance"].shape == (64, 20) and len(arrays["tasks"]) == 20
        kept, labels = arrays["kept"], arrays["labels"]
        assert summary["units_kept"] == len(kept) == len(labels) and summary["n_clusters"] == labels.max() + 1
        assert arrays["ks"].tolist() == [2, 3, 4, 5, 6] and summary["silhouette"] == pytest.approx(arrays["silhouette"].max())
        assert summary["largest_k_tried"] == 6
        at_bound = summary["n_clusters"] == 6  # the headline says so: the silhouette may rise beyond
        assert ("raise analysis.max_clusters" in done.stdout + done.stderr) == at_bound
        assert (np.diff(arrays["preferred_task"]) >= 0).all()  # clusters numbered by preferred task
        assert arrays["lesioned_accuracy"].shape == (summary["n_clusters"], 20)
    with open(folder / "clusters.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["n_units"]) for r in rows] == np.bincount(labels).tolist()
    assert sum(int(r["hidden"]) for r in rows) == len(kept)  # no Dale's law: units per area
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"analysis/task_variance/units_by_cluster", "analysis/task_variance/silhouette",
            "analysis/task_variance/lesions"} <= set(events.Tags()["images"])
    assert "units vary, in" in done.stdout and not (trained_set / "analysis").exists()  # out=: the run untouched


@pytest.mark.slow
def test_task_sets_resume_bitwise_in_two_areas_with_several_networks(tmp_path: Path) -> None:
    """Two networks of two areas on three tasks (one task per batch): 20 steps straight, or 12 then 8 more."""
    def train(run: str, steps: int) -> None:
        done = subprocess.run([sys.executable, "-m", "nn4n", "debug=fast", "task=yang19", "arch=two_area",
                               "train.n_networks=2", "task.mixing=batch", "logging=minimal", f"train.steps={steps}",
                               "task.tasks=[yang19.go-v0,yang19.dm1-v0,yang19.dms-v0]", f"hydra.run.dir={run}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr

    train("straight", 20), train("resumed", 12), train("resumed", 20)
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("straight", "resumed"))
    assert b["step"] == 20 and len(a["models"]) == 2
    for mine, theirs in zip(a["models"], b["models"]):
        assert all(torch.equal(t, theirs[k]) for k, t in mine.items())
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert {k for k in metrics["networks"][0] if k.startswith("accuracy/")} == {f"accuracy/yang19.{t}-v0" for t in ("go", "dm1", "dms")}


def test_the_fixation_cue_can_be_held_until_the_response() -> None:
    """NeuroGym's delayed DM turns its fixation input off after the first period; held, it goes off when the
    response period begins (the paper's go cue). A task that keeps it on already is unchanged."""
    delayed = {hold: TrialSampler("yang19.dlydm1-v0", 20, 4, 0, params={"dim_ring": 32}, hold_fixation=hold).batch(0)
               for hold in (False, True)}
    for b, (start, end) in enumerate(delayed[True].epochs["decision"]):
        cue = {hold: delayed[hold].inputs[b, :, 0].numpy() for hold in delayed}
        assert (cue[True][:start] == 1).all() and (cue[True][start:] == 0).all()
        assert (cue[False][:delayed[False].epochs["fixation"][b, 1]] == 1).all() and (cue[False][delayed[False].epochs["stim1"][b, 0]:] == 0).all()
        assert torch.equal(delayed[True].inputs[b, :, 1:], delayed[False].inputs[b, :, 1:])  # the stimuli as they were
    go = {hold: TrialSampler("yang19.go-v0", 20, 4, 0, params={"dim_ring": 32}, hold_fixation=hold).batch(0) for hold in (False, True)}
    assert_batches_equal(go[True], go[False])
    with pytest.raises(ValueError, match="task.hold_fixation: PathIntegration-v0 has no input named fixation"):
        TrialSampler("PathIntegration-v0", 20, 4, 0, hold_fixation=True).spec


def test_task_variance_needs_a_task_set() -> None:
    from nn4n.analysis.task_variance import of_network
    from nn4n.config import Config, TaskConfig
    from nn4n.model import CTRNN

    cfg = Config(model={"areas": {"hidden": {"size": 8}}, "input_size": 3, "output_size": 3},
                 task=TaskConfig(tasks=["PerceptualDecisionMaking-v0"]))
    with pytest.raises(ValueError, match="^analysis: task_variance needs a task set .* trains PerceptualDecisionMaking-v0 alone"):
        of_network(CTRNN(cfg.model), cfg)
