"""The layout docs/architecture.md declares: every module in its layer, imports only from lower layers."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nn4n"


def declared_layers() -> dict[str, int]:
    """``module -> layer`` from the architecture page's table (``| 3 | `linear` | ... |``)."""
    rows = re.findall(r"^\| (\d+) \| `([\w.]+)` \|", (ROOT / "docs" / "architecture.md").read_text(), re.M)
    return {module: int(layer) for layer, module in rows}


def module_name(path: Path) -> str:
    """``nn4n/recurrence/step.py`` -> ``recurrence.step``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(module: str, path: Path) -> set[str]:
    """The nn4n modules ``module`` imports anywhere in its file (functions and type-checking blocks too)."""
    package = module.split(".") if path.name == "__init__.py" and module != "__init__" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                name = ".".join([*base, alias.name])
                found.add(name if name in MODULES else ".".join(base))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found |= {n.removeprefix("nn4n.") for n in names if n and n.startswith("nn4n.")}
    return {name or "__init__" for name in found} - {module}


def test_every_module_is_in_one_layer() -> None:
    assert sorted(declared_layers()) == sorted(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_from_lower_layers(module: str) -> None:
    layers = declared_layers()
    upward = {name: layers[name] for name in imported(module, MODULES[module]) if layers[name] >= layers[module]}
    assert not upward, f"{module} (layer {layers[module]}) imports {upward}"


def test_the_import_check_sees_relative_and_nested_imports() -> None:
    assert imported("analysis.runs", MODULES["analysis.runs"]) >= {"checkpoint", "experiment", "rundir"}
    assert imported("model", MODULES["model"]) >= {"recurrence", "recurrence.step", "linear", "structure"}
    assert imported("analysis", MODULES["analysis"]) == {"analysis.runs"}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def test_notebook_entry_points_do_not_import_the_trainer(tmp_path: Path) -> None:
    run = run_python("import sys, nn4n.analysis; print(sorted(m for m in sys.modules if m in ('nn4n.train', 'nn4n.cli')))", tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr


def test_config_checks_need_no_torch(tmp_path: Path) -> None:
    code = ("import sys; from nn4n.config import Config, TaskConfig, TrainConfig; from nn4n.structure import NetworkConfig\n"
            "TrainConfig(lr=0.1); NetworkConfig(areas={'A': {'size': 4}}); print('torch' in sys.modules)")
    run = run_python(code, tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr


def test_a_checkout_named_nn4n_does_not_shadow_the_package(tmp_path: Path) -> None:
    """From the folder holding a checkout named ``nn4n`` (a script saved beside it, a SLURM job submitted
    there), ``import nn4n`` is the package, not the checkout as a namespace package."""
    (tmp_path / "nn4n").symlink_to(ROOT, target_is_directory=True)
    (tmp_path / "script.py").write_text("from nn4n import CTRNN\nfrom nn4n.tasks import TaskSpec\nimport nn4n\nprint(nn4n.__file__)\n")
    run = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()).resolve() == PACKAGE / "__init__.py"
