"""Loss and performance measures (nn4n.metrics) on real task batches."""

import math

import pytest
import torch
import torch.nn.functional as F

from nn4n.data import TrialSampler
from nn4n.tasks import TaskKind
from nn4n.metrics import choices, decision_accuracy, decision_targets, explained_variance, masked_mse, task_loss


@pytest.fixture(scope="module")
def pdm():
    return TrialSampler("PerceptualDecisionMaking-v0", dt=20, batch_size=512, seed=0, decision_weight=5.0).batch(0)


@pytest.fixture(scope="module")
def padded():
    return TrialSampler("ContextDecisionMaking-v0", dt=20, batch_size=8, seed=0).batch(0)


def test_classification_loss_matches_hand_computation(padded):
    logits = torch.randn(*padded.targets.shape, 3, generator=torch.Generator().manual_seed(0))
    total, weight = 0.0, 0.0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            w = padded.mask[b, t].item()
            nll = -torch.log_softmax(logits[b, t], -1)[padded.targets[b, t]].item()
            total, weight = total + w * nll, weight + w
    assert weight == padded.mask.sum().item() > 0
    assert task_loss(logits, padded, TaskKind.CLASSIFICATION).item() == pytest.approx(total / weight, rel=1e-5)


def test_classification_loss_ignores_padding_and_backpropagates(padded):
    logits = torch.zeros(*padded.targets.shape, 3, requires_grad=True)
    loss = task_loss(logits, padded, TaskKind.CLASSIFICATION)
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)  # uniform logits, any weights
    loss.backward()
    pad = padded.mask == 0
    assert pad.any() and (logits.grad[pad] == 0).all() and (logits.grad[~pad] != 0).any()


def test_regression_loss_and_masked_mse():
    batch = TrialSampler("FlipFlop-v0", dt=20, batch_size=4, seed=0, decision_weight=5.0).batch(0)
    outputs = torch.full_like(batch.targets, 0.5)
    squared = (outputs - batch.targets) ** 2  # (B, T, 3)
    expected = (squared.mean(-1) * batch.mask).sum() / batch.mask.sum()
    assert task_loss(outputs, batch, TaskKind.REGRESSION).item() == pytest.approx(expected.item(), rel=1e-6)
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


def test_accuracy_is_one_for_outputs_built_from_targets(pdm):
    outputs = F.one_hot(pdm.targets, 3).float() * 10
    assert decision_accuracy(outputs, pdm) == 1.0
    assert torch.equal(choices(outputs, pdm), decision_targets(pdm))
    assert torch.equal(decision_targets(pdm), pdm.targets[:, -1])


def test_accuracy_is_chance_for_random_outputs(pdm):
    outputs = torch.randn(*pdm.targets.shape, 3, generator=torch.Generator().manual_seed(1))
    assert decision_accuracy(outputs, pdm) == pytest.approx(1 / 3, abs=0.07)


def test_choice_averages_logits_over_decision_steps(pdm):
    outputs = torch.zeros(*pdm.targets.shape, 3)
    outputs[:, 105, 1] = 4.0  # one decision step votes 1 strongly ...
    outputs[:, 106:, 2] = 1.5  # ... four vote 2 mildly: mean favours 2 (1.2 > 0.8)
    outputs[:, :105, 1] = 100.0  # outside the decision period: ignored
    assert (choices(outputs, pdm) == 2).all()


def test_trials_without_decision_are_excluded():
    batch = TrialSampler("PerceptualDecisionMaking-v0", dt=20, batch_size=4, seed=0).batch(0)
    batch.decision[:2] = False
    outputs = F.one_hot(batch.targets, 3).float()
    outputs[2, 105:] = F.one_hot(3 - batch.targets[2, -1], 3).float()  # trial 2 picks the other choice unit
    assert choices(outputs, batch)[:2].tolist() == [-1, -1]
    assert decision_targets(batch)[:2].tolist() == [-1, -1]
    assert decision_accuracy(outputs, batch) == 0.5


def test_accuracy_is_nan_without_decision_period():
    batch = TrialSampler("SineWave-v0", dt=20, batch_size=4, seed=0).batch(0)
    assert not batch.decision.any()
    assert math.isnan(decision_accuracy(torch.zeros(*batch.targets.shape[:2], 2), batch))


def test_objective_defaults_by_kind_and_signs_its_score():
    from nn4n.metrics import objective

    acc, mse = objective(TaskKind.CLASSIFICATION), objective(TaskKind.REGRESSION)
    assert (acc.metric, acc.direction, mse.metric, mse.direction) == ("accuracy", "maximize", "mse", "minimize")
    assert acc.score({"accuracy": 0.9}) == 0.9 and mse.score({"mse": 0.25}) == -0.25  # higher is better
    assert mse.score({"mse": 0.1}) > mse.score({"mse": 0.2}) and mse.score({"mse": float("nan")}) == float("-inf")
    r2 = objective(TaskKind.REGRESSION, "r2")
    assert (r2.direction, r2.value({"r2": 0.5, "mse": 1.0})) == ("maximize", 0.5)
    with pytest.raises(ValueError, match=r"^train\.objective: accuracy is not reported for regression tasks; choose one of auto, loss, mse, r2$"):
        objective(TaskKind.REGRESSION, "accuracy")
