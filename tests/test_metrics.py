"""Loss and performance measures (nn4n.metrics) on real task batches."""

import math

import pytest
import torch
import torch.nn.functional as F

import numpy as np

from nn4n.data import TrialBatch, TrialSampler
from nn4n.metrics import (BROKE_FIXATION, CORRECT, NO_RESPONSE, WRONG, explained_variance, masked_mse, objective, scores,
                          task_loss, trial_outcomes)
from nn4n.tasks import TaskKind, TaskSpec


@pytest.fixture(scope="module")
def pdm():
    return TrialSampler("PerceptualDecisionMaking-v0", dt=20, batch_size=512, seed=0, decision_weight=5.0).batch(0)


@pytest.fixture(scope="module")
def context_dm():
    return TrialSampler("ContextDecisionMaking-v0", dt=20, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def padded(context_dm):
    return context_dm.batch(0)


def test_classification_loss_matches_hand_computation(padded, context_dm):
    logits = torch.randn(*padded.targets.shape, 3, generator=torch.Generator().manual_seed(0))
    total, weight = 0.0, 0.0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            w = padded.mask[b, t].item()
            nll = -torch.log_softmax(logits[b, t], -1)[padded.targets[b, t]].item()
            total, weight = total + w * nll, weight + w
    assert weight == padded.mask.sum().item() > 0
    assert task_loss(logits, padded, context_dm.spec).item() == pytest.approx(total / weight, rel=1e-5)


def test_classification_loss_ignores_padding_and_backpropagates(padded, context_dm):
    logits = torch.zeros(*padded.targets.shape, 3, requires_grad=True)
    loss = task_loss(logits, padded, context_dm.spec)
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)  # uniform logits, any weights
    loss.backward()
    pad = padded.mask == 0
    assert pad.any() and (logits.grad[pad] == 0).all() and (logits.grad[~pad] != 0).any()


def test_while_reacting_only_a_guess_costs():
    """react steps: -log(p(fixate) + p(answer)); fixating or answering costs ~0, the other choice costs its log odds."""
    targets, window = [[0, 1, 1, 1]], [[0, 1, 1, 1]]
    batch = hand_batch(targets, window)
    batch.react[0, 1] = True

    def loss_at_react(action: int) -> float:
        logits = torch.full((1, 4, 3), -20.0)
        logits[0, 0, 0] = logits[0, 2:, 1] = logits[0, 1, action] = 20.0  # fixate, react with action, answer 1
        return task_loss(logits, batch, spec()).item() * 4  # the sum: all 4 steps weigh 1

    assert loss_at_react(0) == pytest.approx(0.0, abs=1e-6) and loss_at_react(1) == pytest.approx(0.0, abs=1e-6)
    assert loss_at_react(2) == pytest.approx(40.0 - math.log(2), rel=1e-3)  # -log(2 e^-40 / (1 + 2 e^-40)) -> 40 - log 2
    logits = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(1))
    p = logits[0, 1].softmax(-1)
    rest = sum(-logits[0, t].log_softmax(-1)[targets[0][t]].item() for t in (0, 2, 3))
    assert task_loss(logits, batch, spec()).item() * 4 == pytest.approx(rest - math.log(p[0] + p[1]), rel=1e-5)
    batch.targets[0, 1] = 0  # a no-go step: plain cross-entropy towards fixation, not -log(2 p)
    assert task_loss(logits, batch, spec()).item() * 4 == pytest.approx(
        sum(-logits[0, t].log_softmax(-1)[batch.targets[0, t]].item() for t in range(4)), rel=1e-5)


def test_regression_loss_and_masked_mse():
    flip_flop = TrialSampler("FlipFlop-v0", dt=20, batch_size=4, seed=0, decision_weight=5.0)
    batch = flip_flop.batch(0)
    outputs = torch.full_like(batch.targets, 0.5)
    squared = (outputs - batch.targets) ** 2  # (B, T, 3)
    expected = (squared.mean(-1) * batch.mask).sum() / batch.mask.sum()
    assert task_loss(outputs, batch, flip_flop.spec).item() == pytest.approx(expected.item(), rel=1e-6)
    assert masked_mse(outputs, batch) == pytest.approx(squared.mean().item(), rel=1e-6)  # no padding here
    assert masked_mse(batch.targets, batch) == 0.0


def test_explained_variance():
    batch = TrialSampler("FlipFlop-v0", dt=20, batch_size=8, seed=0).batch(0)
    assert explained_variance(batch.targets, batch) == 1.0
    mean = batch.targets[batch.mask > 0].mean(0)
    assert explained_variance(mean.expand_as(batch.targets), batch) == pytest.approx(0.0, abs=1e-6)
    noisy = batch.targets + 0.1 * torch.randn_like(batch.targets)
    error = masked_mse(noisy, batch) * batch.targets[batch.mask > 0].numel()
    spread = (batch.targets[batch.mask > 0] - mean).square().sum().item()
    assert explained_variance(noisy, batch) == pytest.approx(1 - error / spread, rel=1e-4)


