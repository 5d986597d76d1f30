"""Perturbations against answers known exactly: what silencing, stimulation and lesions do to the dynamics, on
every engine, for one network and for K at once."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import torch

from nn4n import CTRNN
from nn4n.data import TrialSampler
from nn4n.ensemble import Ensemble
from nn4n.model import Weights
from nn4n.perturb import Perturbation, effect
from nn4n.recurrence import ACTIVATIONS, installed_engines

ENGINES = installed_engines()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TWO_AREAS = {"areas": {"A": {"size": 24}, "B": {"size": 16}}, "input_size": 3, "output_size": 3, "activation": "relu",
             "projections": {"B": {"A": 0.3}, "A": {"B": 0.1}}, "noise": {"rec": 0.05, "input": 0.02}, "rec_bias": True}
INPUTS = torch.randn(6, 30, 3, generator=torch.Generator().manual_seed(0))


def network(engine: str = "reference", device: str = "cpu", **changes: object) -> CTRNN:
    net = CTRNN({**TWO_AREAS, **changes}, engine).eval()
    with torch.no_grad():
        net.b_rec.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(1))
    return net.to(device)


def noisy_run(net: CTRNN, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs, rates and v with the network's noise, drawn from seed 0 on every call."""
    torch.manual_seed(0)
    with torch.no_grad():
        out, act = net(INPUTS.to(net.w_rec.device), noise=True, return_preact=True, **kwargs)
    return out, act.rates, act.preact


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_perturbation_of_size_zero_is_the_control_bit_for_bit(engine: str, device: str) -> None:
    """Silencing no neuron, stimulating with 0 and cutting no synapse change nothing, noise included."""
    net = network(engine, device)
    nothing = [{"kind": "silence", "area": "A", "fraction": 0.0}, {"kind": "stimulate", "area": "B", "current": 0.0},
               {"kind": "lesion", "projection": "B<-A", "fraction": 0.0}]
    for got, want in zip(noisy_run(net, perturb=nothing), noisy_run(net)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("engine", ENGINES)
def test_silenced_neurons_rest_through_the_window_and_restart_from_rest(engine: str, activation: str, device: str) -> None:
    """In steps [10, 20) area A's rates and v are 0 (sigmoid's and softplus' too, whose f(0) is not 0); before,
    every value is the control's; at step 20 a silenced neuron takes one step from v = 0."""
    net = network(engine, device, activation=activation)
    inputs = INPUTS.to(device)
    out, rates, v = noisy_run(net, perturb=[{"kind": "silence", "area": "A", "steps": [10, 20]}])
    out0, rates0, v0 = noisy_run(net)
    a_idx = net.structure.indices("A")
    assert torch.equal(rates[:, :10], rates0[:, :10]) and torch.equal(out[:, :10], out0[:, :10])
    assert (rates[:, 10:20, a_idx] == 0).all() and (v[:, 10:20, a_idx] == 0).all()
    assert not torch.equal(rates[:, 20:], rates0[:, 20:])
    # step 20 from v = 0: v_20 = alpha * z_20 with z = W r_19 + drive_20 (noise redrawn the same: zero it here)
    with torch.no_grad():
        _, act = net(inputs, noise=False, return_preact=True, perturb=[{"kind": "silence", "area": "A", "steps": [10, 20]}])
        w = net.effective_weights()
        drive = inputs[:, 20] @ w.w_in.T + w.b_rec
        z = act.rates[:, 19] @ w.w_rec.T + drive
        want = net.alpha * z
    torch.testing.assert_close(act.preact[:, 20, a_idx], want[:, a_idx], rtol=1e-5, atol=1e-6)


def test_silencing_by_period_follows_each_trials_own_epochs() -> None:
    """Windows given as periods are each trial's own: PerceptualDecisionMaking's stimulus, whose start varies."""
    sampler = TrialSampler("PerceptualDecisionMaking-v0", dt=20, batch_size=16, seed=0,
                           timing={"fixation": ["choice", [100, 300, 500]]})
    batch = sampler.batch(0)
    net = network(input_size=3)
    with torch.no_grad():
        _, act = net(batch.inputs, perturb=[{"kind": "silence", "area": "B", "population": "I", "periods": ["stimulus"]}],
                     epochs=batch.epochs)
    starts, ends = batch.epochs["stimulus"].T
    assert len(set(starts.tolist())) > 1
    inhibitory = net.structure.indices("B", "I")
    steps = np.arange(batch.inputs.shape[1])
    for trial in range(16):
        inside = (steps >= starts[trial]) & (steps < ends[trial])
        silent = (act.rates[trial][:, inhibitory] == 0).all(1).numpy()
        assert silent[inside].all() and not silent[steps < starts[trial]].any()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stimulated_neuron_charges_toward_its_current(engine: str) -> None:
    """A neuron with no synapses and no input, given current c in steps [5, 25): v_t = c (1 - (1 - a)^k) after k
    steps of it, then decays as (1 - a)^j; the others stay at rest."""
    net = network(engine, noise={"rec": 0.0, "input": 0.0})
    with torch.no_grad():
        net.w_rec = torch.zeros(40, 40)
        net.b_rec.zero_()
        _, act = net(torch.zeros(1, 40, 3), return_preact=True, perturb=[{"kind": "stimulate", "neurons": [3, 30],
                                                                          "current": [0.5, 2.0], "steps": [5, 25]}])
    a = float(net.alpha[0])
    k = np.arange(1, 21)
    for neuron, c in ((3, 0.5), (30, 2.0)):
        v = act.preact[0, :, neuron].double().numpy()
        np.testing.assert_allclose(v[5:25], c * (1 - (1 - a) ** k), rtol=1e-5)
        np.testing.assert_allclose(v[25:], v[24] * (1 - a) ** np.arange(1, 16), rtol=1e-5)
        assert (v[:5] == 0).all()
    assert (act.preact[0][:, [i for i in range(40) if i not in (3, 30)]] == 0).all()


def test_lesions_remove_exactly_the_synapses_they_name() -> None:
    """A projection lesion zeros its block (a fraction: that share of its synapses, seeded); a population's
    lesion zeros its outgoing recurrent and readout synapses; the network runs as if built without them."""
    net = network()
    st = net.structure
    rows, cols = st.area_slices["B"], st.area_slices["A"]
    w = net.effective_weights()

    def lesioned(perturb: list) -> Weights:
        e = effect(perturb, st, 6, 30)
        return dataclasses.replace(w, w_rec=w.w_rec * e.w_rec, w_out=w.w_out if e.w_out is None else w.w_out * e.w_out)

    whole = lesioned([{"kind": "lesion", "projection": "B<-A"}])
    assert (whole.w_rec[rows, cols] == 0).all()
    outside = torch.ones_like(w.w_rec, dtype=torch.bool)
    outside[rows, cols] = False
    assert torch.equal(whole.w_rec[outside], w.w_rec[outside])
    half = lesioned([{"kind": "lesion", "projection": "B<-A", "fraction": 0.5, "seed": 4}])
    n_block = int((w.w_rec[rows, cols] != 0).sum())
    assert int((half.w_rec[rows, cols] != 0).sum()) == n_block - round(0.5 * n_block)
    again = lesioned([{"kind": "lesion", "projection": "B<-A", "fraction": 0.5, "seed": 4}])
    assert torch.equal(half.w_rec, again.w_rec)
    exc_a = st.indices("A", "E")
    cut = lesioned([{"kind": "lesion", "area": "A", "population": "E"}])
    assert (cut.w_rec[:, exc_a] == 0).all() and (cut.w_out[:, exc_a] == 0).all()
    assert torch.equal(cut.w_rec[:, st.indices("B")], w.w_rec[:, st.indices("B")])
    built = network()
    with torch.no_grad():
        built.w_rec = w.w_rec * torch.as_tensor(np.where(np.isin(np.arange(40), exc_a), 0.0, 1.0), dtype=torch.float32)
        built.w_out = w.w_out * torch.as_tensor(np.where(np.isin(np.arange(40), exc_a), 0.0, 1.0), dtype=torch.float32)
    for got, want in zip(noisy_run(net, perturb=[{"kind": "lesion", "area": "A", "population": "E"}]), noisy_run(built)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", ENGINES)
def test_k_networks_are_perturbed_each_as_on_its_own(engine: str, device: str) -> None:
    """An ensemble's network k, perturbed, gives what the same network perturbed alone gives (each its own
    fraction of its own projection's synapses)."""
    ens = Ensemble({**TWO_AREAS, "noise": {"rec": 0.0, "input": 0.0}}, 3, engine).eval().to(device)
    inputs = INPUTS.to(device)
    perturb = [{"kind": "silence", "area": "A", "population": "I", "steps": [4, 12]},
               {"kind": "lesion", "projection": "B<-A", "fraction": 0.5}, {"kind": "stimulate", "area": "B", "current": 0.3}]
    with torch.no_grad():
        outputs, activities = ens(inputs.expand(3, *inputs.shape), perturb=perturb)
        for k, net in enumerate(ens.networks):
            out, act = net(inputs, perturb=perturb)
            torch.testing.assert_close(outputs[k], out, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(activities[k].rates, act.rates, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", [e for e in ENGINES if e != "reference"])
def test_fast_engines_refuse_gradients_through_a_perturbation(engine: str) -> None:
    net = network(engine)
    with pytest.raises(ValueError, match=f"^perturb: the {engine} engine runs perturbations without gradients"):
        net(INPUTS, perturb=[{"kind": "silence", "area": "A"}])
    out, _ = network("reference")(INPUTS, perturb=[{"kind": "silence", "area": "A", "steps": [0, 5]}])
    out.sum().backward()  # the reference engine differentiates through a perturbation


@pytest.mark.parametrize(("perturbation", "message"), [
    ({"kind": "silence", "area": "PFC"}, "area: unknown area 'PFC'; areas: A, B"),
    ({"kind": "silence", "area": "A", "population": "X"}, "population: must be 'E', 'I', 'excitatory' or 'inhibitory', got 'X'"),
    ({"kind": "silence", "area": "A", "periods": ["delai"]}, "periods: unknown period 'delai'; periods: fixation, stimulus, delay, decision"),
    ({"kind": "silence", "area": "A", "periods": ["delay"]}, "periods: delay lasts 0 steps in every trial"),
    ({"kind": "lesion", "projection": "B<-PFC"}, "projection: unknown area 'PFC' in 'B<-PFC'; areas: A, B"),
    ({"kind": "lesion", "projection": "B->A"}, "projection: must be 'post<-pre' (e.g. 'PFC<-PPC'), got 'B->A'"),
    ({"kind": "silence", "area": "A", "fraction": 1.5}, "fraction: must be a number in [0, 1], got 1.5"),
    ({"kind": "silence", "area": "A", "steps": [100, 200]}, "steps: [100, 200) is outside the trials' 110 steps"),
    ({"kind": "silence", "area": "A", "steps": [5, 5]}, "steps: must be [start, stop) with 0 <= start < stop, got [5, 5]"),
    ({"kind": "silence", "neurons": [3, 400]}, "neurons: neuron 400 is not in the network (neurons 0-39)"),
    ({"kind": "lesion", "area": "A", "periods": ["stimulus"]}, "periods: a lesion lasts the whole trial: give it no window"),
    ({"kind": "stimulate", "area": "B", "current": [1.0, 2.0]}, "current: 2 values for a group of 16 neurons"),
    ({"kind": "inhibit", "area": "A"}, "kind: must be one of silence, stimulate, lesion, got 'inhibit'"),
    ({"kind": "silence", "aera": "A"}, "aera: unknown key; a perturbation has "),
])
def test_bad_perturbations_are_named_in_one_line(perturbation: dict, message: str) -> None:
    batch = TrialSampler("PerceptualDecisionMaking-v0", dt=20, batch_size=2, seed=0).batch(0)
    with pytest.raises(ValueError) as err:
        network()(batch.inputs, perturb=[perturbation], epochs=batch.epochs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_labels_say_what_was_done() -> None:
    assert Perturbation.of({"kind": "silence", "area": "PFC", "population": "E", "fraction": 0.5,
                            "periods": ["delay"]}).label == "silence PFC/E 50% during delay"
    assert Perturbation.of({"kind": "lesion", "projection": "PFC <- PPC"}).label == "lesion PFC<-PPC"
    assert Perturbation.of({"kind": "stimulate", "area": "V1", "current": 0.5, "steps": [10, 20]}).label == \
        "stimulate V1 +0.5 at steps 10-20"
