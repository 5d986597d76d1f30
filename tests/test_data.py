"""Trial-aligned batches (nn4n.data) from real NeuroGym and nn4n tasks."""

import itertools
import os
import pickle

import numpy as np
import pytest
import torch

from nn4n.data import TrialBatch, TrialSampler, batch_stream
from nn4n.tasks import TaskKind
from nn4n.machine import cores, loader_workers
from helpers import assert_batches_equal

PDM = "PerceptualDecisionMaking-v0"
TASKS = [
    "PerceptualDecisionMaking-v0",
    "GoNogo-v0",
    "DelayMatchSample-v0",
    "ContextDecisionMaking-v0",
    "ReadySetGo-v0",
    "DelayComparison-v0",
    "IntervalDiscrimination-v0",
    "MultiSensoryIntegration-v0",
    "HierarchicalReasoning-v0",
    "ReachingDelayResponse-v0",
    "SineWave-v0",
    "PathIntegration-v0",
    "FlipFlop-v0",
]


def test_perceptual_decision_making_batch():
    batch = TrialSampler(PDM, dt=20, batch_size=8, seed=0, decision_weight=5.0).batch(0)
    assert batch.inputs.shape == (8, 110, 3) and batch.inputs.dtype == torch.float32
    assert batch.targets.shape == (8, 110) and batch.targets.dtype == torch.int64
    assert batch.mask.dtype == torch.float32 and batch.window.dtype == torch.int16
    assert batch.lengths.tolist() == [110] * 8 and batch.lengths.dtype == torch.int64
    assert (batch.window > 0).sum(1).tolist() == [5] * 8
    assert (batch.window > 0)[:, 105:].all() and not (batch.window > 0)[:, :105].any()
    assert (batch.mask[(batch.window > 0)] == 5.0).all() and (batch.mask[~(batch.window > 0)] == 1.0).all()
    assert (batch.inputs[:, :5, 0] == 1).all() and (batch.inputs[:, 105:, 0] == 0).all()  # fixation input
    assert set(batch.conditions) == {"ground_truth", "coh"}
    assert {k: v.tolist() for k, v in batch.epochs.items()} == {
        "fixation": [[0, 5]] * 8,
        "stimulus": [[5, 105]] * 8,
        "delay": [[105, 105]] * 8,
        "decision": [[105, 110]] * 8,
    }


def test_variable_length_trials_are_padded():
    batch = TrialSampler("ContextDecisionMaking-v0", dt=20, batch_size=16, seed=1, decision_weight=3.0).batch(0)
    lengths = batch.lengths.numpy()
    assert len(set(lengths)) > 1 and batch.inputs.shape[1] == lengths.max()
    for b, n in enumerate(lengths):
        assert (batch.mask[b, n:] == 0).all() and (batch.inputs[b, n:] == 0).all() and (batch.targets[b, n:] == 0).all()
        assert not (batch.window > 0)[b, n:].any()
        assert (batch.window > 0)[b, n - 5 : n].all() and (batch.window > 0)[b].sum() == 5  # decision: last 100 ms
        assert (batch.mask[b, n - 5 : n] == 3.0).all() and (batch.mask[b, : n - 5] == 1.0).all()
        assert batch.epochs["decision"][b].tolist() == [n - 5, n]


def test_conditions_match_trials():
    batch = TrialSampler(PDM, dt=20, batch_size=64, seed=2).batch(5)
    gt, coh = batch.conditions["ground_truth"], batch.conditions["coh"]
    assert gt.shape == coh.shape == (64,) and set(gt) == {0, 1} and set(coh) <= {0, 6.4, 12.8, 25.6, 51.2}
    np.testing.assert_array_equal(batch.targets[:, -1].numpy(), gt + 1)  # choice units are 1 and 2
    # strong-coherence trials: the stimulus unit of the correct side gets more input
    stim = batch.inputs[:, 5:105, 1:].mean(1).numpy()
    strong = coh == 51.2
    assert strong.any() and (stim[strong].argmax(1) == gt[strong]).all()


def test_non_numeric_trial_info_is_dropped():
    batch = TrialSampler("DelayComparison-v0", dt=20, batch_size=4, seed=0).batch(0)
    assert set(batch.conditions) == {"ground_truth", "v1", "v2"}  # 'vpair' is a tuple


