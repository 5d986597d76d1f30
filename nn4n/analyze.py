"""``nn4n-analyze``: one analysis of every network of a finished run (or sweep), its results written beside the
network's own files (``analysis/<name>/``) and its figures into the network's TensorBoard."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .command import check_config_dir, config_dirs, fail, flags_first, run
from .config import ANALYSES, AnalyzeConfig, register_schema, to_config
from .errors import ConfigError

log = logging.getLogger("nn4n")
register_schema()


def _settings(cfg: DictConfig) -> tuple[AnalyzeConfig, Any]:
    """The command's checked config and its analysis' settings (schemas in nn4n/config.py)."""
    analysis = cfg.get("analysis")
    name = analysis.get("name") if isinstance(analysis, DictConfig) else None
    if name not in ANALYSES:
        raise ConfigError(f"analysis: {name!r} is not an analysis; analyses: {', '.join(ANALYSES)}")
    settings = to_config(OmegaConf.merge(OmegaConf.structured(ANALYSES[name]), analysis))
    config = to_config(OmegaConf.merge(OmegaConf.structured(AnalyzeConfig), {**cfg, "analysis": {}}))
    return config, settings


def _fixed_points(target: Any, config: AnalyzeConfig, settings: Any, folder: Path) -> str:
    """Run the fixed-point analysis on one network and write its results; its headline."""
    from .analysis import fixed_points as fp
    from .analysis.results import write_arrays, write_figures, write_json, write_table

    found = fp.of_run(target.run, target.network, config.checkpoint, inputs=settings.inputs, n_starts=settings.n_starts,
                      start_noise=settings.start_noise, n_trials=settings.n_trials, seed=settings.seed,
                      trust_task_code=config.trust_task_code, progress=sys.stderr.isatty(), q_tol=settings.q_tol,
                      slow_q=settings.slow_q,
                      merge_tol=settings.merge_tol, kink_tol=settings.kink_tol, max_iter=settings.max_iter,
                      n_modes=settings.n_modes, device=config.device)
    points = found.points
    folder.mkdir(parents=True, exist_ok=True)
    write_arrays(folder / "fixed_points.npz", points.arrays())
    write_table(folder / "fixed_points.csv", *fp.table(points))
    counts = points.counts()
    write_json(folder / "summary.json", counts)
    write_figures(target, settings.name, found.figures())
    return (f"{counts['fixed_points']} fixed points ({counts['stable']} stable, {counts['saddles']} saddles), "
            f"{counts['slow_points']} slow points")


def _perturbations(target: Any, config: AnalyzeConfig, settings: Any, folder: Path) -> str:
    """Run the perturbation experiments on one network and write their results; the headline."""
    from .analysis import perturbations as pt
    from .analysis.results import write_arrays, write_figures, write_json, write_table
    from .evaluate import save_activity

    found = pt.of_run(target.run, target.network, config.checkpoint, perturbations=settings.perturbations,
                      survey_all=settings.survey, n_trials=settings.n_trials, seed=settings.seed, noise=settings.noise,
                      strength=settings.strength, keep_records=settings.save_activity,
                      trust_task_code=config.trust_task_code, device=config.device)
    folder.mkdir(parents=True, exist_ok=True)
    write_table(folder / "perturbations.csv", *found.table())
    write_arrays(folder / "activity.npz", found.arrays())
    write_json(folder / "summary.json", found.summary())
    if settings.save_activity:
        (folder / "activity").mkdir(exist_ok=True)
        for i, c in enumerate(found.conditions):
            slug = re.sub(r"[^\w.-]+", "_", c.name)
            save_activity(folder / "activity" / f"{i:02d}_{slug}.npz", c.record)
    write_figures(target, settings.name, found.figures())
    key, control, *perturbed = found.headline, *found.conditions
    worst = min(perturbed, key=lambda c: c.measures[key])
    return (f"{len(perturbed)} perturbations; control {key} {control.measures[key]:.3f}, "
            f"lowest {worst.measures[key]:.3f} ({worst.name})")


def _task_variance(target: Any, config: AnalyzeConfig, settings: Any, folder: Path) -> str:
    """Task variance, clusters and cluster lesions of one network; the headline."""
    from .analysis import task_variance as tv
    from .analysis.results import write_arrays, write_figures, write_json, write_table

    found = tv.of_run(target.run, target.network, config.checkpoint, n_trials=settings.n_trials,
                      min_variance=settings.min_variance, max_clusters=settings.max_clusters, seed=settings.seed,
                      lesion=settings.lesion, trust_task_code=config.trust_task_code, device=config.device)
    folder.mkdir(parents=True, exist_ok=True)
    write_arrays(folder / "task_variance.npz", found.arrays())
    write_table(folder / "clusters.csv", *found.table())
    summary = found.summary()
    write_json(folder / "summary.json", summary)
    write_figures(target, settings.name, found.figures())
    bound = summary["n_clusters"] == summary["largest_k_tried"]  # the silhouette may rise further: no k stands out
    return (f"{summary['units_kept']} units vary, in {summary['n_clusters']} clusters (silhouette "
            f"{summary['silhouette']:.2f})" + ("; the largest k tried: raise analysis.max_clusters to look further" if bound else ""))


ANALYZE = {"fixed_points": _fixed_points, "perturbations": _perturbations, "task_variance": _task_variance}


@hydra.main(version_base="1.3", config_path="pkg://nn4n_configs", config_name="analyze")
def _main(cfg: DictConfig) -> None:
    try:
        config, settings = _settings(cfg)
        from .analysis.results import targets
        from .rundir import LOCK_FILE, lock_message, read_lock, stale

        found = targets(Path(config.run), config.network, Path(config.out) if config.out else None)
        for target in found:
            holder = read_lock(target.run / LOCK_FILE)
            if holder is not None and not stale(holder):
                raise ConfigError(f"run: {lock_message(target.run, holder)}")
    except (ConfigError, ValueError, FileNotFoundError) as err:
        fail("nn4n-analyze", err if isinstance(err, ConfigError) else ConfigError(str(err)))
    from .machine import use_threads

    use_threads("threads", config.threads)
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    job = str(HydraConfig.get().job.num) if sweeping else None
    for target in found:
        folder = target.results(settings.name, job)
        try:
            headline = ANALYZE[settings.name](target, config, settings, folder)
        except ValueError as err:  # bad input found once the run is loaded (an unknown period, say)
            fail("nn4n-analyze", ConfigError(str(err).splitlines()[0]))
        from .analysis.results import write_config

        write_config(folder / "config.yaml", OmegaConf.to_container(cfg, resolve=True))
        log.info("%s: %s -> %s", target.home, headline, folder)


def main() -> None:
    """``nn4n-analyze``: every error one line on stderr and a non-zero exit (2: bad input)."""
    def body() -> None:
        sys.argv[1:] = flags_first(sys.argv[1:])
        for folder in config_dirs(sys.argv[1:]):
            check_config_dir(folder)
        _main()

    run("nn4n-analyze", body, "results of the networks analysed so far are written, the rest not")
