"""Every shipped config composes, validates and builds a network and a batch of its task."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

import nn4n_configs
from nn4n import CTRNN
from nn4n.config import Config, TaskConfig, register_schema
from nn4n.experiment import resolve
from nn4n.tasks import TaskKind

CONFIGS = Path(nn4n_configs.__file__).parent
register_schema()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_config(overrides: list[str]) -> Config:
    with initialize_config_module("nn4n_configs", version_base="1.3"):
        return resolve(compose("config", overrides))


@pytest.mark.parametrize("task", options("task"))
def test_every_task_preset(task: str) -> None:
    cfg = compose_config([f"task={task}", "arch=two_area"])
    data = cfg.task.sampler(4, 0)
    batch = data.batch(0)
    assert cfg.model.dt == cfg.task.dt and cfg.model.input_size == batch.inputs.shape[-1] == data.spec.n_inputs
    outputs, _ = CTRNN(cfg.model)(batch.inputs)
    assert outputs.shape[-1] == data.spec.n_outputs
    if data.spec.kind is not TaskKind.REGRESSION:
        assert (batch.window > 0).any(1).all(), f"{task}: decision period {cfg.task.decision_period!r} never occurs"
    else:
        assert data.spec.decision_periods == ()
    silent = (cfg.task.sampler(64, 0, balanced=True).batch(0).inputs.abs().amax((0, 1)) == 0).nonzero().flatten().tolist()
    assert not silent, f"{task}: input channels {silent} are zero in every trial (e.g. a cue shorter than dt)"


def test_a_task_by_id_keeps_its_own_timing() -> None:
    """The default task preset sets nothing a preset's window could leak into: ``task.name=X`` is X as shipped."""
    by_id, preset = compose_config(["task.name=GoNogo-v0"]).task, compose_config(["task=perceptual_dm"]).task
    assert (by_id.timing, by_id.params) == ({}, {}) and compose_config([]).task.name == preset.name
    assert preset.timing == {"decision": 300}


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("arch", options("arch"))
def test_every_model_and_arch(model: str, arch: str) -> None:
    cfg = compose_config([f"model={model}", f"arch={arch}"])
    net = CTRNN(cfg.model)
    assert list(net.structure.area_names) == list(cfg.model.areas)
    assert (net.structure.sign != 0).all() == (model == "ei")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment(experiment: str) -> None:
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.name == experiment and len(cfg.model.areas) > 1


def test_an_area_added_from_the_command_line() -> None:
    cfg = compose_config(["++model.areas={V1:{size:16,tau:50}}", "+model.projections.V1.hidden=0.2", "model.readout_areas=[V1]"])
    net = CTRNN(cfg.model)
    assert list(net.structure.area_names) == ["hidden", "V1"] and net.structure.indices("V1").size == 16
    assert (net.tau[net.structure.indices("V1")] == 50).all() and net.structure.readout_mask[:, :128].sum() == 0
    st = net.structure
    v1_from = st.rec_mask[st.indices("V1")]  # V1 <- hidden: long-range synapses come from E neurons only
    assert v1_from[:, st.indices("hidden", "E")].mean() == pytest.approx(0.2, abs=0.03)
    assert not v1_from[:, st.indices("hidden", "I")].any()


@pytest.mark.parametrize("logging", options("logging"))
def test_logging_presets(logging: str) -> None:
    assert compose_config([f"logging={logging}"]).logging.scalars_every > 0


def test_training_presets_change_only_what_they_name() -> None:
    default = compose_config([]).train
    long, continuous = compose_config(["train=long"]).train, compose_config(["train=continuous"]).train
    assert (long.lr, long.steps, long.schedule, long.recurrent_lr_scale) == (0.01, 3000, "cosine", 1.0)
    assert (continuous.lr, continuous.steps, continuous.schedule, continuous.recurrent_lr_scale) == (0.01, 6000, "none", 2.0)
    assert long.batch_size == continuous.batch_size == default.batch_size  # everything else from train/default


@pytest.mark.parametrize("preset", options("task"))
def test_task_presets_hold_only_what_differs_from_the_schema(preset: str) -> None:
    values = yaml.safe_load((CONFIGS / "task" / f"{preset}.yaml").read_text())
    defaults = dataclasses.asdict(TaskConfig())
    assert "name" in values and not {k: v for k, v in values.items() if k != "name" and defaults[k] == v}
