"""nn4n-train keeps freed CPU buffers for the next step instead of faulting fresh pages in."""
from __future__ import annotations

import json
import math
import platform
import subprocess
import sys

import pytest

STEPS = """
import json, resource, sys, tempfile
from pathlib import Path
import torch
if sys.argv[1] != "untouched":
    from hydra import compose, initialize_config_module
    from nn4n.config import register_schema
    from nn4n.experiment import resolve
    from nn4n.train import Trainer
    register_schema()
    with initialize_config_module("nn4n_configs", version_base="1.3"):
        cfg = resolve(compose("config", ["debug=fast", f"train.retain_freed_memory={sys.argv[1]}"]))
    Trainer(cfg, Path(tempfile.mkdtemp()))
shape = json.loads(sys.argv[2])
faults = []
for _ in range(6):  # what a step does: several (B, T, N) buffers alive at once, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [torch.ones(*shape) for _ in range(4)]
    del buffers
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def later_faults(mode: str, shape: tuple[int, ...]) -> int:
    """Page faults of steps 3 to 6 of six that each allocate and free 4 float32 buffers of ``shape``."""
    cmd = [sys.executable, "-c", STEPS, mode, json.dumps(shape)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return sum(json.loads(out.splitlines()[-1])[2:])


# Without the setting glibc maps a 52 MB buffer (N=256, batch 256, T=200) afresh in every step: it lies above
# the 32 MiB ceiling of glibc's dynamic mmap threshold. A 6.5 MB one is mapped afresh only until that threshold
# adapts, which depends on what the process freed before, so only the setting's own effect is asserted for it.
@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_without_the_setting_each_step_faults_large_buffers_in_afresh() -> None:
    shape = (256, 200, 256)
    page_per_buffer = math.prod(shape) * 4 // 4096
    assert later_faults("untouched", shape) >= page_per_buffer
    assert later_faults("false", shape) >= page_per_buffer


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("shape", [(64, 100, 256), (256, 200, 256)])
def test_trainer_makes_each_step_reuse_the_last_steps_pages(shape: tuple[int, ...]) -> None:
    assert later_faults("true", shape) < 50
