"""Each regularizer equals its definition computed by hand, weighted, and only present when asked."""
from __future__ import annotations

import math

import pytest
import torch

from nn4n import CTRNN, NetworkConfig
from nn4n.regularizers import Regularizers, regularization


@pytest.fixture(scope="module")
def setup() -> tuple[CTRNN, object, torch.Tensor]:
    torch.manual_seed(0)
    model = CTRNN(NetworkConfig.from_dict({
        "areas": {"V1": {"size": 6}, "PFC": {"size": 4}}, "input_size": 2, "output_size": 2,
        "density": {"within": 0.5, "between": 0.3},
    }))
    _, activity = model(torch.randn(3, 7, 2))
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[0, 5:] = False  # padding of a short trial
    return model, activity, valid


def test_nothing_by_default(setup) -> None:
    model, activity, valid = setup
    assert regularization(Regularizers(), model, activity, valid) == {}


def test_each_term_matches_its_definition(setup) -> None:
    model, activity, valid = setup
    reg = Regularizers(rate_l1=2.0, rate_l2=3.0, rate_l1_area={"PFC": 5.0}, rate_l2_area={"V1": 7.0},
                       rate_sd=11.0, rate_cv=13.0, rate_mean_abs_dev=17.0, rate_max_abs_dev=19.0,
                       weight_l1={"w_rec": 23.0}, weight_fro={"w_out": 29.0}, state_prediction=31.0, entropy=37.0)
    terms = regularization(reg, model, activity, valid)
    r = activity.rates.detach()
    steps = r[valid]  # (valid steps, neurons)
    pfc, v1 = model.structure.indices("PFC"), model.structure.indices("V1")
    mean = steps.mean(0)  # per-neuron mean rate
    p = mean / mean.sum()
    pairs = torch.cat([(r[b, 1:] - r[b, :-1])[valid[b, 1:] & valid[b, :-1]] for b in range(3)])
    expected = {
        "rate_l1": 2.0 * steps.abs().mean(),
        "rate_l2": 3.0 * steps.square().mean(),
        "rate_l1/PFC": 5.0 * steps[:, pfc].abs().mean(),
        "rate_l2/V1": 7.0 * steps[:, v1].square().mean(),
        "rate_sd": 11.0 * mean.std(),
        "rate_cv": 13.0 * mean.std() / mean.mean(),
        "rate_mean_abs_dev": 17.0 * (mean - mean.mean()).abs().mean(),
        "rate_max_abs_dev": 19.0 * (mean - mean.mean()).abs().max(),
        "weight_l1/w_rec": 23.0 * model.w_rec.detach().abs().sum() / torch.as_tensor(model.structure.rec_mask).sum(),
        "weight_fro/w_out": 29.0 * model.w_out.detach().square().sum().sqrt(),
        "state_prediction": 31.0 * pairs.square().mean(),
        "entropy": 37.0 * (math.log(10) + (p * p.log()).sum()),
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5), name


def test_a_gradient_step_on_a_rate_penalty_lowers_the_rates(setup) -> None:
    model, _, valid = setup
    inputs = torch.randn(3, 7, 2)
    reg = Regularizers(rate_l2=1.0)
    before = regularization(reg, model, model(inputs, noise=False)[1], valid)["rate_l2"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = regularization(reg, model, model(inputs, noise=False)[1], valid)["rate_l2"]
    assert after.item() < before.item()
