"""A finished (or running) run's network, its config, and fresh activity records from it."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from .. import safe_yaml
from ..checkpoint import load_checkpoint
from ..config import Config
from ..ensemble import network_seed
from ..evaluate import activity_record, evaluate
from ..experiment import held_out, resolve
from ..model import CTRNN
from ..perturb import Perturbation
from ..rundir import last_checkpoint, network_dir
from ..structure import select_neurons
from ..validate import seed as check_seed


def load_run(run_dir: str | Path, checkpoint: str = "best", network: int = 0, *,
             trust_task_code: bool = False) -> tuple[CTRNN, Config]:
    """A network of a run, from its best checkpoint or the run's last one ('best' or 'last'),
    and the run's config (``cfg.model.seed`` set to that network's seed).

    ``network`` picks one of a run's ``train.n_networks`` networks (0 for a one-network run). The run's
    files are read as data; a run whose task comes from Python files of its own (``task.dirs``) is refused
    unless ``trust_task_code=True``: a run folder may come from someone else.
    """
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint: must be 'best' or 'last', got {checkpoint!r}")
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        run = run_dir.parent.parent
        if run_dir.parent.name == "networks" and (run / ".hydra" / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir}: one network's results; its run is {run}: "
                                    f"pass that directory and network={run_dir.name}")
        raise FileNotFoundError(f"{run_dir}: not an nn4n-train run directory (it has no .hydra/config.yaml)")
    raw = safe_yaml.load(run_dir / ".hydra" / "config.yaml")
    if not isinstance(raw, dict):
        raise ValueError(f"{run_dir / '.hydra' / 'config.yaml'}: not a run's config")
    dirs = raw.get("task", {}).get("dirs") if isinstance(raw.get("task"), dict) else None
    if dirs and not trust_task_code:
        raise ValueError(f"trust_task_code: the run in {run_dir} imports task code from task.dirs={dirs}; it runs "
                         "only with trust_task_code=True")
    cfg = resolve(raw)
    n_networks = cfg.train.n_networks
    if not 0 <= network < n_networks:
        raise ValueError(f"network: must be in [0, {n_networks}) for the run in {run_dir}, got {network!r}")
    cfg.model = dataclasses.replace(cfg.model, seed=network_seed(cfg.model.seed, network))
    if checkpoint == "best":
        return CTRNN.load(network_dir(run_dir, network, n_networks) / "checkpoints" / "best.pt"), cfg
    model = CTRNN(cfg.model)
    model.load_state_dict(load_checkpoint(last_checkpoint(run_dir))["models"][network])
    return model, cfg


def activity_from_run(
    run_dir: str | Path,
    n_trials: int = 256,
    checkpoint: str = "best",
    network: int = 0,
    *,
    seed: int | None = None,
    timing: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    noise: bool = False,
    perturb: Sequence[Perturbation | Mapping[str, Any]] | None = None,
    trust_task_code: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``n_trials`` trials through a saved network; same keys as ``activity.npz``.

    By default these are the run's held-out trials, without noise, as evaluated in training; ``seed``
    draws others. ``timing`` and ``params`` change the task's (merged into the run's ``task.timing``
    and ``task.params``), to probe the trained network beyond its training: ``timing={"delay": 2000}``,
    ``params={"cohs": [0.0, 51.2]}``. ``noise=True`` adds the network's recurrent and input noise, as in
    training, for trial-to-trial variability; drawn from the same seed, it is the same on every call.
    ``perturb`` silences, stimulates or lesions parts of the network (:mod:`nn4n.perturb`), e.g.
    ``[{"kind": "silence", "area": "PFC", "population": "E", "periods": ["delay"]}]``: the same trials and
    noise as without it, so that the two records compare trial by trial.
    ``trust_task_code`` as in :func:`load_run`.
    Pass the result to :func:`nn4n.figures.all_figures` (or any single figure function).
    """
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ValueError(f"n_trials: must be an integer > 0, got {n_trials!r}")
    if seed is not None:
        check_seed(seed, "seed")
    model, cfg = load_run(run_dir, checkpoint, network, trust_task_code=trust_task_code)
    task = dataclasses.replace(cfg.task, timing={**cfg.task.timing, **(timing or {})}, params={**cfg.task.params, **(params or {})})
    trials = held_out(dataclasses.replace(cfg, task=task), n_trials, seed)
    try:
        spec = trials.spec
    except ValueError as err:  # an unknown period or parameter, a bad duration: named as the arguments are
        raise ValueError(str(err).removeprefix("task.")) from None
    net = model.config
    if (spec.n_inputs, spec.n_outputs) != (net.input_size, net.output_size):
        raise ValueError(f"params: the task then has {spec.n_inputs} inputs and {spec.n_outputs} outputs, "
                         f"the network in {run_dir} {net.input_size} and {net.output_size}")
    batch = trials.batch(0)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(trials.seed)
        _, outputs, activity = evaluate(model, batch, spec, noise, perturb)
    return activity_record(model, batch, outputs, activity, spec)


def neurons(record: Mapping[str, np.ndarray], area: str | None = None, population: str | None = None) -> np.ndarray:
    """Indices of an area's neurons (and of one population, 'E' or 'I') in an activity record
    (``activity.npz`` or :func:`activity_from_run`): ``record["rates"][..., neurons(record, "PFC", "E")]``."""
    return select_neurons(record["area"], record["sign"], area, population)