@pytest.mark.parametrize("name", TASKS)
def test_every_task_builds_a_batch(name):
    period = {"ReadySetGo-v0": "production"}.get(name, "decision")  # the others that classify have "decision"
    sampler = TrialSampler(name, dt=20, batch_size=4, seed=0, decision_period=period)
    spec, batch = sampler.spec, sampler.batch(0)
    n_steps = int(batch.lengths.max())
    assert batch.inputs.shape == (4, n_steps, spec.n_inputs)
    if spec.kind is TaskKind.CLASSIFICATION:
        assert batch.targets.shape == (4, n_steps) and batch.targets.dtype == torch.int64
        assert 0 <= batch.targets.min() and batch.targets.max() < spec.n_outputs
    else:
        assert batch.targets.shape == (4, n_steps, spec.n_outputs) and batch.targets.dtype == torch.float32
    assert ((batch.mask > 0).sum(1) == batch.lengths).all()
    assert ((batch.window > 0).any(1) == bool(spec.decision_periods)).all()
    if spec.decision_periods:
        start, end = batch.epochs[spec.decision_periods[0]].T
        assert ((batch.window > 0).sum(1).numpy() == end - start).all()


def test_batch_is_a_pure_function_of_seed_and_index():
    sampler = TrialSampler(PDM, dt=20, batch_size=8, seed=0)
    first = sampler.batch(3)
    sampler.batch(0)
    assert_batches_equal(sampler.batch(3), first)
    assert_batches_equal(TrialSampler(PDM, dt=20, batch_size=8, seed=0).batch(3), first)
    assert not torch.equal(sampler.batch(4).inputs, first.inputs)
    assert not torch.equal(TrialSampler(PDM, dt=20, batch_size=8, seed=1).batch(3).inputs, first.inputs)


def test_stateful_task_is_reset_per_batch():
    # HierarchicalReasoning keeps a block counter across trials; batches must not depend on history
    sampler = TrialSampler("HierarchicalReasoning-v0", dt=20, batch_size=16, seed=0)
    first = sampler.batch(1)
    for i in range(3):
        sampler.batch(i)
    assert_batches_equal(sampler.batch(1), first)


def test_sampler_pickles_and_rebuilds_env():
    sampler = TrialSampler("FlipFlop-v0", dt=20, batch_size=4, seed=7)
    expected = sampler.batch(2)
    clone = pickle.loads(pickle.dumps(sampler))
    assert clone._variants is None and clone.spec == sampler.spec
    assert_batches_equal(clone.batch(2), expected)


def test_batch_travels_from_loader_workers_in_band():
    """A worker's batch goes through the pipe as bytes, not as one shared-memory file per tensor."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  registers torch's tensor reducers, as loader workers use them

    batch = TrialSampler(PDM, dt=20, batch_size=16, seed=1).batch(0)
    payload = bytes(ForkingPickler.dumps(batch))
    assert len(payload) > sum(getattr(batch, f).nbytes for f in ("inputs", "targets", "mask", "window", "lengths"))
    clone = pickle.loads(payload)
    assert_batches_equal(clone, batch)
    assert clone.inputs.dtype == torch.float32 and clone.targets.dtype == torch.int64


@pytest.mark.parametrize(("name", "num_workers"), [(PDM, 0), (PDM, 1), (PDM, 2), ("HierarchicalReasoning-v0", 2)])
def test_stream_matches_direct_batches(name, num_workers):
    sampler = TrialSampler(name, dt=20, batch_size=24, seed=3)
    for i, batch in enumerate(itertools.islice(batch_stream(sampler, start=5, num_workers=num_workers), 4)):
        assert_batches_equal(batch, sampler.batch(5 + i))


def test_stream_with_more_workers_than_cores_adds_no_torch_warning(recwarn: pytest.WarningsRecorder) -> None:
    """torch's several-line warning gives way to nn4n-train's one line (``train.data_workers``)."""
    sampler, workers = TrialSampler(PDM, dt=20, batch_size=4, seed=0), cores() + 1
    for i, batch in enumerate(itertools.islice(batch_stream(sampler, num_workers=workers), workers + 1)):
        assert_batches_equal(batch, sampler.batch(i))
    assert [str(w.message) for w in recwarn if "DataLoader" in str(w.message)] == []


USER_TASK = """
import numpy as np
from neurogym.core import TrialEnv
from neurogym.utils import spaces


class UserCountdown(TrialEnv):
    def __init__(self, dt=20, timing=None):
        super().__init__(dt=dt)
        self.timing = {"wait": ("choice", [100, 200, 300]), "decision": 100}
        self.observation_space = spaces.Box(0, 1, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)

    def _new_trial(self, **kwargs):
        self.add_period(["wait", "decision"])
        self.add_ob(1, "wait")
        self.set_groundtruth(1, "decision")
        return {}