def test_masked_mse_ignores_padding():
    batch = TrialSampler("ReachingDelayResponse-v0", dt=20, batch_size=16, seed=0).batch(0)
    pad = batch.mask == 0
    assert pad.any()
    outputs = batch.targets.clone()
    outputs[pad] = 100.0
    assert masked_mse(outputs, batch) == 0.0
    outputs[~pad] += 1.0
    assert masked_mse(outputs, batch) == pytest.approx(1.0)


def spec(periods: tuple[str, ...] = ("decision",), fixation: int | None = 0, prod_margin: float | None = None,
         n_outputs: int = 3) -> TaskSpec:
    return TaskSpec("Hand-v0", 2, n_outputs, TaskKind.CLASSIFICATION, {}, {}, periods, 20.0, fixation, prod_margin)


def hand_batch(targets: list[list[int]], windows: list[list[int]], lengths: list[int] | None = None) -> TrialBatch:
    """Rows of hand-written per-step targets and response windows (0 outside them)."""
    targets_t, window = torch.tensor(targets), torch.tensor(windows, dtype=torch.int16)
    lengths_t = torch.tensor(lengths or [targets_t.shape[1]] * len(targets))
    mask = (torch.arange(targets_t.shape[1]) < lengths_t[:, None]).float()
    return TrialBatch(torch.zeros(*targets_t.shape, 2), targets_t, mask, window, torch.zeros_like(mask, dtype=torch.bool),
                      lengths_t, {}, {})


def acting(actions: list[list[int]], n_outputs: int = 3) -> torch.Tensor:
    """Outputs whose argmax is the given action at every step."""
    return F.one_hot(torch.tensor(actions), n_outputs).float()


def test_outcomes_of_hand_built_trials():
    """Fixation for 7 steps, then a 3-step response period; a broken fixation and a missing response are
    aborts, the first response is the choice, withholding is the answer to a no-go target."""
    fix, go, nogo = [0] * 7, [0] * 7 + [2] * 3, [0] * 10
    window = [0] * 7 + [1] * 3
    batch = hand_batch([go, go, go, go, nogo, nogo, [0] * 5 + [1] * 3 + [0, 0]],
                       [window] * 6 + [[0] * 5 + [1] * 3 + [0, 0]], lengths=[10] * 6 + [8])
    actions = [fix + [0, 2, 2],      # waits, then answers: correct
               [0, 0, 0, 1] + [0] * 3 + [2] * 3,  # leaves fixation during the stimulus: broke fixation
               fix + [0, 0, 0],      # never answers a go target: no response
               fix + [1, 2, 2],      # the first response is the wrong one: wrong
               fix + [0, 0, 0],      # no-go, withholds: correct
               fix + [0, 2, 0],      # no-go, responds: wrong
               [0] * 5 + [1, 1, 1] + [2, 2]]  # shorter row: its padding is not read
    out = trial_outcomes(acting(actions), batch, spec())
    assert out.outcome[:, 0].tolist() == [CORRECT, BROKE_FIXATION, NO_RESPONSE, WRONG, CORRECT, WRONG, CORRECT]
    assert out.choice[:, 0].tolist() == [2, 2, 0, 1, 0, 2, 1] and out.target[:, 0].tolist() == [2, 2, 2, 2, 0, 0, 1]
    metrics = scores(acting(actions), batch, spec())
    assert (metrics["accuracy"], metrics["abort_rate"]) == (pytest.approx(3 / 7), pytest.approx(2 / 7))


def test_each_response_period_is_scored():
    """Two response periods (test1, test2) with a delay to fixate through between them."""
    targets = [[0, 0, 0, 1, 1, 0, 0, 2, 2]] * 3
    window = [[0, 0, 0, 1, 1, 0, 0, 2, 2]] * 3
    actions = [[0, 0, 0, 1, 1, 2, 0, 2, 2],   # test1 right, then leaves fixation in the delay: test2 aborted
               [0, 0, 0, 2, 2, 0, 0, 2, 2],   # test1 wrong, test2 right
               [0, 0, 0, 1, 1, 0, 0, 2, 2]]   # both right
    two = spec(("test1", "test2"))
    out = trial_outcomes(acting(actions), hand_batch(targets, window), two)
    assert out.outcome.tolist() == [[CORRECT, BROKE_FIXATION], [WRONG, CORRECT], [CORRECT, CORRECT]]
    assert out.period.tolist() == [0, 1]
    metrics = scores(acting(actions), hand_batch(targets, window), two)
    assert metrics["accuracy"] == pytest.approx(4 / 6) and metrics["abort_rate"] == pytest.approx(1 / 6)
    assert metrics["accuracy/test1"] == pytest.approx(2 / 3) and metrics["accuracy/test2"] == pytest.approx(2 / 3)


