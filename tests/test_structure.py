"""Structure: neuron layout, E/I identity, masks and config validation."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from nn4n.structure import Area, NetworkConfig, Structure
from helpers import merge

# PFC is declared first on purpose: order must follow the declaration, not the alphabet.
BASE = {
    "areas": {
        "PFC": {"size": 15, "tau": 50},
        "V1": {"size": 20},
        "PPC": {"size": 10, "exc_frac": 0.5, "tau": 200, "noise": 0.3},
    },
    "input_size": 3,
    "output_size": 2,
    "noise": {"rec": 0.1},
    "density": {"within": 0.4, "between": 0.1},
    "projections": {"PPC": {"V1": 0.25}},
    "input_areas": ["V1"],
    "readout_areas": ["PFC"],
}
# expected layout of BASE: PFC 12 E + 3 I, V1 16 E + 4 I, PPC 5 E + 5 I
SLICES = {"PFC": (0, 15), "V1": (15, 35), "PPC": (35, 45)}
E_IDX = {"PFC": np.arange(0, 12), "V1": np.arange(15, 31), "PPC": np.arange(35, 40)}
I_IDX = {"PFC": np.arange(12, 15), "V1": np.arange(31, 35), "PPC": np.arange(40, 45)}


def build(**over) -> Structure:
    return Structure(NetworkConfig.from_dict(merge(BASE, over)))


def block(st: Structure, mask: np.ndarray, to: str, pre: str) -> np.ndarray:
    return mask[st.area_slices[to], st.area_slices[pre]]


# ------------------------------------------------------------------------------------ layout
def test_neuron_order_sign_and_area():
    st = build()
    assert st.n_neurons == 45
    assert st.area_names == ["PFC", "V1", "PPC"]
    expected_sign = np.r_[[1] * 12, [-1] * 3, [1] * 16, [-1] * 4, [1] * 5, [-1] * 5]
    np.testing.assert_array_equal(st.sign, expected_sign)
    assert list(st.area) == ["PFC"] * 15 + ["V1"] * 20 + ["PPC"] * 10
    for name, (lo, hi) in SLICES.items():
        assert st.area_slices[name] == slice(lo, hi)
        np.testing.assert_array_equal(st.indices(name), np.arange(lo, hi))
        np.testing.assert_array_equal(st.indices(name, "E"), E_IDX[name])
        np.testing.assert_array_equal(st.indices(name, "I"), I_IDX[name])
    np.testing.assert_array_equal(st.indices(), np.arange(45))
    np.testing.assert_array_equal(st.indices(population="E"), np.concatenate(list(E_IDX.values())))
    np.testing.assert_array_equal(st.indices(population="I"), np.concatenate(list(I_IDX.values())))
    np.testing.assert_array_equal(st.indices("V1", "excitatory"), E_IDX["V1"])  # the words work too
    np.testing.assert_array_equal(st.indices("V1", "inhibitory"), I_IDX["V1"])


def test_per_area_overrides():
    st = build()
    np.testing.assert_array_equal(st.tau, np.r_[[50.0] * 15, [100.0] * 20, [200.0] * 10])
    np.testing.assert_allclose(st.noise, np.r_[[0.1] * 35, [0.3] * 10], rtol=1e-6)
    st = build(exc_frac=0.6, tau=40, areas={"V1": {"exc_frac": 0.25}})
    np.testing.assert_array_equal(st.tau[st.indices("V1")], 40.0)  # network default
    assert (st.sign[st.indices("PFC")] > 0).sum() == 9  # round(0.6 * 15)
    assert (st.sign[st.indices("V1")] > 0).sum() == 5  # area override 0.25 * 20
    assert (st.sign[st.indices("PPC")] > 0).sum() == 5


def test_tau_per_neuron_from_a_range():
    """Each neuron's tau log-uniform in the range, from the seed; masks are drawn as without it."""
    st = build(tau_range=[30, 3000], areas={"V1": {"size": 400}, "PPC": {"tau": None, "tau_range": [60, 70]}})
    v1, ppc = np.log(st.tau[st.indices("V1")]), st.tau[st.indices("PPC")]
    assert v1.min() >= np.log(30) and v1.max() <= np.log(3000)
    counts, _ = np.histogram(v1, bins=4, range=(np.log(30), np.log(3000)))  # 100 expected per bin
    assert counts.min() > 70 and counts.max() < 130, counts
    assert ppc.min() >= 60 and ppc.max() <= 70 and np.ptp(ppc) > 0  # the area's own range
    np.testing.assert_array_equal(st.tau[st.indices("PFC")], 50.0)  # the area's own tau
    again = build(tau_range=[30, 3000], areas={"V1": {"size": 400}, "PPC": {"tau": None, "tau_range": [60, 70]}})
    np.testing.assert_array_equal(st.tau, again.tau)
    assert not np.array_equal(st.tau, build(seed=1, tau_range=[30, 3000], areas={"V1": {"size": 400}}).tau)
    fixed = build(areas={"V1": {"size": 400}})
    np.testing.assert_array_equal(st.rec_mask, fixed.rec_mask)
    assert re.search(r"area PPC .* tau 6\d\.\d-[67]\d\.\d ms", st.summary().splitlines()[3])


