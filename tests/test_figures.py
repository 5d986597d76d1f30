import io
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure

from nn4n import figures

COHS = np.array([0.0, 6.4, 12.8, 25.6, 51.2])


@pytest.fixture(scope="module")
def act() -> dict[str, np.ndarray]:
    """Synthetic 2-area E/I classification record whose rates depend on ground truth."""
    rng = np.random.default_rng(0)
    n_trials, n_time, n_in, n_out = 20, 30, 3, 3
    sizes, n_exc = (10, 6), (8, 4)
    n = sum(sizes)
    sign = np.concatenate([np.r_[np.ones(e), -np.ones(s - e)] for s, e in zip(sizes, n_exc)]).astype(np.int8)
    area = np.repeat(np.array(["PFC", "PPC"]), sizes)
    lengths = rng.integers(20, n_time + 1, n_trials)
    lengths[0] = 25
    steps = np.arange(n_time)
    valid = steps[None] < lengths[:, None]
    gt = np.tile([1, 2], n_trials // 2)
    coh = COHS[np.arange(n_trials) % len(COHS)]
    pattern = rng.normal(size=n)
    t = steps[None, :, None] / n_time
    rates = 0.5 + 0.1 * np.sin(2 * np.pi * t + np.arange(n)) + 3.0 * (gt == 2)[:, None, None] * pattern
    rates = (rates + 0.01 * rng.normal(size=(n_trials, n_time, n))) * valid[..., None]
    signed = np.where(gt == 1, -coh, coh)
    choice = np.where(rng.random(n_trials) < 1 / (1 + np.exp(-signed / 10)), 2, 1)
    choice[3] = 0
    epochs = {"fixation": (0, 5), "stimulus": (5, 15), "decision": (15, n_time)}
    return {
        "kind": np.array("classification"),
        "rates": rates.astype(np.float32),
        "inputs": rng.normal(size=(n_trials, n_time, n_in)).astype(np.float32),
        "outputs": rng.normal(size=(n_trials, n_time, n_out)).astype(np.float32),
        "targets": rng.integers(0, n_out, (n_trials, n_time)).astype(np.int64),
        "mask": valid.astype(np.float32),
        "lengths": lengths,
        "w_in": rng.normal(size=(n, n_in)),
        "w_rec": np.abs(rng.normal(size=(n, n))) * sign[None, :],  # Dale: column sign = pre
        "w_out": rng.normal(size=(n_out, n)),
        "sign": sign,
        "area": area,
        "area_names": np.array(["PFC", "PPC"]),
        "dt": np.array(20.0),
        "choice": choice[:, None],  # (trials, responses)
        "cond_ground_truth": gt,
        "target_choice": gt[:, None],
        "cond_coh": coh,
        **{f"epoch_{k}": np.tile(v, (n_trials, 1)) for k, v in epochs.items()},
    }


@pytest.fixture(scope="module")
def regression(act) -> dict[str, np.ndarray]:
    reg = {k: v for k, v in act.items() if k != "choice"} | {"kind": np.array("regression")}
    reg["targets"] = np.random.default_rng(1).normal(size=act["outputs"].shape[:2] + (2,))
    reg["outputs"] = reg["targets"] + 0.1
    return reg


def test_peak_order():
    rates = np.zeros((5, 5))
    rates[3, 0] = rates[0, 1] = rates[4, 3] = rates[1, 4] = 1.0
    np.testing.assert_array_equal(figures.peak_order(rates), [1, 4, 0, 3, 2])  # the silent neuron 2 last


def test_activity_heatmap(act):
    fig = figures.activity_heatmap(act, trial=0)
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(panels) == 2
    length = act["lengths"][0]
    for ax, size in zip(panels, (10, 6)):
        img = ax.images[0].get_array()
        assert img.shape == (size, length)
        assert np.all(np.diff(img.argmax(axis=1)) >= 0)  # rows sorted by peak time
        assert ax.get_xlim() == (0, length * 20.0)
    texts = {t.get_text() for t in panels[0].texts}
    assert {"fixation", "stimulus", "decision"} <= texts
    start = act["epoch_fixation"][0, 1]
    short = act | {"epoch_stimulus": act["epoch_stimulus"].copy(), "epoch_decision": act["epoch_decision"].copy()}
    short["epoch_stimulus"][0], short["epoch_decision"][0, 0] = [start, start + 1], start + 1  # a one-step stimulus
    for fig in (figures.activity_heatmap(short), figures.trial_io(short)):
        fig.canvas.draw()
        boxes = [t.get_window_extent() for t in fig.axes[0].texts]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])  # names stay legible


