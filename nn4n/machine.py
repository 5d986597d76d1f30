"""What this machine offers a run: devices, CPU cores and free memory, checked before anything is put there."""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("nn4n")


def available_device(name: str | torch.device, key: str) -> torch.device:
    """``name`` as a device (``auto``: CUDA where there is one, else the CPU); a one-line ValueError
    naming ``key`` when this machine lacks it (torch's own error comes later and says less)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{key}: {name!r} is not a device (cpu, cuda, cuda:N, mps or auto)") from None
    count = {"cuda": torch.cuda.device_count(), "mps": int(torch.backends.mps.is_available())}.get(device.type, 1)
    if (device.index or 0) >= count:
        what = f"{count} {device.type.upper()} device(s)" if count else f"{device.type.upper()} is not available"
        raise ValueError(f"{key}: {str(name)!r} requested but {what}; use auto or cpu")
    return device


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def warn_if_above_cores(key: str, count: int, consequence: str) -> None:
    """One log line when ``key`` asks for more threads or processes than this process has cores."""
    if count > (n := cores()):
        log.warning("%s=%d is more than the %d core(s) this process may use: %s", key, count, n, consequence)


def use_threads(key: str, count: int) -> None:
    """``count`` torch CPU threads for this process; a log line if ``key`` asks for more than its cores."""
    torch.set_num_threads(count)
    warn_if_above_cores(key, count, "the threads will wait on each other (see BENCHMARKS.md, Torch threads)")


def loader_workers(setting: str, device: torch.device) -> int:
    """Trial-generating processes for ``train.data_workers``: the number given, or for ``auto`` 1 on a CPU
    (the model step is slower than a batch; more would take the model's cores) and, on a GPU, one per
    free core up to 8 (a NeuroGym batch of 64 trials takes 10-30 ms of Python, a GPU step a few)."""
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 1
    return max(1, min(8, cores() - 1))


def free_memory(device: torch.device) -> int | None:
    """Bytes ``device`` can still give (the host's MemAvailable for the CPU); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


STEP_BYTES = 12  # a training step holds at least this per neuron x time step x trial (BENCHMARKS.md, Memory)
SYNAPSE_BYTES = 32  # per possible recurrent synapse and network: raw, effective and masked float32 weights,
# plasticity, gradient and two Adam moments
INIT_BYTES = 64  # per possible synapse, on the host, while one network is initialised (float64 draws, eigenvalues)


def check_memory(device: torch.device, n_networks: int, n_neurons: int, trials: int, n_steps: int) -> None:
    """A one-line ValueError if the networks (``model.areas``), or one training step with them
    (``train.batch_size``), cannot fit in ``device``'s free memory (and the host's, for initialisation)."""
    free, host = free_memory(device), free_memory(torch.device("cpu"))
    weights = SYNAPSE_BYTES * n_networks * n_neurons**2 + (INIT_BYTES * n_neurons**2 if device.type == "cpu" else 0)
    init = INIT_BYTES * n_neurons**2
    if (free is not None and weights > free) or (host is not None and init > host):
        have = min(f for f in (free, host) if f is not None)
        raise ValueError(f"model.areas: {n_networks} network(s) of {n_neurons} neurons need at least "
                         f"{max(weights, init) / 2**30:.1f} GiB for their weights and optimizer state; "
                         f"{device} has {have / 2**30:.1f} GiB free")
    step = STEP_BYTES * n_neurons * n_steps * trials
    if free is not None and weights + step > free:
        raise ValueError(f"train.batch_size: a step of {trials} trials x {n_steps} time steps x {n_neurons} neurons "
                         f"needs at least {(weights + step) / 2**30:.1f} GiB with the weights; {device} has "
                         f"{free / 2**30:.1f} GiB free")
