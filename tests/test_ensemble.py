"""Many networks at once: the ensemble equals its networks run alone, and training keeps them apart."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nn4n import CTRNN
from nn4n.analysis import load_run
from nn4n.checkpoint import load_checkpoint, save_checkpoint
from nn4n.config import register_schema
from nn4n.errors import ConfigError, TrainingError
from nn4n.recurrence import installed_engines
from nn4n.ensemble import Ensemble, network_seed
from nn4n.experiment import resolve
from nn4n.machine import cores as machine_cores
from nn4n.train import Trainer
from helpers import hparams_session

CONFIG = {
    "areas": {"A": {"size": 13, "tau": 60.0}, "B": {"size": 6, "exc_frac": 0.5}},
    "input_size": 3, "output_size": 2, "dale": True, "activation": "retanh",
    "density": {"within": 0.5, "between": 0.3}, "learn_tau": True, "learn_h0": True,
    "noise": {"rec": 0.1}, "seed": 7,
}


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("engine", installed_engines())
def test_ensemble_equals_its_networks_run_alone(engine: str, device: str) -> None:
    ensemble = Ensemble(CONFIG, 3, engine).to(device)
    inputs = torch.randn(3, 4, 10, 3, generator=torch.Generator().manual_seed(0)).to(device)
    outputs, activities = ensemble(inputs, noise=False, return_preact=True)
    weights = torch.linspace(-1, 1, outputs.numel(), device=device).view_as(outputs)
    (outputs * weights).sum().backward()
    for k, net in enumerate(ensemble.networks):
        alone = CTRNN(net.config, engine).to(device)
        alone.load_state_dict(net.state_dict())
        out, act = alone(inputs[k], noise=False, return_preact=True)
        (out * weights[k]).sum().backward()
        torch.testing.assert_close(out, outputs[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(act.preact, activities[k].preact, rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(net.named_parameters(), alone.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=f"network {k}: {name}")


def test_each_network_gets_its_own_noise_at_its_own_scale() -> None:
    """One step from rest on zero input: v_1 - (noiseless v_1) = sqrt(2a) (sigma_rec xi + sigma_in W_in xi_in)."""
    sigma_in = 0.3
    ensemble = Ensemble({**CONFIG, "noise": {"rec": 0.2, "input": sigma_in}}, 2)
    inputs = torch.zeros(2, 8000, 1, 3)
    with torch.no_grad():
        for k, net in enumerate(ensemble.networks):  # each network its own time constants
            net.tau_raw.add_(torch.linspace(-1, 1, len(net.tau_raw)) * (k + 1) / 2)
        clean = ensemble(inputs, noise=False, return_preact=True)[1]
        noisy = ensemble(inputs, noise=True, return_preact=True)[1]
        xi = [(n.preact - c.preact)[:, 0] for n, c in zip(noisy, clean)]
        for k, net in enumerate(ensemble.networks):
            want = torch.sqrt(2 * net.alpha * (net.noise_std**2 + sigma_in**2 * (net.w_in**2).sum(1)))
            torch.testing.assert_close(xi[k].std(0), want, rtol=0.06, atol=0, msg=f"network {k}")
    corr = (xi[0] / xi[0].std(0) * xi[1] / xi[1].std(0)).mean(0)
    assert corr.abs().max() < 0.06  # independent draws


def test_networks_have_their_own_seeds_masks_and_weights() -> None:
    ensemble = Ensemble(CONFIG, 4)
    seeds = [net.config.seed for net in ensemble.networks]
    assert seeds[0] == 7 and len(set(seeds)) == 4 and seeds == [network_seed(7, k) for k in range(4)]
    masks = [net.structure.rec_mask for net in ensemble.networks]
    assert not np.array_equal(masks[0], masks[1])
    assert all(int(m.sum()) == int(masks[0].sum()) for m in masks)  # same architecture, own draw
    again = Ensemble(CONFIG, 4)
    for a, b in zip(ensemble.networks, again.networks):
        assert torch.equal(a.w_rec, b.w_rec)
    with pytest.raises(ValueError, match="leading dimension 2"):
        ensemble(torch.zeros(2, 1, 5, 3))
    with pytest.raises(ValueError, match=r"^inputs: must be \(networks, batch, time, features\) with 3 features"):
        ensemble(torch.zeros(4, 5, 3))  # one network's shape


@pytest.mark.parametrize("n_networks", [0, 1.5, True, "2"])
def test_number_of_networks_is_checked(n_networks: object) -> None:
    with pytest.raises(ValueError, match=rf"^n_networks: must be an integer >= 1, got {n_networks!r}$"):
        Ensemble(CONFIG, n_networks)  # type: ignore[arg-type]


def test_batch_splits_into_one_part_per_network() -> None:
    batch = resolve_config([]).task.sampler(6, 0).batch(0)
    parts = batch.split(3)
    assert [len(p.lengths) for p in parts] == [2, 2, 2]
    assert torch.equal(torch.cat([p.inputs for p in parts]), batch.inputs)
    assert np.array_equal(np.concatenate([p.conditions["ground_truth"] for p in parts]), batch.conditions["ground_truth"])
    with pytest.raises(ValueError, match="6 trials into 4"):
        batch.split(4)


def resolve_config(overrides: list[str]):
    register_schema()
    with initialize_config_module("nn4n_configs", version_base="1.3"):
        return resolve(compose("config", ["debug=fast", *overrides]))


def test_one_network_never_feels_another(tmp_path: Path) -> None:
    """Network 0 of a two-network run takes exactly the step it takes alone: own gradient clipping
    (SGD, so a shared clip would shrink its step), own trials, own noise."""
    overrides = ["train.optimizer=sgd", "train.grad_clip=0.01", "train.lr=0.5", "train.warmup=0"]
    nets = []
    for n_networks in (1, 2):
        trainer = Trainer(resolve_config([*overrides, f"train.n_networks={n_networks}"]), tmp_path / str(n_networks))
        before = trainer.networks[0].w_rec.detach().clone()
        torch.manual_seed(0)
        trainer.train_step(1, trainer.train_data.batch(0).to(trainer.device))
        nets.append((before, trainer.networks))
    (before_1, alone), (before_2, together) = nets
    assert torch.equal(before_1, before_2)
    moved = (alone[0].w_rec - before_1).abs().max().item()
    assert moved > 1e-4
    torch.testing.assert_close(together[0].w_rec, alone[0].w_rec, rtol=0, atol=moved * 1e-4)
    assert not torch.allclose(together[1].w_rec, alone[0].w_rec)


def test_non_finite_step_is_skipped_on_device_then_reported(tmp_path: Path) -> None:
    """No host sync per step: a non-finite step leaves every weight as it was, and the next step,
    checkpoint or evaluation stops the run naming the step and the network, before writing anything."""
    trainer = Trainer(resolve_config(["train.n_networks=2"]), tmp_path)
    before = [p.detach().clone() for p in trainer.ensemble.parameters()]
    bad = trainer.train_data.batch(0)
    bad.inputs[bad.inputs.shape[0] // 2:] = float("nan")  # network 1's trials
    trainer.train_step(1, bad.to(trainer.device))
    assert all(torch.equal(p, q) for p, q in zip(trainer.ensemble.parameters(), before, strict=True))
    with pytest.raises(TrainingError, match=r"^step 1: network 1: loss nan, gradient norm nan is not finite"):
        trainer._save(1)
    assert not trainer.last_path.exists()
    trainer.train_step(1, bad.to(trainer.device))
    with pytest.raises(TrainingError, match=r"^step 1: network 1: "):
        trainer.train_step(2, trainer.train_data.batch(1).to(trainer.device))
    good = trainer.train_data.batch(2).to(trainer.device)
    trainer.train_step(3, good)
    trainer.train_step(4, good)
    trainer._save(4)
    assert trainer.last_path.exists() and not any(torch.equal(p, q) for p, q in zip(trainer.ensemble.parameters(), before))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_step_never_waits_for_the_gpu(tmp_path: Path) -> None:
    """Between logged steps the host only queues work: no synchronizing CUDA call in a step."""
    trainer = Trainer(resolve_config(["train.device=cuda", "train.n_networks=2"]), tmp_path)
    batch = trainer.train_data.batch(0).to(trainer.device)
    trainer.train_step(1, batch)  # warm-up: optimizer state, allocator
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in (2, 3):
            trainer.train_step(step, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer._save(3)


def test_checkpoint_of_an_unfused_optimizer_resumes(tmp_path: Path) -> None:
    trainer = Trainer(resolve_config([]), tmp_path)
    trainer.train_step(1, trainer.train_data.batch(0).to(trainer.device))
    trainer._save(1)
    state = load_checkpoint(trainer.last_path)
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = None
    save_checkpoint(trainer.last_path, {k: v for k, v in state.items() if k != "format"})
    resumed = Trainer(resolve_config([]), tmp_path)
    resumed.train_step(2, resumed.train_data.batch(1).to(resumed.device))
    assert resumed.start == 1 and all(group["fused"] for group in resumed.optimizer.param_groups)


def test_trainer_sets_threads_and_matmul_precision(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = torch.get_num_threads(), torch.get_float32_matmul_precision()
    cores = machine_cores()
    try:
        trainer = Trainer(resolve_config(["train.threads=2", "train.matmul_precision=high"]), tmp_path)
        assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (2, "high")
        assert ("more than the" in caplog.text) == (cores < 2)
        for monitor in trainer.monitors:
            monitor.close()
        caplog.clear()
        trainer = Trainer(resolve_config([f"train.threads={cores + 1}", f"train.data_workers={cores + 1}"]), tmp_path / "more")
        for key in ("train.threads", "train.data_workers"):
            assert f"{key}={cores + 1} is more than the {cores} core(s) this process may use" in caplog.text
        for monitor in trainer.monitors:
            monitor.close()
    finally:
        torch.set_num_threads(before[0])
        torch.set_float32_matmul_precision(before[1])



def test_triton_engine_needs_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="train.engine: triton runs on CUDA, not on cpu"):
        Trainer(resolve_config(["train.engine=triton", "train.device=cpu"]), tmp_path)

@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("cwd")
    run = subprocess.run([sys.executable, "-m", "nn4n", "debug=fast", "train.n_networks=3", "hydra.run.dir=run"],
                         cwd=cwd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    return cwd / "run"


@pytest.mark.slow
def test_nn4n_train_writes_each_network(ensemble_run: Path) -> None:
    summary = json.loads((ensemble_run / "metrics.json").read_text())
    assert summary["n_networks"] == 3 and len(summary["networks"]) == 3
    per_network = [json.loads((ensemble_run / "networks" / str(k) / "metrics.json").read_text()) for k in range(3)]
    assert per_network == summary["networks"]
    losses = [m["loss"] for m in per_network]
    assert summary["loss"] == pytest.approx(np.mean(losses)) and summary["loss_sd"] == pytest.approx(np.std(losses, ddof=1))
    assert len(set(losses)) == 3
    for k, metrics in enumerate(per_network):
        net_dir = ensemble_run / "networks" / str(k)
        assert metrics["seed"] == network_seed(0, k)
        acc = EventAccumulator(str(net_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
        assert [e.step for e in acc.Scalars("loss/task")] == [5, 10, 15, 20]
        assert acc.Scalars("eval/loss")[-1].value == pytest.approx(metrics["loss"])
        params, hparam_metrics = hparams_session(net_dir / "tensorboard")
        assert hparam_metrics["eval/loss"] == [(20, pytest.approx(metrics["loss"]))] and params["network_seed"] == metrics["seed"]
        assert CTRNN.load(net_dir / "checkpoints" / "best.pt").config.seed == metrics["seed"]
        last, cfg = load_run(ensemble_run, "last", network=k)
        assert cfg.model.seed == metrics["seed"]
        arrays = np.load(net_dir / "activity.npz")
        np.testing.assert_array_equal(arrays["w_rec"], last.w_rec.detach().numpy())
    assert not (ensemble_run / "tensorboard").exists() and not (ensemble_run / "activity.npz").exists()
    with pytest.raises(FileNotFoundError, match=r"networks/2: one network's results; its run is .*: pass that directory and network=2$"):
        load_run(ensemble_run / "networks" / "2")


@pytest.mark.slow
def test_nn4n_train_resumes_every_network(ensemble_run: Path) -> None:
    before = json.loads((ensemble_run / "metrics.json").read_text())
    (ensemble_run / "metrics.json").unlink()  # as if killed after the last checkpoint
    run = subprocess.run([sys.executable, "-m", "nn4n", "debug=fast", "train.n_networks=3", f"hydra.run.dir={ensemble_run}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "resuming from step 20" in (ensemble_run / "nn4n.log").read_text()
    after = json.loads((ensemble_run / "metrics.json").read_text())
    assert [m["loss"] for m in after["networks"]] == [m["loss"] for m in before["networks"]]


def test_learning_rate_warms_up_then_follows_its_schedule() -> None:
    from nn4n.train import lr_factor

    assert [lr_factor(s, "none", 1000, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, "none", 1000, 0) == 1.0
    assert lr_factor(500, "cosine", 1000, 100) == pytest.approx(0.5) and lr_factor(1000, "cosine", 1000, 100) == pytest.approx(0.0)
    assert lr_factor(50, "cosine", 1000, 100) == pytest.approx(0.51 * 0.5 * (1 + np.cos(np.pi * 0.05)))
    assert [lr_factor(s, "step", 900, 0) for s in (0, 299, 300, 600)] == pytest.approx([1, 1, 0.1, 0.01])


@pytest.mark.parametrize("overrides, expected", [([], 0.01 / 128), (["train.optimizer=sgd"], 0.01),
                                                 (["train.recurrent_lr_scale=2"], 0.02 / 128)])
def test_recurrent_weights_learn_at_their_own_rate(tmp_path: Path, overrides: list[str], expected: float) -> None:
    """Under Adam the recurrent weights learn at lr / N (N = 128 neurons), all else at lr; the group holds every
    network's W_rec and nothing else, and the warmup scales both groups alike."""
    trainer = Trainer(resolve_config(["train.lr=0.01", "train.n_networks=2", *overrides]), tmp_path)
    others, recurrent = trainer.optimizer.param_groups
    assert recurrent["initial_lr"] == pytest.approx(expected) and others["initial_lr"] == 0.01
    rec = {id(net.parametrizations.w_rec.original) for net in trainer.networks}
    assert {id(p) for p in recurrent["params"]} == rec and not rec & {id(p) for p in others["params"]}
    assert recurrent["lr"] / recurrent["initial_lr"] == pytest.approx(others["lr"] / others["initial_lr"])
