"""The triton engine's kernels compile for A100 and H100 GPUs with real code generation (the interpreter
checks values, not this), and keep their state in registers at the launch configuration the engine uses."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", minversion="3.6")  # compile API checked with 3.6 and 3.9
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "triton_compile_check.py"


@pytest.mark.skipif(not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists(),
                    reason="this Triton build has no NVIDIA tool chain")
def test_kernels_compile_without_spills() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--arch", "80", "90", "--n", "100", "256"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("sm_")]
    # 2 architectures x 2 precisions x 2 sizes x 3 kernels (forward, backward, perturbed forward), each row:
    # registers and spilled bytes per thread
    assert len(rows) == 24, done.stdout
    assert {(row[0], row[1], row[2], row[4]) for row in rows} == {
        (f"sm_{arch}", precision, n, kernel) for arch in (80, 90) for precision in ("fp32", "tf32")
        for n in ("100", "256") for kernel in ("forward", "backward", "perturbed")}
    assert all(0 < int(row[5]) <= 255 and row[6] == "0" for row in rows), done.stdout
    assert done.stdout.rstrip().endswith("no spills")