"""


def test_stream_with_user_task_in_workers(tmp_path):
    (tmp_path / "countdown.py").write_text(USER_TASK)
    sampler = TrialSampler("UserCountdown-v0", dt=20, batch_size=4, seed=0, task_dirs=[tmp_path])
    batches = list(itertools.islice(batch_stream(sampler, num_workers=2), 3))
    for i, batch in enumerate(batches):
        assert_batches_equal(batch, sampler.batch(i))
    assert set(batches[0].lengths.tolist()) <= {10, 15, 20} and batches[0].conditions == {}


def test_to_moves_tensors_and_keeps_numpy_fields():
    batch = TrialSampler(PDM, dt=20, batch_size=2, seed=0).batch(0)
    moved = batch.to("cpu", non_blocking=True)
    assert moved is not batch and moved.inputs.device.type == "cpu"
    assert moved.conditions is batch.conditions and moved.epochs is batch.epochs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_pin_memory_and_to_cuda():
    batch = TrialSampler(PDM, dt=20, batch_size=2, seed=0).batch(0).pin_memory()
    assert batch.inputs.is_pinned() and batch.mask.is_pinned()
    assert batch.to("cuda", non_blocking=True).targets.is_cuda
    streamed = next(batch_stream(TrialSampler(PDM, dt=20, batch_size=2, seed=0), pin_memory=True))
    assert streamed.inputs.is_pinned()


def test_loader_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.data_workers``: a count as given; ``auto`` 1 on a CPU, one per free core (up to 8) on a GPU."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (loader_workers("3", cpu), loader_workers("0", cuda), loader_workers("auto", cpu)) == (3, 0, 1)
    for cores, want in [(1, 1), (2, 1), (5, 4), (16, 8), (64, 8)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _, cores=cores: set(range(cores)))
        assert loader_workers("auto", cuda) == want, cores


def test_grace_steps_are_scored_not_trained():
    """task.grace: the first 40 ms of the decision period (2 steps at dt 20) are out of the loss, still in its window."""
    batch = TrialSampler(PDM, dt=20, batch_size=4, seed=0, grace=40).batch(0)
    assert (batch.window[:, 105:] == 1).all() and (batch.window[:, :105] == 0).all()  # the trial ends with it
    assert (batch.mask[:, 105:107] == 0).all() and (batch.mask[:, 107:] == 5.0).all() and (batch.mask[:, :105] == 1.0).all()
    assert batch.valid.all()  # grace steps are trial steps: rate penalties and statistics still see them
    dual = TrialSampler("DualDelayMatchSample-v0", dt=20, batch_size=2, seed=0, decision_period=["test1", "test2"], grace=40).batch(0)
    assert (dual.mask[:, 100:102] == 0).all() and (dual.mask[:, 102:125] == 5).all()  # test1: 100-125
    assert (dual.mask[:, 125:127] == 0).all() and (dual.mask[:, 127:150] == 1).all()  # back to fixation after it
    assert not batch.react.any() and not dual.react.any()


def test_a_guess_while_reacting_is_trained_against():
    """task.penalize_guess: the grace at a window's start is trained (weight 1) as a time to react, not after it."""
    batch = TrialSampler(PDM, dt=20, batch_size=4, seed=0, grace=40, penalize_guess=True).batch(0)
    assert batch.react[:, 105:107].all() and batch.react.sum() == 4 * 2
    assert (batch.mask[:, 105:107] == 1.0).all() and (batch.mask[:, 107:] == 5.0).all()
    dual = TrialSampler("DualDelayMatchSample-v0", dt=20, batch_size=2, seed=0, decision_period=["test1", "test2"], grace=40,
                        penalize_guess=True).batch(0)
    assert dual.react[:, 100:102].all() and not dual.react[:, 125:127].any() and (dual.mask[:, 125:127] == 0).all()
    regression = TrialSampler("SineWave-v0", dt=20, batch_size=2, seed=0, grace=40, penalize_guess=True).batch(0)
    assert not regression.react.any()  # no fixation action, nothing to wait with


def test_rows_of_consecutive_trials():
    single = TrialSampler("GoNogo-v0", dt=20, batch_size=6, seed=0).batch(0)
    rows = TrialSampler("GoNogo-v0", dt=20, batch_size=2, seed=0, trials_per_row=3).batch(0)
    assert rows.conditions["ground_truth"].shape == (2, 3) and rows.epochs["decision"].shape == (2, 3, 2)
    # the same six trials, three to a row, one after the other from the row's start
    np.testing.assert_array_equal(rows.conditions["ground_truth"].ravel(), single.conditions["ground_truth"])
    first = int(single.lengths[0])
    assert torch.equal(rows.inputs[0, first:first + int(single.lengths[1])], single.inputs[1, :single.lengths[1]])
    assert rows.window[0].unique().tolist() == [0, 1, 2, 3] and int(rows.lengths[0]) == int(single.lengths[:3].sum())