def test_connectivity_matrix(act):
    fig = figures.connectivity_matrix(act)
    ax = fig.axes[0]
    im = ax.images[0]
    np.testing.assert_array_equal(im.get_array(), act["w_rec"])
    vmin, vmax = im.get_clim()
    assert vmin == -vmax == -np.abs(act["w_rec"]).max()
    widths = sorted(line.get_linewidth() for line in ax.get_lines())
    assert widths.count(1.5) == 2 and widths.count(0.5) == 4  # 1 area, 2 E/I boundaries (h + v)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["PFC", "PPC"]


def test_pca_trajectories(act):
    fig = figures.pca_trajectories(act)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 20
    assert [len(line.get_xdata()) for line in lines] == list(act["lengths"])
    pc1 = np.array([line.get_xdata().mean() for line in lines])
    gt = act["cond_ground_truth"]
    a, b = pc1[gt == 1], pc1[gt == 2]
    assert a.max() < b.min() or b.max() < a.min()
    assert len(ax.get_legend().get_texts()) == 2

    x = act["rates"][act["mask"] > 0].astype(float)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    var = 100 * s**2 / np.sum(s**2)
    shown = [float(v) for v in re.findall(r"PC\d ([\d.]+)%", ax.get_title())]
    np.testing.assert_allclose(shown, var[:2], atol=0.05)


@pytest.mark.parametrize("case", ["one neuron", "silent"])
def test_every_figure_of_one_neuron_or_a_silent_network(act, case):
    """A one-neuron network has no PC2 (plotted as 0); a silent one no variance (0 %, not nan)."""
    one = {**act, **{k: act[k][..., :1] for k in ("rates", "w_in")}, "w_rec": act["w_rec"][:1, :1],
           "w_out": act["w_out"][:, :1], "sign": act["sign"][:1], "area": act["area"][:1], "area_names": act["area_names"][:1]}
    if case == "silent":
        one["rates"] = np.zeros_like(act["rates"])
    figs = figures.all_figures(one)
    title = figs["pca"].axes[0].get_title()
    assert title.startswith("PC1 100.0% · PC2 0.0%" if case == "one neuron" else "PC1 0.0% · PC2 0.0%"), title
    assert all(isinstance(f, Figure) for f in figs.values())


def test_pca_without_condition(act):
    """A task without a ground truth (regression) is drawn in one colour; a condition asked for must exist."""
    ax = figures.pca_trajectories({k: v for k, v in act.items() if k != "cond_ground_truth"}).axes[0]
    assert ax.get_legend() is None
    assert len({line.get_color() for line in ax.get_lines()}) == 1
    conditions = ", ".join(k.removeprefix("cond_") for k in act if k.startswith("cond_"))
    with pytest.raises(ValueError, match=f"^color_by: no condition 'missing' in this record; conditions: {conditions}$"):
        figures.pca_trajectories(act, color_by="missing")


def test_trial_io_classification(act):
    fig = figures.trial_io(act, trial=0)
    ax_in, ax_tgt, ax_out = fig.axes
    length = act["lengths"][0]
    probs = np.stack([line.get_ydata() for line in ax_out.get_lines()])
    assert probs.shape == (3, length)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(ax_out.get_lines()[0].get_xdata(), np.arange(length) * 20.0)
    assert len(ax_in.get_lines()) == 3
    assert len(ax_out.patches) == 3  # one shaded span per epoch
    assert [t.get_text() for t in ax_out.get_legend().get_texts()] == ["class 0", "class 1", "class 2"]
    one_hot = np.stack([line.get_ydata() for line in ax_tgt.get_lines()])  # the target class, one trace per class
    np.testing.assert_array_equal(one_hot.argmax(0), act["targets"][0, :length])
    np.testing.assert_array_equal(one_hot.sum(0), 1)
    assert [line.get_color() for line in ax_tgt.get_lines()] == [line.get_color() for line in ax_out.get_lines()]
    named = figures.trial_io(act | {"input_labels": np.array(["fixation", "stimulus 0", "stimulus 1"]),
                                    "output_labels": np.array(["fixation", "choice 0", "choice 1"])})
    assert [t.get_text() for t in named.axes[0].get_legend().get_texts()] == ["fixation", "stimulus 0", "stimulus 1"]
    assert [t.get_text() for t in named.axes[2].get_legend().get_texts()] == ["fixation", "choice 0", "choice 1"]


