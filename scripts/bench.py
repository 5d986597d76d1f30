#!/usr/bin/env python
"""Time one training iteration (forward + backward + Adam step) of E/I rate networks.

Compares nn4n's engines with a naive per-step loop, ``torch.nn.RNN(relu)`` of the same size and,
when installed in a separate venv, nn4n 1.1.1 — all in one process, interleaved, best of several
rounds. Then (full run) the thread count study, peak memory against time and batch, and the
N=1024 / batch 256 / T=500 check. Prints Markdown tables.

Then K networks at once (``Ensemble``) against K one after another, a perturbed forward pass against the
control's, an ``nn4n-train`` iteration (real NeuroGym batches from the loader, logging) against the pure model step,
and an iteration on the 20 tasks of Yang et al. 2019 against one of them alone.

    python scripts/bench.py [--device cpu|cuda] [--threads K] [--quick] [--nn4n1 VENV]
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nn4n.allocator import retain_freed_memory
from nn4n.recurrence import installed_engines, triton_runs_on
from nn4n.ensemble import Ensemble
from nn4n.model import CTRNN
from nn4n.structure import NetworkConfig, Structure

ROOT = Path(__file__).resolve().parents[1]
N_IN, N_OUT, T_STEPS = 3, 3, 100
NN4N1 = "nn4n 1.1.1"
TF32 = " (TF32)"  # CUDA only: the same candidate with TF32 matrix products
Step = Callable[[], None]


def e_i_config(n: int) -> dict:
    """One fully connected E/I area (80% excitatory, Dale's law), dt/tau = 0.2."""
    return {"areas": {"net": {"size": n}}, "input_size": N_IN, "output_size": N_OUT, "dale": True}


def load_nn4n1(venv: Path) -> type | None:
    """``nn4n.model.CTRNN`` of nn4n 1.x from ``venv``'s site-packages, without shadowing ours."""
    sites = sorted(venv.glob("lib/python*/site-packages"))
    if not sites or not (sites[0] / "nn4n" / "model" / "ctrnn.py").exists():
        return None
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "nn4n"}
    sys.path.insert(0, str(sites[0]))
    try:
        return importlib.import_module("nn4n.model").CTRNN
    finally:
        sys.path.remove(str(sites[0]))
        for k in [k for k in sys.modules if k.split(".")[0] == "nn4n"]:
            del sys.modules[k]
        sys.modules.update(ours)


def naive_forward(m: CTRNN, u: torch.Tensor) -> torch.Tensor:
    """The textbook loop: input projection and ``(1-a) v + a (...)`` inside every step, then stack."""
    w_in, w_rec, a = m.w_in, m.w_rec, m.alpha
    v = u.new_zeros(u.shape[0], w_rec.shape[0])
    r, rates = F.relu(v), []
    for t in range(u.shape[1]):
        v = (1 - a) * v + a * (u[:, t] @ w_in.T + r @ w_rec.T + m.b_rec)
        r = F.relu(v)
        rates.append(r)
    return F.linear(torch.stack(rates, 1), m.w_out, m.b_out)


