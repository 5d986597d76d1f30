"""The README's examples run as written: its single-run commands, its Python without Hydra and on a run."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import OmegaConf

from nn4n.config import register_schema
from nn4n.experiment import resolve

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = README + "".join(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))
register_schema()


def single_runs() -> list[str]:
    """``nn4n-train`` lines of the README and docs/, less sweeps, ``--cfg``, ``resume=`` and other config
    folders (tested in test_sweep, test_cli, test_robustness)."""
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", DOCS, re.S))
    runs = {line.split("#")[0].strip() for line in blocks.splitlines() if line.startswith("nn4n-train ")}
    skip = (" -m ", "--cfg", "--config-dir", "task.dirs", "resume=", "...", "<")
    return sorted(run for run in runs if not any(flag in run for flag in skip))


def test_readme_has_examples() -> None:
    assert len(single_runs()) >= 10


@pytest.mark.parametrize("run", single_runs())
def test_command_composes_and_takes_effect(run: str) -> None:
    """Each command validates, and every ``key=value`` in it reaches the composed config."""
    overrides = [arg for arg in shlex.split(run)[1:] if not arg.startswith("hydra.")]
    with initialize_config_module("nn4n_configs", version_base="1.3"):
        composed = compose("config", overrides)
    resolve(composed)
    for override in OverridesParser.create().parse_overrides(overrides):
        if "." in override.key_or_group:  # a value, not a config group choice
            assert contains(OmegaConf.to_container(composed, resolve=False), override), override.input_line


def contains(composed: dict, override: Override) -> bool:
    """The composed config holds the override's value (every entry of a dict merged in with ``++``)."""
    node: Any = composed
    for part in override.key_or_group.split("."):
        node = node[part]
    value = override.value()
    if isinstance(value, dict) and override.is_force_add():
        return all(node[k] | v == node[k] if isinstance(v, dict) else node[k] == v for k, v in value.items())
    return node == value


def test_python_without_hydra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The section's code block, run as is; it saves and reloads a network."""
    section = README.split("## Using the network in Python, without Hydra", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    assert namespace["net"].structure.area_names == ["V1", "PFC"]
    assert namespace["activity"].area("PFC").shape == (8, 100, 64) and (tmp_path / "net.pt").exists()


@pytest.mark.slow
def test_loading_a_run_in_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "Loading a run's results" block, run on a real two-area run (its area names put in)."""
    from nn4n.train import train

    with initialize_config_module(config_module="nn4n_configs", version_base="1.3"):
        composed = compose("config", ["debug=fast", "arch=two_area"])
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(composed, run / ".hydra" / "config.yaml")  # what Hydra writes for nn4n-train
    train(resolve(composed), run)
    block = re.search(r"\*\*Loading a run's results\*\*\n\n```python\n(.*?)```", README, re.S)
    assert block is not None
    code = block.group(1).replace("runs/...", str(run)).replace('"PFC"', '"motor"')
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    act = namespace["act"]
    n_motor_e = ((act["area"] == "motor") & (act["sign"] == 1)).sum()
    assert namespace["rates_pfc_e"].shape == (*act["rates"].shape[:2], n_motor_e) and 0 < n_motor_e < (act["area"] == "motor").sum()
    assert namespace["record"]["rates"].shape[0] == 512 and set(namespace["probe"]["cond_coh"]) == {0.0}
    assert (namespace["probe"]["epoch_delay"][:, 1] - namespace["probe"]["epoch_delay"][:, 0] == 100).all()
    assert {"activity", "pca", "psychometric"} <= set(namespace["figs"])


def analysis_runs() -> list[str]:
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", DOCS, re.S)).replace("\\\n", " ")  # continued lines as one
    return sorted({line.split("#")[0].strip() for line in blocks.splitlines() if line.startswith("nn4n-analyze ")})


@pytest.mark.parametrize("run", analysis_runs())
def test_analysis_command_composes_and_validates(run: str) -> None:
    """Each ``nn4n-analyze`` command of the README and docs/ names real keys and valid values."""
    from nn4n.analyze import _settings

    overrides = [arg for arg in shlex.split(run)[1:] if arg != "-m"]
    # a sweep's first value (a value with brackets or braces is one list or dict, not a sweep)
    overrides = [o.split(",")[0] if "-m" in run and not re.search(r"[\[{]", o) else o for o in overrides]
    with initialize_config_module("nn4n_configs", version_base="1.3"):
        composed = compose("analyze", overrides)
    _, settings = _settings(composed)
    assert settings.name == composed.analysis.name and len(analysis_runs()) >= 3
