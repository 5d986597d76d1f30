"""Fixed points of a trained network: nn4n's search against the plain approach, side by side in one invocation.

The plain approach is what fixed-point-finder does: Adam on the speed q(v) from every start, its gradient by
autograd, capped at 5000 iterations, then an autograd Jacobian per distinct point. nn4n's: Newton and
Levenberg-Marquardt steps with the analytic Jacobian. Both start from the same states of the network's own
held-out trajectories and stop at the same tolerance; both run on one CPU thread.

    python scripts/bench_fixed_points.py --run RUN_DIR [--inputs zero] [--starts 1024]

RUN_DIR is an nn4n-train run, e.g. a 256-unit FlipFlop network:
    nn4n-train task=flip_flop model.areas.hidden.size=256 train.steps=800 hydra.run.dir=runs/ff256
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from nn4n.analysis import fixed_points as fp
from nn4n.analysis.runs import load_run
from nn4n.experiment import held_out
from nn4n.recurrence.rates import RATES


def plain(net: torch.nn.Module, drive: np.ndarray, starts: np.ndarray, q_tol: float, max_iter: int, lr: float,
          goal: float) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Adam on q from every start (autograd gradients), until ``goal`` of the starts are at ``q_tol`` or the cap.
    Returns the states, their q, the seconds taken and the iterations."""
    as64 = dict(dtype=torch.float64)
    w = net.w_rec.detach().to(**as64)
    tau = net.tau.detach().to(**as64)
    c = torch.tensor(drive, **as64)
    f = RATES[net.config.activation].f
    v = torch.tensor(starts, **as64, requires_grad=True)
    opt = torch.optim.Adam([v], lr=lr)
    began = time.perf_counter()
    for it in range(1, max_iter + 1):
        q = 0.5 * ((-v + f(v) @ w.mT + c) / tau).square().sum(-1)
        opt.zero_grad()
        q.sum().backward()
        opt.step()
        if it % 50 == 0 and (q.detach() <= q_tol).float().mean() >= goal:
            break
    with torch.no_grad():
        q = 0.5 * ((-v + f(v) @ w.mT + c) / tau).square().sum(-1)
    return v.detach().numpy(), q.numpy(), time.perf_counter() - began, it


def autograd_jacobians(net: torch.nn.Module, drive: np.ndarray, points: np.ndarray) -> float:
    """Seconds to get each point's Jacobian by autograd and its eigenvalues (what fixed-point-finder does)."""
    w = net.w_rec.detach().double()
    tau = net.tau.detach().double()
    c = torch.tensor(drive, dtype=torch.float64)
    f = RATES[net.config.activation].f
    began = time.perf_counter()
    for v in torch.as_tensor(points, dtype=torch.float64):
        jac = torch.autograd.functional.jacobian(lambda x: (-x + w @ f(x) + c) / tau, v)
        torch.linalg.eigvals(jac)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="an nn4n-train run directory")
    parser.add_argument("--inputs", nargs="+", default=["zero"])
    parser.add_argument("--starts", type=int, default=1024)
    parser.add_argument("--q-tol", type=float, default=fp.Q_TOL)
    parser.add_argument("--max-iter", type=int, default=5000, help="the plain approach's cap")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.01], help="Adam learning rates to try")
    args = parser.parse_args()
    torch.set_num_threads(1)
    net, cfg = load_run(args.run)
    batch = held_out(cfg, 256).batch(0)
    inputs = fp.input_vectors(batch, args.inputs)
    with torch.no_grad():
        _, activity = net.eval()(batch.inputs, noise=False, return_preact=True)
    starts = fp.start_states(activity.preact.numpy(), batch.valid.numpy(), args.starts, 0.0, 0)
    n = net.structure.n_neurons
    print(f"network: {n} neurons ({net.config.activation}), {len(starts)} starts, inputs {', '.join(inputs)}, "
          f"tolerance q <= {args.q_tol:g} /ms^2, one thread\n")
    began = time.perf_counter()
    ours = fp.find_fixed_points(net, inputs, starts, q_tol=args.q_tol, n_modes=0)
    total = time.perf_counter() - began
    began = time.perf_counter()
    fp.find_fixed_points(net, inputs, ours.v[:1], q_tol=args.q_tol)  # one point: the eigen-decomposition's own cost
    one = time.perf_counter() - began
    reached = float((ours.n_starts[ours.converged]).sum() / (len(starts) * len(inputs)))
    print("| method | time to the tolerance (s) | starts at the tolerance | distinct fixed points (stable) | "
          "Jacobians + eigenvalues of those (s) |")
    print("|---|---:|---:|---:|---:|")
    counts = ours.counts()
    print(f"| nn4n (Newton / Levenberg-Marquardt, analytic Jacobian) | {total:.1f} | {reached:.3f} | "
          f"{counts['fixed_points']} ({counts['stable']}) | included; {one:.2f} for one point |")
    drive = {name: u @ net.w_in.detach().double().numpy().T + (net.b_rec.detach().double().numpy() if net.b_rec is not None else 0)
             for name, u in inputs.items()}
    for lr in args.lrs:
        found, q, seconds, iters = [], [], 0.0, 0
        for name in inputs:
            v, qs, s, it = plain(net, np.broadcast_to(drive[name], starts.shape), starts, args.q_tol, args.max_iter, lr, reached)
            found.append(v[qs <= args.q_tol])
            q.append(qs)
            seconds, iters = seconds + s, max(iters, it)
        points = np.concatenate(found) if found else np.zeros((0, n))
        keep, _ = fp.merge_points(points, np.zeros(len(points)), np.zeros(len(points), int), 1e-6) if len(points) else (np.array([], int), None)
        frac = float((np.concatenate(q) <= args.q_tol).mean())
        jac = autograd_jacobians(net, next(iter(drive.values())), points[keep]) if len(keep) else 0.0
        print(f"| plain: Adam lr {lr:g} on q, autograd (cap {args.max_iter}) | {seconds:.1f} ({iters} iterations) | "
              f"{frac:.3f} | {len(keep)} | {jac:.2f} |")


if __name__ == "__main__":
    main()