def test_trial_io_regression(regression):
    ax_out = figures.trial_io(regression).axes[2]
    styles = [line.get_linestyle() for line in ax_out.get_lines()]
    assert styles.count("--") == 2 and styles.count("-") == 2


def test_psychometric_curve(act):
    fig = figures.psychometric_curve(act)
    ax = fig.axes[0]
    data = next(line for line in ax.get_lines() if line.get_label() == "data")
    signed = np.where(act["target_choice"][:, 0] == 1, -act["cond_coh"], act["cond_coh"])
    levels = np.unique(signed)
    expected = [np.mean(act["choice"][signed == lv, 0] == 2) for lv in levels]
    np.testing.assert_allclose(data.get_xdata(), levels)
    np.testing.assert_allclose(data.get_ydata(), expected)
    fit = next(line for line in ax.get_lines() if line.get_label() == "logistic fit")
    assert np.all(np.diff(fit.get_ydata()) >= 0)  # choices of 2 rise with signed evidence
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("signed coh (− = correct class 1, + = class 2)", "fraction choosing class 2")
    named = figures.psychometric_curve(act | {"output_labels": np.array(["fixation", "left", "right"])}).axes[0]
    assert (named.get_xlabel(), named.get_ylabel()) == ("signed coh (− = correct left, + = right)", "fraction choosing right")


def test_psychometric_not_applicable(act, regression):
    assert figures.psychometric_curve(regression) is None
    assert figures.psychometric_curve(act, strength="missing") is None


def test_all_figures(act, regression):
    figs = figures.all_figures(act)
    assert set(figs) == {"activity", "connectivity", "pca", "trial_io", "psychometric"}
    assert all(isinstance(f, Figure) for f in figs.values())
    for fig in figs.values():
        fig.savefig(io.BytesIO(), format="png")
    assert set(figures.all_figures(regression)) == {"activity", "connectivity", "pca", "trial_io"}


def test_load_activity_roundtrip(act, tmp_path):
    path = tmp_path / "activity.npz"
    np.savez(path, **act)
    loaded = figures.load_activity(path)
    assert type(loaded) is dict and set(loaded) == set(act)
    for k, v in act.items():
        np.testing.assert_array_equal(loaded[k], v)


def test_pca_legend_follows_the_conditions_values_not_the_trials(act):
    first_strongest = act | {"cond_coh": np.roll(act["cond_coh"], -4)}  # trial 0 has coherence 51.2
    legend = figures.pca_trajectories(first_strongest, color_by="coh").axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [f"coh={c}" for c in COHS]  # 6.4 second, not last


def test_periods_absent_from_a_trial_are_not_labelled(act):
    absent = act | {"epoch_delay": np.tile([15, 15], (len(act["lengths"]), 1))}  # zero length, at the decision's start
    for fig in (figures.trial_io(absent), figures.activity_heatmap(absent)):
        names = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert "delay" not in names and {"fixation", "stimulus", "decision"} <= set(names)


def test_produced_intervals_of_a_timing_task(act):
    timing = act | {"produced_interval": np.array([[400.0], [650.0], [np.nan]]), "target_interval": np.array([[400.0], [500.0], [500.0]]),
                    "outcome": np.array([[1], [0], [-2]])}
    ax = figures.produced_intervals(timing).axes[0]
    correct, wrong = (c.get_offsets() for c in ax.collections)
    np.testing.assert_array_equal(correct, [[400, 400]])
    np.testing.assert_array_equal(wrong, [[500, 650], [500, np.nan]])
    assert "intervals" in figures.all_figures(timing) and figures.produced_intervals(act) is None
