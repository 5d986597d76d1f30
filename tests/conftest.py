"""One torch thread, as nn4n-train and nn4n-analyze default to; the triton engine runs on CUDA, so without a GPU
its tests run it through Triton's interpreter."""
import os

import pytest
import torch

from nn4n.recurrence import triton_runs_on  # finds triton without importing it

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton is imported


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Small networks in the test process: a second thread only spins against the first (and other jobs)."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _triton_runs_where_it_can(request: pytest.FixtureRequest) -> None:
    params = request.node.callspec.params if hasattr(request.node, "callspec") else {}
    if params.get("engine") == "triton" and not triton_runs_on(torch.device(params.get("device", "cpu"))):
        pytest.skip("the triton engine runs on CUDA tensors (on a CPU only through TRITON_INTERPRET=1)")