@pytest.mark.parametrize("frac, n_exc", [(0.0, 0), (1.0, 10), (0.34, 3)])
def test_exc_frac_extremes(frac, n_exc):
    st = Structure(NetworkConfig(areas={"A": Area(10, exc_frac=frac)}))
    np.testing.assert_array_equal(st.sign, np.r_[[1] * n_exc, [-1] * (10 - n_exc)])


def test_indices_rejects_unknown_area_and_population():
    st = build()
    with pytest.raises(ValueError, match="area: unknown area 'M1'; areas: PFC, V1, PPC"):
        st.indices("M1")
    with pytest.raises(ValueError, match="population: must be 'E', 'I', 'excitatory' or 'inhibitory', got 'exc'"):
        st.indices("V1", "exc")


def test_dale_false_all_signs_zero():
    st = build(dale=False)
    np.testing.assert_array_equal(st.sign, np.zeros(45))
    assert st.indices(population="E").size == 0 and st.indices(population="I").size == 0


def test_dataclass_and_dict_configs_agree():
    cfg = NetworkConfig.from_dict(BASE)
    assert isinstance(cfg.areas["PFC"], Area)
    again = NetworkConfig.from_dict(cfg.to_dict())
    assert again == cfg
    a, b = Structure(cfg), Structure(again)
    for name in ("rec_mask", "input_mask", "readout_mask", "sign", "tau", "noise"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


# ------------------------------------------------------------------------------------ masks
def n_allowed(rows: int, cols: int, n_inh_pre: int, same: bool, self_conn: bool, long_range: str) -> int:
    if same:
        return rows * cols - (0 if self_conn else rows)
    return rows * (cols - (n_inh_pre if long_range == "excitatory" else 0))


@settings(max_examples=20, deadline=None)
@given(
    sizes=hst.lists(hst.integers(1, 12), min_size=1, max_size=4),
    within=hst.floats(0, 1),
    between=hst.floats(0, 1),
    exc_frac=hst.floats(0, 1),
    override=hst.floats(0, 1),
    self_conn=hst.booleans(),
    long_range=hst.sampled_from(["all", "excitatory"]),
    dale=hst.booleans(),
    seed=hst.integers(0, 2**16),
)
def test_block_densities_and_forbidden_synapses(sizes, within, between, exc_frac, override, self_conn, long_range, dale, seed):
    names = [f"A{i}" for i in range(len(sizes))]
    long_range = long_range if dale else "all"  # excitatory-only projections need Dale's law
    projections = {names[-1]: {names[0]: override}}  # one overridden block (within if a single area)
    cfg = NetworkConfig.from_dict({
        "areas": {n: {"size": s} for n, s in zip(names, sizes)},
        "dale": dale, "exc_frac": exc_frac, "density": {"within": within, "between": between},
        "projections": projections, "self_connections": self_conn, "long_range": long_range, "seed": seed,
    })
    st = Structure(cfg)
    assert st.rec_mask.shape == (sum(sizes), sum(sizes)) and st.rec_mask.dtype == bool
    for to, rows in zip(names, sizes):
        for pre, cols in zip(names, sizes):
            asked = projections.get(to, {}).get(pre, within if to == pre else between)
            assert st.asked_density[to, pre] == asked
            blk = block(st, st.rec_mask, to, pre)
            inh_cols = st.sign[st.area_slices[pre]] < 0
            allowed = n_allowed(rows, cols, int(inh_cols.sum()), to == pre, self_conn, long_range)
            count = int(blk.sum())
            assert abs(count - asked * allowed) <= 0.5 + 1e-9, (to, pre, count, asked, allowed)
            if allowed:
                assert st.realized_density(to, pre) == pytest.approx(count / allowed)
                assert abs(st.realized_density(to, pre) - asked) <= 1 / allowed + 1e-12
            else:
                assert count == 0 and st.realized_density(to, pre) == 0.0
            if to == pre and not self_conn:
                assert not np.diagonal(blk).any()
            if to != pre and long_range == "excitatory":
                assert not blk[:, inh_cols].any()


def test_self_connections():
    dense = {"density": {"within": 1.0, "between": 1.0}, "projections": {"PPC": {"V1": 1.0}}}
    st = build(**dense)
    assert not np.diagonal(st.rec_mask).any()
    off_diag = ~np.eye(45, dtype=bool)
    assert st.rec_mask[off_diag].all()
    st = build(**dense, self_connections=True)
    assert st.rec_mask.all()


def test_long_range_excitatory_only():
    st = build(density={"within": 1.0, "between": 1.0}, projections={"PPC": {"V1": 1.0}}, long_range="excitatory")
    for pre in SLICES:
        inh = I_IDX[pre]
        other = np.setdiff1d(np.arange(45), st.indices(pre))
        assert not st.rec_mask[np.ix_(other, inh)].any()  # no I synapse leaves its area
        assert st.rec_mask[np.ix_(other, E_IDX[pre])].all()  # E ones do
        own = st.indices(pre)
        sub = st.rec_mask[np.ix_(own, inh)]
        assert sub.sum() == own.size * inh.size - inh.size  # local inhibition intact (minus diagonal)


def test_input_groups_routed_and_counted():
    st = build(input_groups={"visual": {"size": 1, "areas": ["V1"]}, "context": {"size": 2, "areas": ["PFC", "PPC"]}},
               input_frac=0.4)
    assert st.input_mask.shape == (45, 3)
    vis = np.flatnonzero(st.input_mask[:, 0])
    ctx = np.flatnonzero(st.input_mask[:, 1])
    assert vis.size == 8 and np.isin(vis, st.indices("V1")).all()  # round(0.4 * 20)
    assert ctx.size == 10 and np.isin(ctx, np.r_[st.indices("PFC"), st.indices("PPC")]).all()  # 0.4 * 25
    np.testing.assert_array_equal(st.input_mask[:, 1], st.input_mask[:, 2])  # a group shares its receivers
    assert not st.input_mask[st.indices("V1")][:, 1:].any()


@pytest.mark.parametrize("over, receivers, count", [
    ({"input_areas": [], "input_frac": 1.0}, "PFC", 15),  # default: first declared area
    ({"input_areas": ["PPC"], "input_frac": 0.5}, "PPC", 5),
    ({"input_areas": ["V1", "PPC"], "input_frac": 0.1}, ("V1", "PPC"), 3),
    ({"input_areas": ["PPC"], "input_frac": 0.01}, "PPC", 1),  # at least one neuron
])
def test_input_areas_and_frac(over, receivers, count):
    st = build(**over)
    pool = np.concatenate([st.indices(a) for a in np.atleast_1d(receivers)])
    rows = np.flatnonzero(st.input_mask.any(1))
    assert rows.size == count and np.isin(rows, pool).all()
    assert st.input_mask[rows].all()  # without groups every feature reaches every receiver


def test_readout_areas_from_and_frac():
    st = build(readout_areas=[])  # default: last declared area, all neurons
    np.testing.assert_array_equal(np.flatnonzero(st.readout_mask.any(0)), st.indices("PPC"))
    assert st.readout_mask.shape == (2, 45)
    st = build(readout_areas=["V1", "PPC"], readout_from="excitatory")
    np.testing.assert_array_equal(np.flatnonzero(st.readout_mask[0]), np.r_[E_IDX["V1"], E_IDX["PPC"]])
    np.testing.assert_array_equal(st.readout_mask[0], st.readout_mask[1])
    st = build(readout_areas=["V1"], readout_from="excitatory", readout_frac=0.5)
    cols = np.flatnonzero(st.readout_mask.any(0))
    assert cols.size == 8 and (st.sign[cols] > 0).all() and np.isin(cols, st.indices("V1")).all()


def test_readout_overlap_false_avoids_input_neurons():
    st = build(input_areas=["V1", "PFC"], input_frac=0.5, readout_areas=["V1", "PFC"], readout_overlap=False)
    readers = np.flatnonzero(st.readout_mask.any(0))
    assert np.flatnonzero(st.input_mask.any(1)).size == 18  # round(0.5 * 35)
    assert not st.input_mask[readers].any()
    # readout_frac=1: every V1/PFC neuron without input is read out
    np.testing.assert_array_equal(readers, np.setdiff1d(np.arange(35), np.flatnonzero(st.input_mask.any(1))))
    with pytest.raises(ValueError, match=r"readout_areas \(V1\).*readout_overlap"):
        build(input_areas=["V1"], input_frac=1.0, readout_areas=["V1"], readout_overlap=False)
    with pytest.raises(ValueError, match=r"readout_areas \(V1\).*excitatory"):
        build(areas={"V1": {"exc_frac": 0.0}}, readout_areas=["V1"], readout_from="excitatory")


def test_masks_reproducible_from_seed():
    a, b, c = build(seed=7), build(seed=7), build(seed=8)
    for name in ("rec_mask", "input_mask", "readout_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.rec_mask, c.rec_mask)
    a, c = build(seed=7, input_frac=0.5), build(seed=8, input_frac=0.5)
    assert not np.array_equal(a.input_mask, c.input_mask)


def test_plasticity_arrays():
    st = build(plasticity={"input": 0.0, "readout": 0.5, "within": 0.9, "between": 0.2,
                           "projections": {"PPC": {"V1": 0.1, "PPC": 0.7}}})
    np.testing.assert_array_equal(st.input_plasticity, np.zeros((45, 3)))
    np.testing.assert_array_equal(st.readout_plasticity, np.full((2, 45), 0.5, np.float32))
    for to in SLICES:
        for pre in SLICES:
            expected = {("PPC", "V1"): 0.1, ("PPC", "PPC"): 0.7}.get((to, pre), 0.9 if to == pre else 0.2)
            np.testing.assert_array_equal(block(st, st.rec_plasticity, to, pre), np.float32(expected))


def test_summary_lists_every_block():
    st = build()
    text = st.summary()
    assert text.splitlines()[0] == "45 neurons, 3 inputs, 2 outputs"
    for name, (lo, hi) in SLICES.items():
        assert re.search(rf"area {name}\s+{hi - lo} neurons\s+E\s+{E_IDX[name].size}\s+I\s+{I_IDX[name].size}", text)
    assert re.search(r"area V1 .* input$", text, re.M) and re.search(r"area PFC .* readout$", text, re.M)
    for to in SLICES:
        for pre in SLICES:
            m = re.search(rf"^\s*{to} <- {pre}\s+([\d.]+)\s+([\d.]+)\s+(\d+)$", text, re.M)
            assert m, f"{to} <- {pre} missing from summary"
            assert float(m[1]) == pytest.approx(st.asked_density[to, pre], abs=0.005)
            assert float(m[2]) == pytest.approx(st.realized_density(to, pre), abs=0.0005)
            assert int(m[3]) == block(st, st.rec_mask, to, pre).sum()
    assert st.asked_density["PPC", "V1"] == 0.25 and st.asked_density["V1", "PPC"] == 0.1


# ------------------------------------------------------------------------------------ bad input
UNIT = r"\[0, 1\]"
BAD = [
    # unknown areas
    ({"projections": {"PFC": {"M1": 0.1}}}, r"projections\.PFC\.M1: unknown area 'M1'; areas: PFC, V1, PPC"),
    ({"projections": {"M1": {"V1": 0.1}}}, r"projections\.M1: unknown area 'M1'; areas: PFC, V1, PPC"),
    ({"input_areas": ["V1", "M1"]}, r"input_areas\[1\]: unknown area 'M1'; areas: PFC, V1, PPC"),
    ({"input_areas": "V1"}, r"input_areas: must be a list of area names, got 'V1'"),
    ({"dale": False, "long_range": "excitatory"}, r"long_range: 'excitatory' needs dale: true"),
    ({"seed": -1}, r"^seed: must be an integer in \[0, 2\*\*32\), got -1$"),
    ({"dale": False, "long_range": "all", "readout_from": "excitatory"},
     r"readout_from: 'excitatory' needs dale: true \(without it no neuron is excitatory\); with dale: false set readout_from: all$"),
    ({"readout_areas": ["M1"]}, r"readout_areas\[0\]: unknown area 'M1'"),
    ({"input_groups": {"vis": {"size": 3, "areas": ["M1"]}}}, r"input_groups\.vis\.areas\[0\]: unknown area 'M1'"),
    ({"input_groups": {"vis": {"size": 3, "areas": []}}}, r"input_groups\.vis\.areas: must name at least one area"),
    ({"plasticity": {"projections": {"M1": {"V1": 0.5}}}}, r"plasticity\.projections\.M1: unknown area"),
    ({"plasticity": {"projections": {"V1": {"M1": 0.5}}}}, r"plasticity\.projections\.V1\.M1: unknown area"),
    # sizes
    ({"areas": {"V1": {"size": 0}}}, r"areas\.V1\.size: must be an integer > 0, got 0"),
    ({"areas": {"V1": {"size": -4}}}, r"areas\.V1\.size: must be an integer > 0"),
    ({"areas": {"V1": {"size": 2.5}}}, r"areas\.V1\.size: must be an integer > 0, got 2\.5"),
    ({"areas": {"V1": {"size": "8"}}}, r"areas\.V1\.size: must be an integer > 0, got '8'"),
    ({"areas": {"V1": {"size": True}}}, r"areas\.V1\.size: must be an integer > 0"),
    ({"input_size": 0}, r"input_size: must be an integer > 0"),
    ({"output_size": 1.5}, r"output_size: must be an integer > 0"),
    ({"input_groups": {"vis": {"size": 0, "areas": ["V1"]}}}, r"input_groups\.vis\.size: must be an integer > 0"),
    # fractions
    ({"exc_frac": 1.2}, rf"exc_frac: must be in {UNIT}, got 1\.2"),
    ({"exc_frac": -0.1}, rf"exc_frac: must be in {UNIT}"),
    ({"areas": {"PPC": {"exc_frac": 2}}}, rf"areas\.PPC\.exc_frac: must be in {UNIT}"),
    ({"density": {"within": 1.5}}, rf"density\.within: must be in {UNIT}"),
    ({"density": {"between": -0.2}}, rf"density\.between: must be in {UNIT}"),
    ({"density": {"within": "0.5"}}, rf"density\.within: must be in {UNIT}, got '0\.5'"),
    ({"projections": {"PFC": {"PPC": 1.01}}}, rf"projections\.PFC\.PPC: must be in {UNIT}"),
    ({"input_frac": 1.5}, r"input_frac: must be in \(0, 1\]"),
    ({"input_frac": -0.5}, r"input_frac: must be in \(0, 1\]"),
    ({"input_frac": 0.0}, r"input_frac: must be in \(0, 1\]"),
    ({"readout_frac": 0}, r"readout_frac: must be in \(0, 1\]"),
    ({"readout_frac": 3}, r"readout_frac: must be in \(0, 1\]"),
    ({"plasticity": {"input": -0.1}}, rf"plasticity\.input: must be in {UNIT}"),
    ({"plasticity": {"readout": 1.1}}, rf"plasticity\.readout: must be in {UNIT}"),
    ({"plasticity": {"within": 2}}, rf"plasticity\.within: must be in {UNIT}"),
    ({"plasticity": {"between": -1}}, rf"plasticity\.between: must be in {UNIT}"),
    ({"plasticity": {"projections": {"V1": {"PFC": 1.5}}}}, rf"plasticity\.projections\.V1\.PFC: must be in {UNIT}"),
    # time constants and noise
    ({"tau": 10.0}, r"tau: must be >= dt=20\.0 so that dt/tau <= 1, got 10\.0"),
    ({"areas": {"V1": {"tau": 5}}}, r"areas\.V1\.tau: must be >= dt=20\.0 so that dt/tau <= 1"),
    ({"tau_range": [10, 200]}, r"^tau_range: must be \[low, high\] with dt=20\.0 <= low <= high, got \[10, 200\]$"),
    ({"areas": {"V1": {"tau_range": [300, 200]}}}, r"^areas\.V1\.tau_range: must be \[low, high\] with dt=20\.0 <= low"),
    ({"areas": {"V1": {"tau_range": 100}}}, r"^areas\.V1\.tau_range: must be \[low, high\].*got 100$"),
    ({"areas": {"V1": {"tau_range": [50, 100, 200]}}}, r"^areas\.V1\.tau_range: must be \[low, high\]"),
    ({"areas": {"PFC": {"tau_range": [50, 100]}}}, r"^areas\.PFC\.tau_range: give tau or tau_range, not both \(tau is 50: set it to null\)$"),
    ({"dt": 0}, r"dt: must be a finite number > 0"),
    ({"dt": -5.0}, r"dt: must be a finite number > 0"),
    ({"tau": "100"}, r"tau: must be a finite number, got '100'"),
    ({"dt": "20"}, r"dt: must be a finite number"),
    ({"areas": {"V1": {"tau": "1e2"}}}, r"areas\.V1\.tau: must be a finite number"),
    ({"noise": {"rec": -0.1}}, r"noise\.rec: must be a finite number >= 0"),
    ({"noise": {"input": -1}}, r"noise\.input: must be a finite number >= 0"),
    ({"noise": {"rec": "0.1"}}, r"noise\.rec: must be a finite number"),
    ({"areas": {"V1": {"noise": -0.5}}}, r"areas\.V1\.noise: must be a finite number >= 0"),
    # choices
    ({"input_groups": {"a": {"size": 1, "areas": ["V1"]}, "b": {"size": 1, "areas": ["PFC"]}}},
     r"input_groups: sizes sum to 2 but input_size is 3"),
    ({"activation": "gelu"}, r"activation: must be one of relu, tanh, softplus, sigmoid, retanh, got 'gelu'"),
    ({"init": {"dist": "lognormal"}}, r"init\.dist: must be one of normal, uniform, gamma, got 'lognormal'"),
    ({"init": {"spectral_radius": -1}}, r"init\.spectral_radius: must be a finite number >= 0"),
    ({"long_range": "inhibitory"}, r"long_range: must be one of all, excitatory, got 'inhibitory'"),
    ({"readout_from": "I"}, r"readout_from: must be one of all, excitatory"),
    # unknown keys, top level and nested
    ({"densty": {"within": 0.1}}, r"^densty: unknown key; allowed: areas, input_size"),
    ({"areas": {"V1": {"siz": 10}}}, r"^areas\.V1\.siz: unknown key; allowed: size, exc_frac, tau, tau_range, noise$"),
    ({"density": {"withn": 0.1}}, r"^density\.withn: unknown key; allowed: within, between$"),
    ({"noise": {"recc": 0.1}}, r"^noise\.recc: unknown key; allowed: rec, input$"),
    ({"init": {"distt": "normal"}}, r"^init\.distt: unknown key"),
    ({"plasticity": {"inputt": 0.5}}, r"^plasticity\.inputt: unknown key"),
    ({"input_groups": {"vis": {"sizee": 3, "areas": ["V1"]}}}, r"^input_groups\.vis\.sizee: unknown key; allowed: size, areas$"),
]


@pytest.mark.parametrize("over, message", BAD, ids=[m.split(":")[0].replace("\\", "") for _, m in BAD])
def test_bad_config_raises_value_error_naming_key(over, message):
    with pytest.raises(ValueError, match=message):
        NetworkConfig.from_dict(merge(BASE, over))


def test_no_areas():
    with pytest.raises(ValueError, match=r"areas: at least one area"):
        NetworkConfig.from_dict({"input_size": 2})


def test_bad_dataclass_config_also_validated():
    with pytest.raises(ValueError, match=r"areas\.A\.size"):
        NetworkConfig(areas={"A": Area(size=0)})
    with pytest.raises(ValueError, match=r"input_areas\[0\]: unknown area 'B'"):
        NetworkConfig(areas={"A": Area(4)}, input_areas=["B"])
