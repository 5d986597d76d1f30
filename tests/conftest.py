"""The triton engine runs on CUDA; without a GPU, its tests run it through Triton's interpreter."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton is imported


@pytest.fixture(autouse=True)
def _triton_runs_where_it_can(request: pytest.FixtureRequest) -> None:
    params = request.node.callspec.params if hasattr(request.node, "callspec") else {}
    on_cpu = params.get("device", "cpu") == "cpu"
    if params.get("engine") == "triton" and on_cpu and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the triton engine runs on CUDA tensors (on a CPU only through TRITON_INTERPRET=1)")