def build(name: str, n: int, batch: int, steps: int, device: torch.device, nn4n1: Path) -> Step:
    """One training iteration of candidate ``name`` on fixed random data (MSE loss, Adam)."""
    torch.manual_seed(0)
    x = torch.randn(batch, steps, N_IN, device=device)
    y = 0.1 * torch.randn(batch, steps, N_OUT, device=device)
    model: nn.Module
    if name in installed_engines() or name == "naive loop":
        model = CTRNN(e_i_config(n), engine=name if name in installed_engines() else "reference").to(device)
        forward = (lambda u: model(u)[0]) if name in installed_engines() else (lambda u: naive_forward(model, u))
    elif name == "torch.nn.RNN":
        model = nn.ModuleDict({"rnn": nn.RNN(N_IN, n, nonlinearity="relu", batch_first=True), "out": nn.Linear(n, N_OUT)})
        model.to(device)
        forward = lambda u: model["out"](model["rnn"](u)[0])  # noqa: E731
    elif name == NN4N1:
        cls = load_nn4n1(nn4n1)
        if cls is None:
            raise FileNotFoundError(f"nn4n 1.x not found in {nn4n1} (python -m venv {nn4n1} && {nn4n1}/bin/pip install --no-deps nn4n==1.1.1)")
        st = Structure(NetworkConfig.from_dict(e_i_config(n)))
        sign = st.sign.astype(np.float32)[:, None]  # 1.x masks are [pre, post]
        model = cls(
            dims=[N_IN, n, N_OUT], activation="relu", dt=20, tau=100, biases=[None, "zero", "zero"],
            ei_masks=[None, np.repeat(sign, n, 1), np.repeat(sign, N_OUT, 1)],
            sparsity_masks=[None, st.rec_mask.T.astype(np.float32), None],
        )
        model.to(device)  # 1.x's .to() returns None
        x, y = x.transpose(0, 1).contiguous(), y.transpose(0, 1).contiguous()  # 1.x is time-major
        forward = lambda u: model(u)[0]  # noqa: E731
    else:
        raise ValueError(name)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)  # as nn4n-train

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.mse_loss(forward(x), y).backward()
        opt.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_times(steps: dict[str, Step], device: torch.device, rounds: int, budget: float = 0.3) -> dict[str, float]:
    """Seconds per call of each step: rounds interleaved across candidates, best round kept."""
    reps = {}
    for name, step in steps.items():
        step()  # warm-up (allocations, Adam state)
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        reps[name] = max(1, int(budget / (time.perf_counter() - t0)))
    best = dict.fromkeys(steps, math.inf)
    for _ in range(rounds):
        for name, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                step()
            sync(device)
            best[name] = min(best[name], (time.perf_counter() - t0) / reps[name])
    return best


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    return 1024 * int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_child(name: str, n: int, batch: int, steps: int, device: str, nn4n1: str) -> None:
    """(Subprocess) peak memory of one iteration above the resting state (model and data built)."""
    dev = torch.device(device)
    step = build(name, n, batch, steps, dev, Path(nn4n1))
    sync(dev)
    if dev.type == "cuda":
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets the RSS high-water mark (VmHWM)
        base = _status("VmRSS")
    t0 = time.perf_counter()
    step()
    sync(dev)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _status("VmHWM")
    print(json.dumps({"peak": peak - base, "seconds": seconds}))