def test_timing_responses_count_within_the_production_margin():
    """The target is to go at step 20 of a window starting at step 10: an interval of 200 ms, counted right
    within 0.2 * 200 + 25 = 65 ms (dt = 20 ms)."""
    target = [0] * 20 + [1] + [0] * 9
    window = [0] * 10 + [1] * 20
    respond = {step: [0] * step + [1] * (30 - step) for step in (23, 24, 17)}
    actions = [respond[23], respond[24], respond[17], [0] * 30, [0] * 5 + [1] + [0] * 24]
    timing = spec(prod_margin=0.2, n_outputs=2)
    out = trial_outcomes(acting(actions, 2), hand_batch([target] * 5, [window] * 5), timing)
    assert out.outcome[:, 0].tolist() == [CORRECT, WRONG, CORRECT, NO_RESPONSE, BROKE_FIXATION]
    np.testing.assert_allclose(out.produced_interval[:3, 0], [260, 280, 140])
    assert out.target_interval[:, 0].tolist() == [200.0] * 5 and math.isnan(out.produced_interval[3, 0])
    metrics = scores(acting(actions, 2), hand_batch([target] * 5, [window] * 5), timing)
    assert metrics["interval_error_ms"] == pytest.approx((60 + 80 + 60) / 3)  # over the responses, aborts left out


def test_without_a_fixation_action_the_response_is_read_at_the_periods_end():
    targets, window = [[3, 3, 3, 3]] * 2, [[1, 1, 1, 1]] * 2
    out = trial_outcomes(acting([[0, 1, 2, 3], [3, 3, 3, 0]], 4), hand_batch(targets, window), spec(("stimulus",), None, n_outputs=4))
    assert out.outcome[:, 0].tolist() == [CORRECT, WRONG]


def test_real_task_outcomes(pdm):
    perfect = F.one_hot(pdm.targets, 3).float() * 10
    pdm_spec = TrialSampler("PerceptualDecisionMaking-v0", dt=20, batch_size=1, seed=0).spec
    assert scores(perfect, pdm, pdm_spec) | {"loss": 0} == {"loss": 0, "accuracy": 1.0, "abort_rate": 0.0}
    always_fixating = torch.zeros_like(perfect)
    always_fixating[..., 0] = 1
    assert scores(always_fixating, pdm, pdm_spec)["abort_rate"] == 1.0  # never answers: every trial an abort
    sampler = TrialSampler("HierarchicalReasoning-v0", dt=20, batch_size=4, seed=0,
                           decision_period=["rule_target", "decision"], trials_per_row=3)
    rows = sampler.batch(0)
    assert rows.n_windows == 6 and rows.epochs["decision"].shape == (4, 3, 2)
    assert (rows.epochs["fixation"][:, 1:, 0] >= rows.epochs["decision"][:, :-1, 1]).all()  # trials follow each other
    metrics = scores(F.one_hot(rows.targets, 5).float() * 10, rows, sampler.spec)
    assert (metrics["accuracy"], metrics["accuracy/rule_target"], metrics["accuracy/decision"]) == (1.0, 1.0, 1.0)


def test_only_the_loss_without_a_response_period():
    sampler = TrialSampler("PerceptualDecisionMaking-v0", dt=20, batch_size=4, seed=0, decision_period=None)
    batch = sampler.batch(0)
    assert batch.n_windows == 0 and set(scores(torch.zeros(*batch.targets.shape, 3), batch, sampler.spec)) == {"loss"}
    assert objective(sampler.spec).metric == "loss"


def test_objective_defaults_by_kind_and_signs_its_score():
    regression = TrialSampler("SineWave-v0", dt=20, batch_size=1, seed=0).spec
    acc, mse = objective(spec()), objective(regression)
    assert (acc.metric, acc.direction, mse.metric, mse.direction) == ("accuracy", "maximize", "mse", "minimize")
    assert acc.score({"accuracy": 0.9}) == 0.9 and mse.score({"mse": 0.25}) == -0.25  # higher is better
    assert mse.score({"mse": 0.1}) > mse.score({"mse": 0.2}) and mse.score({"mse": float("nan")}) == float("-inf")
    r2 = objective(regression, "r2")
    assert (r2.direction, r2.value({"r2": 0.5, "mse": 1.0})) == ("maximize", 0.5)
    with pytest.raises(ValueError, match=r"^train\.objective: accuracy is not reported for regression tasks; choose one of auto, loss, mse, r2$"):
        objective(regression, "accuracy")
