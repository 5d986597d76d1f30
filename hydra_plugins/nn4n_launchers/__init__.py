"""nn4n's sweep launchers: Hydra's submitit launchers (``hydra/launcher=slurm``, ``slurm_gpu``,
``submitit_local``) that submit only the jobs a sweep still needs, follow the others to their end, and say in
one line what went wrong on the cluster.

- A job whose directory holds a finished run of the same config (its ``metrics.json``, and a
  ``.hydra/config.yaml`` equal to the job's) is not submitted again: its stored objective goes to the sweeper.
- A SLURM job that leaves the queue without a result (killed hard where no ``sacct`` can say why) fails in
  one line after ``VANISHED_S`` seconds instead of being waited for forever.
- ``sbatch`` refusing the jobs (a GPU asked of a partition without one, an unknown account) is one line.
"""
from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)
POLL_S = 5  # how often a job's state is read while waiting
VANISHED_S = 30  # a SLURM job out of the queue this long without a result has failed

try:  # the slurm extra: Hydra's submitit launcher plugin
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _submitit
except ImportError:  # pragma: no cover - without the extra these launchers are not offered
    _submitit = None


class LauncherError(HydraException):
    """The cluster refused or lost the jobs; the message is one line saying what to do."""


def _finished(config: Any, job_dir: Path) -> JobReturn | None:
    """The stored result of ``job_dir`` if it holds a finished run of exactly ``config`` (without its hydra part)."""
    try:
        metrics = json.loads((job_dir / "metrics.json").read_text())
        from nn4n import safe_yaml

        stored = safe_yaml.load(job_dir / ".hydra" / "config.yaml")
    except (OSError, ValueError):
        return None
    own = OmegaConf.to_container(config, resolve=False)
    own.pop("hydra", None)
    if stored != own or not isinstance(metrics.get(metrics.get("objective")), (int, float)):
        return None
    result = JobReturn(overrides=None, cfg=config, status=JobStatus.COMPLETED, _return_value=metrics[metrics["objective"]])
    result.working_dir = str(job_dir)
    return result


class _Resuming:
    """What nn4n's launchers add to Hydra's submitit launchers (which they extend)."""

    _EXECUTOR: str
    params: dict[str, Any]

    def _job_dir(self, overrides: Sequence[str], num: int) -> tuple[Any, Path]:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = num
        return config, Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)

    def _executor(self) -> Any:
        """submitit's executor for this launcher's parameters (those of Hydra's submitit launcher configs)."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = dict(self.params)
        folder = params.pop("submitit_folder")
        extra = {f"{self._EXECUTOR}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
        executor = submitit.AutoExecutor(folder=folder, cluster=self._EXECUTOR, **extra)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns: dict[int, JobReturn] = {}
        todo = []
        for num, overrides in enumerate(job_overrides, initial_job_idx):
            config, job_dir = self._job_dir(overrides, num)
            done = _finished(config, job_dir)
            if done is not None:
                done.overrides = list(overrides)
                returns[num] = done
            else:
                todo.append((num, list(overrides)))
        log.info(f"Submitit '{self._EXECUTOR}' sweep in {self.config.hydra.sweep.dir}: {len(todo)} job(s) to run"
                 + (f", {len(returns)} finished already (not submitted again)" if returns else ""))
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if todo:
            state = Singleton.get_state()
            try:
                jobs = self._executor().map_array(self, [o for _, o in todo], ["hydra.sweep.dir"] * len(todo),
                                                  [n for n, _ in todo], [f"job_id_for_{n}" for n, _ in todo],
                                                  [state] * len(todo))
            except Exception as err:  # sbatch's refusal, as submitit reports it
                lines = [line for line in str(err).splitlines() if "error" in line.lower()] or str(err).splitlines() or [""]
                raise LauncherError(f"hydra.launcher: the cluster refused the jobs: {lines[-1].strip()} (check the "
                                    "partition, account and GPUs in your launcher config)") from None
            for (num, overrides), job in zip(todo, jobs):
                returns[num] = self._wait(job, overrides)
        return [returns[n] for n in sorted(returns)]

    def _wait(self, job: Any, overrides: list[str]) -> JobReturn:
        """The job's result once it has one (also through requeues); a failed JobReturn if it vanished."""
        gone = None
        while not job.done():
            time.sleep(POLL_S)
            if self._EXECUTOR != "slurm" or job.paths.result_pickle.exists():
                continue
            listed = subprocess.run(["squeue", "-h", "-j", str(job.job_id)], capture_output=True, text=True)
            if listed.stdout.strip() or listed.returncode:
                gone = None
            elif gone is None:
                gone = time.monotonic()
            elif time.monotonic() - gone > VANISHED_S:
                failure = LauncherError(
                    f"SLURM job {job.job_id} left the queue without a result (killed, out of memory or time, and no "
                    f"sacct to say which): see {job.paths.stderr}; run the sweep again to redo it")
                return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=failure)
        try:
            return job.results()[0]
        except Exception as err:  # submitit's: cancelled, or killed before its result was written
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            failure = LauncherError(f"job {job.job_id} ended without a result: {first}; see {job.paths.stderr}")
            return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=failure)


if _submitit is not None:
    class SlurmLauncher(_Resuming, _submitit.SlurmLauncher):
        """``hydra/launcher=slurm``: one SLURM job array per sweep batch."""

    class LocalLauncher(_Resuming, _submitit.LocalLauncher):
        """``hydra/launcher=submitit_local``: submitit jobs as local processes."""