def measure_peak(name: str, n: int, batch: int, steps: int, args: argparse.Namespace) -> dict | None:
    """Run :func:`peak_child` in a fresh process (so other candidates' memory does not count)."""
    cmd = [sys.executable, __file__, "--peak", name, str(n), str(batch), str(steps), "--device", args.device,
           "--threads", str(torch.get_num_threads()), "--nn4n1", str(args.nn4n1)]
    # every allocation of 64 KiB or more gets its own mapping, given back when freed: RSS then
    # follows the live tensors instead of what glibc keeps cached (which made peaks vary 2-3x)
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        print(f"  peak memory of {name} N={n} B={batch} T={steps} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:,.0f}"


def with_precision(step: Step, tf32: bool) -> Step:
    """(CUDA) ``step`` with float32 matrix products in TF32 or IEEE fp32 (the default restored after), for
    our matmuls and cuDNN's RNN alike (cuDNN's RNN defaults to TF32: an unfair fp32 comparison)."""

    def allow_tf32(on: bool) -> None:  # the flags every torch version has
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on

    def run() -> None:
        allow_tf32(tf32)
        try:
            step()
        finally:
            allow_tf32(False)

    return run


def gpu_engines(device: torch.device) -> list[str]:
    """The engines timed only on a GPU (``triton`` when installed)."""
    return ["triton"] if device.type == "cuda" and triton_runs_on(device) else []


def speed_table(args: argparse.Namespace, device: torch.device) -> None:
    configs = [(64, 64), (256, 64), (256, 1024)]
    names = ["fused", "reference", "naive loop", "torch.nn.RNN", NN4N1, *gpu_engines(device)]
    if device.type == "cuda":
        names += [f"{name}{TF32}" for name in ("fused", *gpu_engines(device), "torch.nn.RNN")]
    print(f"\n### One training iteration, E/I network, T={T_STEPS} (best of {args.rounds} interleaved rounds, half as many at batch 1024)\n")
    print("| N | batch | implementation | ms / iteration | time / fused | peak MiB |")
    print("|---:|---:|---|---:|---:|---:|")
    for n, batch in configs:
        steps = {}
        for name in names:
            try:
                step = build(name.removesuffix(TF32), n, batch, T_STEPS, device, args.nn4n1)
                steps[name] = with_precision(step, name.endswith(TF32)) if device.type == "cuda" else step
            except Exception as err:  # e.g. nn4n 1.x not installed: skip the row, say why
                print(f"| {n} | {batch} | {name} | skipped: {err} | | |")
        times = best_times(steps, device, args.rounds if batch <= 64 else max(2, args.rounds // 2))
        for name, sec in times.items():
            peak = measure_peak(name.removesuffix(TF32), n, batch, T_STEPS, args) if args.memory else None
            print(f"| {n} | {batch} | {name} | {sec * 1e3:,.1f} | {sec / times['fused']:.2f} | {mib(peak and peak['peak'])} |")


def ensemble_step(n: int, n_networks: int, batch: int, device: torch.device, engine: str = "fused") -> Step:
    """One training iteration of ``n_networks`` networks at once, each on its own batch."""
    torch.manual_seed(0)
    x = torch.randn(n_networks, batch, T_STEPS, N_IN, device=device)
    y = 0.1 * torch.randn(n_networks, batch, T_STEPS, N_OUT, device=device)
    model = Ensemble(e_i_config(n), n_networks, engine=engine).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x)[0], y, reduction="none").mean((1, 2, 3)).sum().backward()
        opt.step()

    return step


def networks_table(args: argparse.Namespace, device: torch.device) -> None:
    sizes = [(64, 8), (256, 8)] + ([(256, 32)] if device.type == "cuda" else [])
    engines = ["fused", *gpu_engines(device)]
    print(f"\n### K networks at once (batch 64 each, T={T_STEPS}; best of {args.rounds} interleaved rounds)\n")
    print("| N | K | engine | one network, ms | K at once, ms | K at once / one | throughput vs K one after another |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for (n, k), engine in itertools.product(sizes, engines):
        times = best_times({"one": ensemble_step(n, 1, 64, device, engine), "all": ensemble_step(n, k, 64, device, engine)},
                           device, args.rounds)
        print(f"| {n} | {k} | {engine} | {times['one'] * 1e3:,.1f} | {times['all'] * 1e3:,.1f} "
              f"| {times['all'] / times['one']:.2f} | {k * times['one'] / times['all']:.2f}x |")


def perturbation_table(args: argparse.Namespace, device: torch.device, n: int = 256, batch: int = 256) -> None:
    """A perturbed forward pass (no gradients, as nn4n-analyze runs it) against the control's, per engine: the
    run with its ``Effect`` made once, and making the ``Effect`` (which ``model(x, perturb=[...])`` does per call)."""
    from nn4n.perturb import effect

    print(f"\n### Perturbed runs (N={n}, batch {batch}, T={T_STEPS}, forward without gradients; "
          f"best of {args.rounds} interleaved rounds)\n")
    print("| engine | control, ms | silence half the neurons for half the trial, ms (ratio) "
          "| + stimulate a quarter + lesion 10%, ms (ratio) | making the silencing, ms |")
    print("|---|---:|---:|---:|---:|")
    x = torch.randn(batch, T_STEPS, N_IN, device=device)
    silence = [{"kind": "silence", "fraction": 0.5, "steps": [T_STEPS // 2, T_STEPS]}]
    more = [*silence, {"kind": "stimulate", "fraction": 0.25, "seed": 1, "current": 0.5},
            {"kind": "lesion", "fraction": 0.1, "seed": 2}]
    for engine in ["fused", *gpu_engines(device)]:
        model = CTRNN(e_i_config(n), engine=engine).to(device).eval()
        made = {name: effect(p, model.structure, batch, T_STEPS, like=x) for name, p in (("silence", silence), ("more", more))}

        def run(perturb: object) -> Step:
            def step() -> None:
                with torch.no_grad():
                    model(x, perturb=perturb)
            return step

        times = best_times({"control": run(None), "silence": run(made["silence"]), "more": run(made["more"]),
                            "make": lambda: effect(silence, model.structure, batch, T_STEPS, like=x)}, device, args.rounds)
        control = times["control"]
        print(f"| {engine} | {control * 1e3:,.1f} | {times['silence'] * 1e3:,.1f} ({times['silence'] / control:.2f}) "
              f"| {times['more'] * 1e3:,.1f} ({times['more'] / control:.2f}) | {times['make'] * 1e3:,.1f} |")


def end_to_end_table(args: argparse.Namespace, device: torch.device, n_steps: int = 100) -> None:
    """The training loop's own iteration (loader batches, logging) against the model step on one fixed batch,
    and what generating one batch of trials costs (the work of one loader worker per step)."""
    from hydra import compose, initialize_config_module

    from nn4n.config import register_schema
    from nn4n.data import batch_stream
    from nn4n.experiment import resolve
    from nn4n.machine import loader_workers
    from nn4n.train import Trainer

    register_schema()
    print(f"\n### nn4n-train iteration vs pure model step (default run: E/I N=128, PerceptualDecisionMaking, "
          f"batch 64; {n_steps} steps, best of {args.rounds} rounds)\n")
    print("| what | ms / iteration | / model step |")
    print("|---|---:|---:|")
    overrides = [f"train.device={device}", f"train.threads={args.threads}", "train.steps=1000000",
                 f"train.retain_freed_memory={args.retained}"]  # as the rest of this process
    with initialize_config_module("nn4n_configs", version_base="1.3"):
        real = resolve(compose("config", overrides))
        bare = resolve(compose("config", [*overrides, "logging.scalars_every=0", "logging.histograms_every=0"]))
    with tempfile.TemporaryDirectory() as tmp:
        loop, model_only = Trainer(real, Path(tmp) / "loop"), Trainer(bare, Path(tmp) / "model")
        fixed = model_only.train_data.batch(0).to(device)
        workers = loader_workers(real.train.data_workers, device)
        stream = batch_stream(loop.train_data, 0, workers, pin_memory=device.type == "cuda")
        counter = iter(range(1, 10**9))

        def loop_steps() -> None:  # exactly what Trainer.run does per step between evaluations
            for _ in range(n_steps):
                loop.train_step(next(counter), next(stream).to(device, non_blocking=True))

        def model_steps() -> None:
            for step in range(1, n_steps + 1):
                model_only.train_step(step, fixed)

        unseen = iter(range(10**6, 10**9))

        def generate() -> None:  # what one loader worker does per step: above 1.00, one cannot keep up
            for _ in range(n_steps):
                loop.train_data.batch(next(unseen))

        delivered = batch_stream(loop.train_data, 10**9, workers, pin_memory=device.type == "cuda")

        def deliver() -> None:  # the loader alone: batches received per step by a process that does nothing else
            for _ in range(n_steps):
                next(delivered)

        loop_name = f"nn4n-train iteration ({workers} loader worker(s) + logging)"
        times = best_times({"model step (fixed batch, no logging)": model_steps, loop_name: loop_steps,
                            "task generation (one batch, one process)": generate,
                            f"loader delivery ({workers} worker(s), nothing else running)": deliver},
                           device, args.rounds, budget=0)
        base = times["model step (fixed batch, no logging)"]
        for name, sec in times.items():
            print(f"| {name} | {sec / n_steps * 1e3:,.1f} | {sec / base:.2f} |")
        for monitor in (*loop.monitors, *model_only.monitors):
            monitor.close()


def multitask_table(args: argparse.Namespace, device: torch.device, n_steps: int = 20) -> None:
    """A training iteration on Yang et al.'s 20 tasks, mixed trial by trial (rule inputs, every trial its own
    task's mask), against one of their tasks alone, on fixed batches of the same trial length and size (the
    longest task's: 160 steps)."""
    from hydra import compose, initialize_config_module

    from nn4n.config import register_schema
    from nn4n.experiment import resolve
    from nn4n.train import Trainer

    register_schema()
    common = [f"train.device={device}", f"train.threads={args.threads}", "model.areas.hidden.size=256",
              "logging.scalars_every=0", "logging.histograms_every=0", f"train.retain_freed_memory={args.retained}"]
    runs = {"one task (yang19.dms-v0, ring read-out)": ["task.name=yang19.dms-v0", "+task.params.dim_ring=32", "task.output=ring"],
            "20 tasks mixed in the batch (task=yang19 task.mixing=trial)": ["task=yang19", "task.mixing=trial"]}
    with initialize_config_module("nn4n_configs", version_base="1.3"), tempfile.TemporaryDirectory() as tmp:
        trainers = {name: Trainer(resolve(compose("config", [*common, *o])), Path(tmp) / str(i)) for i, (name, o) in enumerate(runs.items())}
        batches = {name: t.train_data.batch(0).to(device) for name, t in trainers.items()}
        length = {int(b.inputs.shape[1]) for b in batches.values()}
        print(f"\n### Multitask iteration (E/I N=256, batch 64, T={'/'.join(map(str, sorted(length)))}; {n_steps} steps, "
              f"best of {args.rounds} interleaved rounds)\n")
        print("| batch | ms / iteration | / one task |")
        print("|---|---:|---:|")

        def steps(name: str) -> Step:
            def run() -> None:
                for step in range(1, n_steps + 1):
                    trainers[name].train_step(step, batches[name])
            return run

        times = best_times({name: steps(name) for name in runs}, device, args.rounds, budget=0)
        base = times[next(iter(runs))]
        for name, sec in times.items():
            print(f"| {name} | {sec / n_steps * 1e3:,.1f} | {sec / base:.2f} |")
        for t in trainers.values():
            for monitor in t.monitors:
                monitor.close()


def allocator_child() -> None:
    """(Subprocess) per-iteration times and page faults of four CPU configurations."""
    cpu = torch.device("cpu")
    results = {}
    for name, step, iterations in (("N=64", build("fused", 64, 64, T_STEPS, cpu, Path()), 40),
                                   ("N=256", build("fused", 256, 64, T_STEPS, cpu, Path()), 40),
                                   ("K=8 x N=64", ensemble_step(64, 8, 64, cpu), 40),
                                   ("N=256, batch 256, T=200", build("fused", 256, 256, 200, cpu, Path()), 12)):
        for _ in range(5):
            step()
        times, faults = [], []
        for _ in range(iterations):
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        results[name] = times, faults
    print(json.dumps(results))


def allocator_table(args: argparse.Namespace, pairs: int = 3) -> None:
    """glibc's default malloc against ``retain_freed_memory`` (nn4n-train's default), fresh processes in turn."""
    print(f"\n### Freed-memory retention (fused engine, batch 64, T={T_STEPS} unless given; {pairs} process pairs in turn, "
          f"40 iterations each, 12 of the largest; ms / iteration)\n")
    print("| configuration | malloc | best | median | page faults / iteration (mean) | median / retained |")
    print("|---|---|---:|---:|---:|---:|")
    runs: dict[str, list[dict]] = {"glibc default": [], "retained": []}
    for _ in range(pairs):
        for malloc, results in runs.items():
            cmd = [sys.executable, __file__, "--allocator-child", malloc, "--threads", str(args.threads)]
            results.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))

    def pooled(malloc: str, name: str, i: int) -> np.ndarray:  # i = 0: times, 1: page faults
        return np.concatenate([result[name][i] for result in runs[malloc]])

    for name, malloc in itertools.product(runs["retained"][0], runs):
        times = pooled(malloc, name, 0)
        print(f"| {name} | {malloc} | {times.min() * 1e3:,.1f} | {np.median(times) * 1e3:,.1f} "
              f"| {np.mean(pooled(malloc, name, 1)):,.0f} | {np.median(times) / np.median(pooled('retained', name, 0)):.2f} |")


def spin() -> subprocess.Popen:
    """A busy process competing for the cores (what a second training job or a test run does)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def with_threads(k: int, step: Step) -> Step:
    def run() -> None:
        torch.set_num_threads(k)
        step()

    return run


def thread_table(args: argparse.Namespace, device: torch.device) -> None:
    print(f"\n### Torch threads (batch 64, T={T_STEPS}; ms / iteration, best of {args.rounds} interleaved rounds)\n")
    print("| N | engine | competing | load avg | 1 thread | 2 threads | 2 / 1 |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for n in (64, 256):
        for engine in ("fused", "reference"):
            step = build(engine, n, 64, T_STEPS, device, args.nn4n1)
            for load in ("nothing started", "1 busy process"):
                spinner = spin() if load != "nothing started" else None
                try:
                    times = best_times({k: with_threads(k, step) for k in (1, 2)}, device, args.rounds)
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
                print(f"| {n} | {engine} | {load} | {os.getloadavg()[0]:.1f} | {times[1] * 1e3:,.1f} | {times[2] * 1e3:,.1f} "
                      f"| {times[2] / times[1]:.2f} |")
    torch.set_num_threads(args.threads)


def memory_table(args: argparse.Namespace) -> None:
    n = 256
    print(f"\n### Peak memory of one training iteration above the resting state, N={n}\n")
    print("| engine | batch | T | peak MiB | bytes / (neuron x step x trial) |")
    print("|---|---:|---:|---:|---:|")
    for engine in ("fused", "reference"):
        points = []
        for batch, steps in ((64, 100), (64, 400), (256, 100), (256, 400)):
            res = measure_peak(engine, n, batch, steps, args)
            if res:
                points.append((n * batch * steps, res["peak"]))
                print(f"| {engine} | {batch} | {steps} | {mib(res['peak'])} | {res['peak'] / (n * batch * steps):.1f} |")
        if len(points) > 1:
            slope = np.polyfit(*np.array(points, dtype=float).T, 1)[0]
            print(f"| {engine} | | | fit: | **{slope:.1f}** |")
    n, batch, steps = 1024, 256, 500
    res = measure_peak("fused", n, batch, steps, args)
    if res:
        fits = "fits" if res["peak"] < 24 * 2**30 else "does NOT fit"
        print(f"\nN={n}, batch {batch}, T={steps}, fused: one iteration {res['seconds']:.1f} s, "
              f"peak {res['peak'] / 2**30:.2f} GiB above rest: {fits} in 24 GiB")


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    return f"{model.group(1) if model else platform.machine()}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="speed table only, fewer rounds")
    parser.add_argument("--nn4n1", type=Path, default=ROOT.parent / "venv-nn4n1", help="venv with nn4n 1.x")
    parser.add_argument("--malloc", choices=("retained", "glibc default"), default="retained",
                        help="CPU allocator setting for all tables: nn4n-train's (retain_freed_memory) or glibc's")
    parser.add_argument("--peak", nargs=4, metavar=("NAME", "N", "BATCH", "T"), help=argparse.SUPPRESS)
    parser.add_argument("--allocator-child", choices=("retained", "glibc default"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak:
        name, *sizes = args.peak
        peak_child(name, *map(int, sizes), args.device, str(args.nn4n1))
        return
    args.retained = (args.allocator_child or args.malloc) == "retained" and retain_freed_memory()
    if args.allocator_child:
        allocator_child()
        return
    device = torch.device(args.device)
    args.rounds = 3 if args.quick else 7
    args.memory = device.type == "cuda" or Path("/proc/self/clear_refs").exists()
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    malloc = "freed memory retained, as nn4n-train" if args.retained else "glibc default"
    print(f"torch {torch.__version__}, {device} ({what}), {args.threads} threads, malloc: {malloc}, "
          f"load average {os.getloadavg()[0]:.1f}")
    speed_table(args, device)
    networks_table(args, device)
    perturbation_table(args, device)
    end_to_end_table(args, device)
    multitask_table(args, device)
    if not args.quick:
        if device.type == "cpu":
            thread_table(args, device)
            if platform.libc_ver()[0] == "glibc":
                allocator_table(args)
        if args.memory:
            memory_table(args)


if __name__ == "__main__":
    main()
