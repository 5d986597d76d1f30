"""Every engine gives the reference's rates, preactivations and gradients, on every device."""
from __future__ import annotations

from typing import Iterator

import pytest
import torch

from nn4n.recurrence import ACTIVATIONS, engine as engine_run, installed_engines
from nn4n.recurrence.step import time_major
from nn4n.model import CTRNN

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ENGINES = installed_engines()
FAST = [name for name in ENGINES if name != "reference"]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
# (batch, time, neurons): odd, T=1, batch 1; and batch 20, N=37, which the triton engine splits into
# two blocks of trials (the second partial) and four chunks of the recurrent product (the last partial)
SHAPES = [(3, 17, 11), (1, 1, 5), (1, 9, 7), (4, 1, 13), (20, 6, 37)]


def assert_close(got: torch.Tensor | None, want: torch.Tensor | None, tol: float, what: str) -> None:
    """Max error relative to the largest entry of ``want`` (entries near zero are not singled out)."""
    assert (got is None) == (want is None), what
    if got is not None and want is not None:
        got, want = got.detach(), want.detach()
        err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
        assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"


def run(engine: str, inputs: list[torch.Tensor], activation: str) -> list[torch.Tensor | None]:
    """Rates, preact and the gradients of a loss on both w.r.t. drive, h0, w_rec and alpha."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    rates, preact = engine_run(engine)(*leaves, activation, True)
    weights = torch.linspace(-1, 1, rates.numel(), dtype=rates.dtype, device=rates.device).view_as(rates)
    loss = (rates * weights).sum() + 0.1 * (preact * preact.flip(1)).sum()
    loss.backward()
    return [rates, preact] + [x.grad for x in leaves]


def problem(shape: tuple[int, int, int], dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    b, t, n = shape
    g = torch.Generator().manual_seed(seed)
    drive = torch.randn(b, t, n, generator=g, dtype=dtype)
    h0 = torch.randn(b, n, generator=g, dtype=dtype)
    w = torch.randn(n, n, generator=g, dtype=dtype) / n**0.5
    alpha = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=dtype)
    return [x.to(device) for x in (drive, h0, w, alpha)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("engine", FAST)
def test_engine_matches_reference(engine: str, activation: str, dtype: torch.dtype, device: str) -> None:
    for shape in SHAPES:
        inputs = problem(shape, dtype, device)
        got, want = run(engine, inputs, activation), run("reference", inputs, activation)
        for name, x, y in zip(("rates", "preact", "drive", "h0", "w_rec", "alpha"), got, want):
            assert_close(x, y, TOL[dtype], f"{engine}/{activation}/{shape}: {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", FAST)
def test_engine_matches_reference_for_stacked_networks(engine: str, device: str) -> None:
    """A leading network dimension: K networks with their own weights, alphas and states."""
    stacked = [torch.stack(parts) for parts in zip(*(problem((3, 8, 6), torch.float64, device, seed) for seed in range(4)))]
    got, want = run(engine, stacked, "retanh"), run("reference", stacked, "retanh")
    for name, x, y in zip(("rates", "preact", "drive", "h0", "w_rec", "alpha"), got, want):
        assert_close(x, y, TOL[torch.float64], f"{engine}/stacked: {name}")


@pytest.fixture
def tf32() -> Iterator[None]:
    """``train.matmul_precision=high``: TF32 matrix products on NVIDIA Ampere and newer."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", FAST)
def test_engine_with_tf32_matches_float64_reference(engine: str, device: str, tf32: None) -> None:
    for shape in [*SHAPES, (16, 50, 64)]:
        inputs = problem(shape, torch.float64, device)
        got, want = run(engine, [x.float() for x in inputs], "relu"), run("reference", inputs, "relu")
        for name, x, y in zip(("rates", "preact", "drive", "h0", "w_rec", "alpha"), got, want):
            assert_close(x.double(), y, 1e-2, f"{engine}/tf32/{shape}: {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", FAST)
def test_engine_without_preact(engine: str, device: str) -> None:
    """The common path: no preact requested, alpha fixed, h0 an expanded vector."""
    drive, h0, w, alpha = problem((5, 12, 9), torch.float64, device)
    results = []
    for name in (engine, "reference"):
        d, w_ = drive.clone().requires_grad_(), w.clone().requires_grad_()
        rates, preact = engine_run(name)(d, h0[0].expand(5, -1), w_, alpha, "relu")
        assert preact is None
        (rates.sin().sum()).backward()
        results.append([rates, d.grad, w_.grad])
    for x, y in zip(*results):
        assert_close(x, y, 1e-10, engine)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", list(ENGINES))
def test_engine_reads_either_layout_and_returns_time_major(engine: str, device: str) -> None:
    """A time-major drive (what the model passes) gives exactly what a batch-first one gives; the CPU
    engines' rates come back time-major, one contiguous block per step (what the readout reads)."""
    inputs = problem((5, 7, 9), torch.float64, device)
    batch_first = run(engine, inputs, "tanh")
    time_major_drive = time_major(time_major(inputs[0]).contiguous())
    assert not time_major_drive.is_contiguous()
    same = run(engine, [time_major_drive, *inputs[1:]], "tanh")
    for name, x, y in zip(("rates", "preact", "drive", "h0", "w_rec", "alpha"), same, batch_first):
        assert_close(x, y, 1e-12, f"{engine}/time-major drive: {name}")
    if engine in ("reference", "fused"):
        assert time_major(same[0]).is_contiguous() and time_major(same[1]).is_contiguous()


def config(activation: str) -> dict:
    """Two sparse E/I areas with Dale's law, learnable tau and h0, odd sizes."""
    return {
        "areas": {"A": {"size": 13, "tau": 60.0}, "B": {"size": 6, "exc_frac": 0.5}},
        "input_size": 3, "output_size": 2, "dale": True, "activation": activation,
        "density": {"within": 0.5, "between": 0.3}, "learn_tau": True, "learn_h0": True,
        "init": {"spectral_radius": 1.2}, "seed": 3,
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("engine", FAST)
def test_model_gradients_match(engine: str, activation: str, dtype: torch.dtype, device: str) -> None:
    x = torch.randn(4, 25, 3, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
    grads = []
    for name in (engine, "reference"):
        model = CTRNN(config(activation), engine=name).to(device=device, dtype=dtype)
        with torch.no_grad():
            model.h0.uniform_(-0.5, 0.5, generator=torch.Generator(device).manual_seed(2))
        out, act = model(x, noise=False, return_preact=True)
        (out.square().mean() + act.rates.mean() + 0.01 * act.preact.square().mean()).backward()
        grads.append({"out": out, "rates": act.rates, "preact": act.preact} | {k: p.grad for k, p in model.named_parameters()})
    got, want = grads
    assert set(got) == set(want) and all(v is not None for v in want.values())
    for key in want:
        assert_close(got[key], want[key], TOL[dtype], f"{engine}/{activation}: {key}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_fused_gradcheck(activation: str, device: str) -> None:
    inputs = [x.requires_grad_() for x in problem((2, 4, 3), torch.float64, device, seed=5)]

    def f(*xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rates, preact = engine_run("fused")(*xs, activation, True)
        assert preact is not None
        return rates, preact

    assert torch.autograd.gradcheck(f, inputs)
