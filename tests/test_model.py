"""CTRNN: constraints under training, plasticity, exact gradients, noise statistics, views, files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nn4n.checkpoint import MODEL_FORMAT, load_checkpoint, save_checkpoint
from nn4n.linear import linear
from nn4n.model import TAU_MARGIN, CTRNN
from nn4n.recurrence import ACTIVATIONS, installed_engines
from nn4n.structure import NetworkConfig
from helpers import merge


# PFC declared first: neuron order follows the declaration. Layout: PFC 12 E + 3 I, V1 16 E + 4 I,
# PPC 5 E + 5 I.
THREE = {
    "areas": {"PFC": {"size": 15, "tau": 60}, "V1": {"size": 20}, "PPC": {"size": 10, "exc_frac": 0.5, "tau": 200}},
    "input_size": 3,
    "output_size": 2,
    "density": {"within": 0.5, "between": 0.2},
    "projections": {"PPC": {"V1": 0.3}, "PFC": {"PPC": 0.3}},
    "input_areas": ["V1"],
    "readout_areas": ["PFC"],
}
SLICES = {"PFC": np.arange(0, 15), "V1": np.arange(15, 35), "PPC": np.arange(35, 45)}
E_IDX = {"PFC": np.arange(0, 12), "V1": np.arange(15, 31), "PPC": np.arange(35, 40)}
I_IDX = {"PFC": np.arange(12, 15), "V1": np.arange(31, 35), "PPC": np.arange(40, 45)}


def make(base: dict = THREE, **over) -> CTRNN:
    return CTRNN(NetworkConfig.from_dict(merge(base, over)))


def effective(model: CTRNN) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.weights().items()}


def assert_constraints(model: CTRNN) -> None:
    """Dale on every column of w_rec and w_out, zeros exactly where the masks are zero."""
    st = model.structure
    w = model.weights()
    sign = torch.as_tensor(st.sign)
    for name in ("w_rec", "w_out"):
        assert (w[name][:, sign > 0] >= 0).all(), f"{name}: negative weight from an E neuron"
        assert (w[name][:, sign < 0] <= 0).all(), f"{name}: positive weight from an I neuron"
    for name, mask in (("w_rec", st.rec_mask), ("w_in", st.input_mask), ("w_out", st.readout_mask)):
        assert (w[name][~torch.as_tensor(mask)] == 0).all(), f"{name}: weight outside the mask"


# ------------------------------------------------------------------------------ Dale + masks
def test_adamw_training_keeps_dale_and_masks():
    torch.manual_seed(0)
    model = make(learn_tau=True, learn_h0=True, noise={"rec": 0.05, "input": 0.05},
                 input_groups={"a": {"size": 1, "areas": ["V1"]}, "b": {"size": 2, "areas": ["PFC", "PPC"]}},
                 input_frac=0.6, readout_areas=["PFC", "PPC"], readout_frac=0.7)
    assert (model.weights()["w_out"][:, torch.as_tensor(model.structure.sign) < 0] < 0).any()
    assert_constraints(model)
    before = effective(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(8, 12, 3), torch.randn(8, 12, 2)
    for step in range(200):
        opt.zero_grad()
        out, _ = model(x)
        F.mse_loss(out, y).backward()
        opt.step()
        if step % 40 == 0:
            assert_constraints(model)
    assert_constraints(model)
    after = model.weights()
    for name in ("w_in", "w_rec", "w_out"):
        assert not torch.equal(before[name], after[name]), f"{name} did not train"
    # the constraint was actually tested: some raw weights went through zero and came back reflected
    raw = model.parametrizations.w_rec.original.detach()
    assert (raw[torch.as_tensor(model.structure.rec_mask)] < 0).any()
    assert torch.isfinite(after["w_rec"]).all()


# ------------------------------------------------------------------------------ plasticity
TWO = {
    "areas": {"A": {"size": 24}, "B": {"size": 24}},
    "input_size": 4,
    "output_size": 3,
    "density": {"within": 0.5, "between": 0.5},
    "input_areas": ["A", "B"],
    "readout_areas": ["A", "B"],
}
OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
}


def train_with_plasticity(opt_name: str, slow: float, steps: int = 20, seed: int = 0):
    """Block B<-A has plasticity ``slow``, A<-B and the input weights are frozen, the rest is 1."""
    model = make(TWO, plasticity={"input": 0.0, "within": 1.0, "between": 1.0,
                                  "projections": {"B": {"A": slow}, "A": {"B": 0.0}}}, seed=seed)
    opt = OPTIMIZERS[opt_name](model.parameters())
    handles = model.apply_plasticity(opt)
    assert len(handles) == 2
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 20, 4, generator=gen), torch.randn(16, 20, 3, generator=gen)
    before = effective(model)
    b_before = model.b_rec.detach().clone()
    for _ in range(steps):
        opt.zero_grad()
        out, _ = model(x)
        F.mse_loss(out, y).backward()
        opt.step()
    after = model.weights()
    st = model.structure
    change = (after["w_rec"] - before["w_rec"]).abs()

    def mean_change(to: str, pre: str) -> float:
        sl_to, sl_pre = st.area_slices[to], st.area_slices[pre]
        return float(change[sl_to, sl_pre][torch.as_tensor(st.rec_mask[sl_to, sl_pre])].mean())

    frozen = {"A<-B": change[st.area_slices["A"], st.area_slices["B"]], "w_in": after["w_in"] - before["w_in"]}
    assert not torch.equal(b_before, model.b_rec), "biases are not subject to plasticity"
    return {k: mean_change(*k.split("<-")) for k in ("A<-A", "B<-B", "B<-A")}, frozen


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_plasticity_scales_updates_and_freezes(opt_name):
    moved, frozen = train_with_plasticity(opt_name, slow=0.1)
    # frozen synapses do not move at all, AdamW weight decay included
    for name, delta in frozen.items():
        assert (delta == 0).all(), f"{name} moved under plasticity 0"
    assert moved["B<-A"] > 0
    if opt_name != "sgd":  # Adam's steps do not depend on the gradient scale: compare blocks directly
        for fast in ("A<-A", "B<-B"):
            assert 7 < moved[fast] / moved["B<-A"] < 13, moved
    # the same synapses in a run where they have plasticity 1 (SGD steps scale with the gradient,
    # which differs between blocks, so the fair comparison is the same block)
    reference, _ = train_with_plasticity(opt_name, slow=1.0)
    assert 7 < reference["B<-A"] / moved["B<-A"] < 13, (reference, moved)


def test_plasticity_one_changes_nothing_and_hooks_are_removable():
    x, y = torch.randn(4, 6, 4), torch.randn(4, 6, 3)

    def run(plasticity: dict | None, hooks: bool, remove: bool = False, calls: int = 1) -> torch.Tensor:
        model = make(TWO, plasticity=plasticity or {})
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        if hooks:
            for _ in range(calls):
                handles = model.apply_plasticity(opt)
            if remove:
                for h in handles:
                    h.remove()
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(model(x)[0], y).backward()
            opt.step()
        return model.weights()["w_rec"]

    plain = run(None, hooks=False)
    assert torch.equal(run(None, hooks=True), plain)  # plasticity 1 everywhere: nothing rescaled
    frozen = {"within": 0.0, "between": 0.0}
    assert torch.equal(run(frozen, hooks=True), make(TWO).weights()["w_rec"])
    assert torch.equal(run(frozen, hooks=True, remove=True), plain)  # hooks removed: plasticity off
    slow = {"within": 0.3, "between": 0.3}
    once = run(slow, hooks=True)
    assert not torch.equal(once, plain) and not torch.equal(once, make(TWO).weights()["w_rec"])
    assert torch.equal(run(slow, hooks=True, calls=2), once)  # a second call replaces the first: 0.3, not 0.09


# ------------------------------------------------------------------------------ exact gradients
F64 = {
    "relu": lambda x: torch.clamp(x, min=0.0),
    "tanh": torch.tanh,
    "softplus": lambda x: torch.log1p(torch.exp(x)),
    "sigmoid": lambda x: 1.0 / (1.0 + torch.exp(-x)),
    "retanh": lambda x: torch.tanh(torch.clamp(x, min=0.0)),
}


def direct_forward(p: dict[str, torch.Tensor], st, cfg: NetworkConfig, u: torch.Tensor, activation: str):
    """The model's equations written out in float64 from the structure's numpy arrays."""
    f = F64[activation]
    sign = torch.as_tensor(st.sign, dtype=torch.float64)

    def eff(raw: torch.Tensor, mask: np.ndarray, col_sign: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(mask, dtype=torch.float64)
        return m * torch.where(col_sign != 0, col_sign * raw.abs(), raw)

    w_in = eff(p["w_in"], st.input_mask, torch.zeros(cfg.input_size, dtype=torch.float64))
    w_rec = eff(p["w_rec"], st.rec_mask, sign)
    w_out = eff(p["w_out"], st.readout_mask, sign)
    tau = cfg.dt * (1 + TAU_MARGIN) + torch.exp(p["tau_raw"]) if cfg.learn_tau else torch.as_tensor(st.tau, dtype=torch.float64)
    a = cfg.dt / tau
    v = p["h0"].expand(u.shape[0], -1) if cfg.learn_h0 else u.new_zeros(u.shape[0], st.n_neurons)
    rates = []
    for t in range(u.shape[1]):
        v = (1 - a) * v + a * (f(v) @ w_rec.T + u[:, t] @ w_in.T + p["b_rec"])
        rates.append(f(v))
    r = torch.stack(rates, 1)
    return r @ w_out.T + p["b_out"], r


TORCH_F = {
    "relu": F.relu, "tanh": torch.tanh, "softplus": F.softplus, "sigmoid": torch.sigmoid,
    "retanh": lambda x: torch.tanh(F.relu(x)),
}
NAMES = {
    "tau_raw": "tau_raw", "h0": "h0", "b_rec": "b_rec", "b_out": "b_out",
    "parametrizations.w_in.original": "w_in", "parametrizations.w_rec.original": "w_rec",
    "parametrizations.w_out.original": "w_out",
}


@pytest.mark.parametrize("engine", installed_engines())
@pytest.mark.parametrize("activation, dale", [(a, True) for a in ACTIVATIONS] + [("tanh", False)])
def test_gradients_match_direct_float64_implementation(activation, dale, engine):
    torch.manual_seed(1)
    cfg = merge(THREE, {"activation": activation, "dale": dale, "learn_tau": True, "learn_h0": True, "seed": 3,
                        "input_groups": {"a": {"size": 2, "areas": ["V1"]}, "b": {"size": 1, "areas": ["PPC", "PFC"]}},
                        "input_frac": 0.7})
    model = CTRNN(cfg, engine=engine).double()
    with torch.no_grad():  # move everything away from its initial value (and from relu's kink)
        model.h0.copy_(torch.randn(45, dtype=torch.float64))
        model.b_rec.copy_(0.3 * torch.randn(45, dtype=torch.float64))
        model.b_out.copy_(torch.randn(2, dtype=torch.float64))
        model.tau_raw.add_(torch.randn(45, dtype=torch.float64) * 20).clamp_(min=-2)
    model.eval()
    u = torch.randn(4, 9, 3, dtype=torch.float64)
    g = torch.randn(4, 9, 2, dtype=torch.float64)
    g_r = torch.randn(4, 9, 45, dtype=torch.float64)
    out, act = model(u)
    assert out.dtype == torch.float64
    ((out * g).sum() + (act.rates * g_r).sum()).backward()
    params = dict(model.named_parameters())
    assert set(params) == set(NAMES)  # every parameter is covered below
    leaves = {NAMES[n]: p.detach().clone().requires_grad_() for n, p in params.items()}
    ref_out, ref_rates = direct_forward(leaves, model.structure, model.config, u, activation)
    torch.testing.assert_close(out, ref_out, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(act.rates, ref_rates, rtol=1e-8, atol=1e-10)
    ((ref_out * g).sum() + (ref_rates * g_r).sum()).backward()
    for name, p in params.items():
        ref = leaves[NAMES[name]].grad
        assert p.grad is not None and ref.abs().max() > 0, name
        err = (p.grad - ref).abs().max() / ref.abs().max()
        assert err < 1e-6, f"{name}: relative gradient error {err:.2e}"
        # masked synapses get no gradient, so even an unconstrained optimizer cannot grow them
    for name, mask in (("w_rec", model.structure.rec_mask), ("w_in", model.structure.input_mask)):
        assert (leaves[name].grad[~torch.as_tensor(mask)] == 0).all()


@pytest.mark.parametrize("n_in, n_out", [(3, 40), (1, 40), (6, 40), (40, 2), (40, 5)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stacked", [(), (3,)])
def test_linear_gradients_match_autograd(n_in: int, n_out: int, bias: bool, stacked: tuple[int, ...]) -> None:
    """Input and readout products (narrow side padded, bias gradient folded in) against ``F.linear``."""
    gen = torch.Generator().manual_seed(n_in * n_out)
    x, w = torch.randn(*stacked, 7, 5, n_in, generator=gen), torch.randn(*stacked, n_out, n_in, generator=gen)
    b = torch.randn(*stacked, n_out, generator=gen) if bias else None
    g = torch.randn(*stacked, 7, 5, n_out, generator=gen)
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    ours = torch.autograd.grad((linear(x, w, b) * g).sum(), leaves)
    ref_out = torch.einsum("...mi,...oi->...mo", x.flatten(-3, -2), w).view(g.shape)
    if b is not None:
        ref_out = ref_out + b.unsqueeze(-2).unsqueeze(-2)
    ref = torch.autograd.grad((ref_out * g).sum(), leaves)
    for name, a, r in zip("xwb", ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5, msg=name)


def test_h0_argument_overrides_rest_state():
    model = make(rec_bias=False).eval()
    x = torch.randn(3, 1, 3)
    h0 = torch.randn(3, 45)
    _, act = model(x, h0=h0, return_preact=True)
    a = model.alpha.detach()
    w = model.weights()
    expected = (1 - a) * h0 + a * (F.relu(h0) @ w["w_rec"].T + x[:, 0] @ w["w_in"].T)
    torch.testing.assert_close(act.preact[:, 0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("inputs, h0, message", [
    ((4, 9, 5), None, r"^inputs: must be \(batch, time, features\) with 3 features and at least one time step, got shape \(4, 9, 5\)$"),
    ((9, 3), None, r"^inputs: must be .* got shape \(9, 3\)$"),
    ((4, 0, 3), None, r"^inputs: must be .* at least one time step, got shape \(4, 0, 3\)$"),
    ((4, 9, 3), (3, 45), r"^h0: must have shape \(4, 45\) \(one state per trial\), got \(3, 45\)$"),
])
def test_inputs_that_do_not_fit_are_named(inputs, h0, message):
    with pytest.raises(ValueError, match=message):
        make()(torch.randn(inputs), h0=None if h0 is None else torch.randn(h0))


def test_inputs_of_another_dtype_are_named():
    with pytest.raises(ValueError, match=r"^inputs: dtype torch.float64 differs from the network's torch.float32$"):
        make()(torch.randn(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^h0: dtype torch.float64 differs from the network's torch.float32$"):
        make()(torch.randn(2, 5, 3), h0=torch.zeros(2, 45, dtype=torch.float64))


# ------------------------------------------------------------------------------ noise
SILENT = {  # no weights at all: v is driven by noise only
    "areas": {"A": {"size": 32}},
    "input_size": 1,
    "output_size": 1,
    "dale": False,
    "density": {"within": 0.0},
    "init": {"input_scale": 0.0},
}


def preact(model: CTRNN, batch: int, steps: int, **kw) -> torch.Tensor:
    _, act = model(torch.zeros(batch, steps, model.config.input_size), return_preact=True, **kw)
    return act.preact


@pytest.mark.parametrize("dt", [5.0, 20.0])
def test_recurrent_noise_variance_scales_with_dt(dt):
    torch.manual_seed(0)
    sigma, tau = 0.5, 100.0
    model = make(SILENT, dt=dt, tau=tau, noise={"rec": sigma}).train()
    a = dt / tau
    v = preact(model, 512, int(6 / a) + 20)
    assert (model.weights()["w_rec"] == 0).all()
    # increments: v_{t+1} - (1 - a) v_t = sqrt(2 a) sigma xi
    inc = torch.cat([v[:, :1], v[:, 1:] - (1 - a) * v[:, :-1]], 1)
    assert inc.var().item() == pytest.approx(2 * a * sigma**2, rel=0.02)
    assert abs(inc.mean().item()) < 0.01 * sigma
    lag1 = (inc[:, 1:] * inc[:, :-1]).mean() / inc.var()
    assert abs(lag1.item()) < 0.01  # white in time
    # stationary variance: sigma^2 / (1 - a / 2) exactly, ~sigma^2 for any small dt
    stationary = v[:, -20:].var().item()
    assert stationary == pytest.approx(sigma**2 / (1 - a / 2), rel=0.04)
    assert stationary == pytest.approx(sigma**2, rel=0.15)


def test_per_area_noise_and_tau():
    torch.manual_seed(0)
    cfg = merge(SILENT, {"areas": {"A": {"size": 20, "noise": 0.2}, "B": {"size": 20, "noise": 0.6, "tau": 50.0}}})
    model = make(cfg, noise={"rec": 0.1}).train()
    v = preact(model, 1024, 1)[:, 0]  # first step from rest: variance 2 a sigma^2
    assert v[:, :20].var().item() == pytest.approx(2 * 0.2 * 0.2**2, rel=0.04)
    assert v[:, 20:].var().item() == pytest.approx(2 * 0.4 * 0.6**2, rel=0.04)


def test_noise_only_in_training_mode_or_when_asked():
    model = make(SILENT, noise={"rec": 0.5, "input": 0.5})
    model.eval()
    assert (preact(model, 4, 5) == 0).all()
    model.train()
    assert (preact(model, 4, 5, noise=False) == 0).all()
    assert (preact(model, 4, 5) != 0).all()
    model.eval()
    assert (preact(model, 4, 5, noise=True) != 0).all()
    model = make(THREE, noise={"rec": 0.1}).eval()
    x = torch.randn(2, 6, 3)
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


@pytest.mark.parametrize("dt", [5.0, 20.0])
def test_input_noise_variance_scales_with_dt(dt):
    """Input noise is white noise on the input features, discretised like the recurrent noise."""
    torch.manual_seed(0)
    sigma, tau = 0.4, 100.0
    cfg = merge(SILENT, {"areas": {"A": {"size": 2}, "B": {"size": 2, "tau": 2 * tau}}, "input_areas": ["A", "B"]})
    model = make(cfg, dt=dt, tau=tau, rec_bias=False, noise={"input": sigma}).train()
    with torch.no_grad():
        model.w_in = torch.full((4, 1), 0.5)
    a = torch.tensor([dt / tau] * 2 + [dt / tau / 2] * 2)
    v = preact(model, 8192, int(6 / a.min().item()) + 20)
    inc = torch.cat([v[:, :1], v[:, 1:] - (1 - a) * v[:, :-1]], 1)
    torch.testing.assert_close(inc.var((0, 1)), 2 * a * (0.5 * sigma) ** 2, rtol=0.02, atol=0)
    # input noise is on the input feature: both neurons of an area see the same noise
    torch.testing.assert_close(v[..., 0], v[..., 1])
    assert v[..., 0].flatten().std() > 0
    stationary = v[:, -20:].var((0, 1))
    torch.testing.assert_close(stationary, (0.5 * sigma) ** 2 / (1 - a / 2), rtol=0.05, atol=0)
    model.eval()
    assert (preact(model, 4, 5) == 0).all()


# ------------------------------------------------------------------------------ learnable tau
def test_learnable_tau_stays_above_dt_with_huge_learning_rate():
    torch.manual_seed(0)
    model = make(learn_tau=True, areas={"V1": {"tau": 20.0}, "PPC": {"tau": 500.0}})
    tau0 = model.tau.detach()
    np.testing.assert_allclose(tau0[SLICES["PPC"]].numpy(), 500.0, rtol=1e-5)
    assert (tau0 > 20.0).all()
    others = [p for n, p in model.named_parameters() if n != "tau_raw"]
    opt = torch.optim.Adam([{"params": [model.tau_raw], "lr": 1.0}, {"params": others, "lr": 1e-2}])
    x, y = torch.randn(8, 15, 3), torch.randn(8, 15, 2)
    for _ in range(30):
        opt.zero_grad()
        out, _ = model(x)
        F.mse_loss(out, y).backward()
        opt.step()
    # an adversary that only wants fast neurons
    opt = torch.optim.SGD([model.tau_raw], lr=1e5)
    for _ in range(5):
        opt.zero_grad()
        (-model.alpha.sum()).backward()
        opt.step()
    tau, alpha = model.tau.detach(), model.alpha.detach()
    assert torch.isfinite(tau).all()
    assert (tau > model.config.dt).all()
    assert ((alpha > 0) & (alpha < 1)).all()
    assert torch.isfinite(model(x)[0]).all()


def test_fixed_tau_is_a_buffer():
    model = make()
    assert "tau_raw" not in dict(model.named_parameters())
    np.testing.assert_array_equal(model.tau.numpy(), np.r_[[60.0] * 15, [100.0] * 20, [200.0] * 10])
    np.testing.assert_allclose(model.alpha.numpy(), 20.0 / model.tau.numpy())


# ------------------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("dist", ["normal", "uniform", "gamma"])
@pytest.mark.parametrize("radius", [1.5, 0.8])
def test_initial_spectral_radius_and_balance(dist, radius):
    model = make(init={"dist": dist, "spectral_radius": radius})
    w = model.weights()["w_rec"].double()
    assert torch.linalg.eigvals(w).abs().max().item() == pytest.approx(radius, rel=1e-5)
    assert model.spectral_radius() == pytest.approx(radius, rel=1e-5)
    assert abs(w.sum().item()) < 1e-5 * w.abs().sum().item()  # total E = total I
    assert_constraints(model)
    # every allowed synapse starts nonzero (a raw weight of exactly 0 would never move under |raw|)
    assert (w[torch.as_tensor(model.structure.rec_mask)] != 0).all()


@pytest.mark.parametrize("exc_frac", [0.0, 1.0])
def test_single_population_network_is_initialised(exc_frac):
    """No E (or no I) neurons: nothing to balance, but the weights must not all be zeroed."""
    model = make(exc_frac=exc_frac, areas={"PPC": {"exc_frac": exc_frac}})
    w = model.weights()["w_rec"]
    assert (w[torch.as_tensor(model.structure.rec_mask)] != 0).all()
    assert model.spectral_radius() == pytest.approx(1.5, rel=1e-5)
    assert_constraints(model)


def test_init_reproducible_from_seed():
    a, b, c = make(seed=4), make(seed=4), make(seed=5)
    for name in ("w_in", "w_rec", "w_out"):
        assert torch.equal(a.weights()[name], b.weights()[name])
    assert not torch.equal(a.weights()["w_rec"], c.weights()["w_rec"])


# ------------------------------------------------------------------------------ activity views
def test_activity_views_select_exact_columns():
    model = make().eval()
    _, act = model(torch.randn(2, 7, 3))
    r = act.rates
    assert r.shape == (2, 7, 45)
    for name, idx in SLICES.items():
        assert torch.equal(act.area(name), r[..., idx])
        assert torch.equal(act.excitatory(name), r[..., E_IDX[name]])
        assert torch.equal(act.inhibitory(name), r[..., I_IDX[name]])
        assert torch.equal(act.select(name, "I"), r[..., I_IDX[name]])
    assert torch.equal(act.excitatory(), r[..., np.concatenate(list(E_IDX.values()))])
    assert torch.equal(act.inhibitory(), r[..., np.concatenate(list(I_IDX.values()))])
    assert torch.equal(act.select(), r)
    views = act.by_area()
    assert list(views) == ["PFC", "V1", "PPC"]
    for name, idx in SLICES.items():
        assert torch.equal(views[name], r[..., idx])
    with pytest.raises(ValueError, match="unknown area 'M1'"):
        act.area("M1")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_return_preact(activation):
    model = make(activation=activation).eval()
    out, act = model(torch.randn(3, 6, 3), return_preact=True)
    assert act.preact is not None and act.preact.shape == act.rates.shape
    torch.testing.assert_close(act.rates, TORCH_F[activation](act.preact), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out, act.rates @ model.w_out.T + model.b_out)
    assert model(torch.randn(3, 6, 3))[1].preact is None


def test_readout_from_excitatory_only():
    model = make(readout_from="excitatory", readout_areas=["PFC", "PPC"])
    w_out = model.weights()["w_out"]
    assert (w_out[:, I_IDX["PFC"]] == 0).all() and (w_out[:, I_IDX["PPC"]] == 0).all()
    assert (w_out[:, E_IDX["PFC"]] > 0).all() and (w_out[:, SLICES["V1"]] == 0).all()


def test_single_area_vanilla_network():
    torch.manual_seed(0)
    model = CTRNN({"areas": {"rnn": {"size": 32}}, "input_size": 2, "output_size": 1, "dale": False,
                   "activation": "tanh"})
    assert (model.sign == 0).all()
    w = model.weights()["w_rec"]
    assert (w > 0).any() and (w < 0).any() and (torch.diagonal(w) == 0).all()
    assert model.spectral_radius() == pytest.approx(1.5, rel=1e-5)
    x = torch.randn(16, 10, 2)
    y = x.sum(-1, keepdim=True).cumsum(1) * 0.1
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        out, act = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert act.excitatory().shape == (16, 10, 0)
    assert torch.equal(act.area("rnn"), act.rates)


def test_bad_engine():
    with pytest.raises(ValueError, match="engine: unknown engine 'fast'"):
        CTRNN(NetworkConfig.from_dict(THREE), engine="fast")


# ------------------------------------------------------------------------------ files
class _Payload:
    ran = False

    def __reduce__(self):
        return (setattr, (_Payload, "ran", True))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = make(learn_tau=True, learn_h0=True, seed=5, noise={"rec": 0.1},
                 plasticity={"projections": {"PPC": {"V1": 0.5}}},
                 input_groups={"a": {"size": 1, "areas": ["V1"]}, "b": {"size": 2, "areas": ["PFC"]}})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out, _ = model(torch.randn(2, 5, 3))
    out.sum().backward()
    opt.step()  # saved weights differ from a fresh init
    path = tmp_path / "net.pt"
    model.save(path)
    assert not (tmp_path / "net.pt.tmp").exists()
    loaded = CTRNN.load(path)
    assert loaded.config == model.config
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert set(sd) == set(sd2)
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    for name in ("rec_mask", "input_mask", "readout_mask", "sign", "tau"):
        np.testing.assert_array_equal(getattr(model.structure, name), getattr(loaded.structure, name))
    x = torch.randn(3, 8, 3)
    model.eval(), loaded.eval()
    assert torch.equal(model(x)[0], loaded(x)[0])
    assert not torch.equal(make(seed=5, learn_tau=True, learn_h0=True).eval()(x)[0], loaded(x)[0])


def test_networks_pickle_for_multiprocessing_and_torch_save(tmp_path):
    import pickle

    from nn4n import Ensemble

    model = make(learn_tau=True, learn_h0=True).double().eval()
    model.parametrizations.w_out.original.requires_grad_(False)  # a frozen readout
    with torch.no_grad():
        model.parametrizations.w_rec.original.mul_(1.5)  # not a fresh init from the seed
    copy = pickle.loads(pickle.dumps(model))
    assert copy.config == model.config and copy.engine == model.engine and not copy.training
    x = torch.randn(3, 8, 3, dtype=torch.float64)
    assert torch.equal(copy(x)[0], model(x)[0]) and copy.w_rec.dtype == torch.float64
    assert {n: p.requires_grad for n, p in copy.named_parameters()} == {n: p.requires_grad for n, p in model.named_parameters()}
    assert not copy.parametrizations.w_out.original.requires_grad
    model.save(tmp_path / "double.pt")  # a saved file keeps the dtype too
    assert torch.equal(CTRNN.load(tmp_path / "double.pt").eval()(x)[0], model(x)[0])
    torch.save(model, tmp_path / "whole.pt")
    assert torch.equal(torch.load(tmp_path / "whole.pt", weights_only=False)(x)[0], model(x)[0])
    ensemble = Ensemble(THREE, 2, engine="fused")
    u = torch.randn(2, 3, 8, 3)
    assert torch.equal(pickle.loads(pickle.dumps(ensemble))(u, noise=False)[0], ensemble(u, noise=False)[0])


def test_load_refuses_pickled_objects_and_foreign_files(tmp_path):
    model = make()
    evil = tmp_path / "evil.pt"
    torch.save({"format": MODEL_FORMAT, "config": model.config.to_dict(), "state_dict": model.state_dict(),
                "payload": _Payload()}, evil)
    with pytest.raises(ValueError, match="evil.pt: refused to load: not a plain-tensor nn4n model file: it holds objects that would run code \\(UnpicklingError\\)$"):
        CTRNN.load(evil)
    assert _Payload.ran is False
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an nn4n model file$"):
        CTRNN.load(other)
    text = tmp_path / "metrics.json"
    text.write_text("{}")
    with pytest.raises(ValueError, match="metrics.json: refused to load: not a plain-tensor nn4n model file: unreadable"):
        CTRNN.load(text)
    truncated = tmp_path / "truncated.pt"
    model.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"truncated.pt: refused to load: .*: unreadable: truncated, corrupt or not written by torch.save \(\w+\)$"):
        CTRNN.load(truncated)


def test_load_says_what_another_nn4n_file_is(tmp_path):
    """A training checkpoint given to CTRNN.load, or a model file where a checkpoint belongs."""
    model_file, checkpoint = tmp_path / "best.pt", tmp_path / "last.pt"
    make().save(model_file)
    save_checkpoint(checkpoint, {"step": 1})
    with pytest.raises(ValueError, match=r"last.pt: not an nn4n model file; it is an nn4n training checkpoint, "
                                         r"which nn4n.analysis.load_run\(run_dir, checkpoint='last'\) reads$"):
        CTRNN.load(checkpoint)
    with pytest.raises(ValueError, match=r"best.pt: not an nn4n training checkpoint; it is an nn4n model file, which CTRNN.load reads$"):
        load_checkpoint(model_file)
    older = tmp_path / "older.pt"
    torch.save({"format": "nn4n.checkpoint/1", "step": 1}, older)
    with pytest.raises(ValueError, match=r"older.pt: not an nn4n training checkpoint this version reads: its format is "
                                         r"nn4n.checkpoint/1, this nn4n reads nn4n.checkpoint/2 \(written by another nn4n version\)$"):
        load_checkpoint(older)
    with pytest.raises(FileNotFoundError):
        CTRNN.load(tmp_path / "missing.pt")
    with pytest.raises(IsADirectoryError):
        CTRNN.load(tmp_path)
    with pytest.raises(ValueError, match=r"^map_location: 'gpu' is not a device \(cpu, cuda, cuda:N, mps or auto\)$"):
        CTRNN.load(model_file, map_location="gpu")
    missing = f"cuda:{torch.cuda.device_count()}"  # one more than this machine has
    with pytest.raises(ValueError, match=f"^map_location: '{missing}' requested but .*; use auto or cpu$"):
        CTRNN.load(model_file, map_location=missing)
    with pytest.raises(ValueError, match=f"^map_location: '{missing}' requested"):
        load_checkpoint(checkpoint, missing)
    assert CTRNN.load(model_file, map_location="auto").w_rec.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------ dtype / device
def check_moved(model: CTRNN, device: str | torch.device, dtype: torch.dtype) -> None:
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    assert len(tensors) >= 15
    for name, t in tensors:
        assert t.device.type == torch.device(device).type, name
        if t.is_floating_point() or name.endswith("signed"):
            assert t.dtype == (torch.bool if name.endswith("signed") else dtype), name
    for name, w in model.weights().items():
        assert w.dtype == dtype and w.device.type == torch.device(device).type, name
    assert model.tau.dtype == dtype and model.alpha.device.type == torch.device(device).type


@pytest.mark.parametrize("learn", [False, True])
def test_to_float64_moves_everything(learn):
    model = make(learn_tau=learn, learn_h0=learn, noise={"rec": 0.1, "input": 0.1}).eval()
    x = torch.randn(2, 6, 3)
    out32 = model(x)[0]
    model.to(torch.float64)
    check_moved(model, "cpu", torch.float64)
    out64, act = model(x.double())
    assert out64.dtype == torch.float64 and act.area("V1").dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-5)
    model.train()
    assert model(x.double())[0].dtype == torch.float64  # noise drawn in float64


def test_to_meta_moves_everything():
    model = make(learn_tau=True, learn_h0=True).to("meta")
    check_moved(model, "meta", torch.float32)
    out, act = model(torch.empty(2, 4, 3, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 4, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_moves_everything_and_matches_cpu():
    torch.manual_seed(0)
    model = make(learn_tau=True, learn_h0=True, noise={"rec": 0.1, "input": 0.1},
                 plasticity={"projections": {"PPC": {"V1": 0.1}}})
    x = torch.randn(4, 10, 3)
    cpu = model.eval()(x)[0]
    model.to("cuda")
    check_moved(model, "cuda", torch.float32)
    gpu, act = model(x.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
    assert act.excitatory("V1").device.type == "cuda"
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.apply_plasticity(opt)
    for _ in range(3):
        opt.zero_grad()
        model(x.cuda())[0].pow(2).mean().backward()
        opt.step()
    assert_constraints(model)


def test_repr_names_areas_sizes_and_engine():
    net = CTRNN({"areas": {"V1": {"size": 10}, "PFC": {"size": 5}}, "input_size": 2, "output_size": 1}, engine="fused")
    assert "15 neurons (V1 10, PFC 5), inputs=2, outputs=1, relu, engine=fused" in repr(net).splitlines()[1]
