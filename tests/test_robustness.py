"""Runs that survive bad input, crashes, signals, divergence, bad directories and untrusted files."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as PluginEventAccumulator

from nn4n import CTRNN, Area, NetworkConfig
from nn4n.checkpoint import load_checkpoint
from nn4n.errors import ConfigError
from nn4n.experiment import resolve
from nn4n.rundir import check_disk_space, check_resumable
from helpers import hparams_session, nn4n_train_in_process

BAD_CONFIGS = [
    # types
    ("train.lr=fast", "train.lr"),
    ("train.steps=1.5", "train.steps"),
    ("seed=-1", "model.seed: must be an integer in [0, 2**32), got -1"),  # model.seed is ${seed}
    ("seed=4294967296", "must be an integer in [0, 2**32)"),
    ("train.batch_size=[1,2]", "train.batch_size"),
    ("model.dale=maybe", "model.dale"),
    ("model.areas.hidden.size=big", "model.areas.hidden.size"),
    ("task.dt=abc", "task.dt"),
    # ranges
    ("train.lr=0", "train.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.weight_decay=-0.1", "train.weight_decay"),
    ("train.reg.rate_l2=-1", "train.reg.rate_l2"),
    ("model.exc_frac=1.5", "model.exc_frac"),
    ("model.density.within=2", "model.density.within"),
    ("model.input_frac=0", "model.input_frac"),
    ("model.readout_frac=1.1", "model.readout_frac"),
    ("model.noise.rec=-0.1", "model.noise.rec"),
    ("model.tau=10", "model.tau"),
    ("model.areas.hidden.tau=1", "model.areas.hidden.tau"),
    ("model.init.spectral_radius=-1", "model.init.spectral_radius"),
    ("task.dt=-20", "task.dt"),
    ("task.decision_weight=-5", "task.decision_weight"),
    ("task.decision_period=decison", "task.decision_period: 'decison' is not a period of PerceptualDecisionMaking-v0"),
    # unknown names
    ("train.optimizr=adam", "train.optimizr"),
    ("train.optimizer=adamax", "train.optimizer"),
    ("train.schedule=linear", "train.schedule"),
    ("train.engine=warp", "train.engine"),
    ("train.objective=accuracy task=sine_wave", "train.objective: accuracy is not reported for regression tasks"),
    ("train.objective=mse", "train.objective: mse is not reported for classification tasks"),
    ("train.objective=speed", "train.objective: speed is not reported"),
    ("train.device=tpu", "train.device"),
    ("model.activation=gelu", "model.activation"),
    ("model.init.dist=cauchy", "model.init.dist"),
    ("model.long_range=inhibitory", "model.long_range"),
    ("task.name=NoSuchTask-v0", "task.name"),
    ("+train.reg.weight_l1.w_hidden=0.1", "train.reg.weight_l1.w_hidden"),
    ("+train.lr_decay=0.5", "train.lr_decay: unknown key"),  # + adds keys, but not ones the schema lacks
    ("+model.areas.hidden.taus=100", "model.areas.hidden.taus: unknown key"),
    ("model.areas.V1.size=64", "model.areas.V1: unknown key; model.areas has hidden (to add an area, merge it in whole: '++model.areas={V1:{size:64}}')"),
    ("+model.areas.V1.size=64", "V1: a new Area cannot be added key by key; to add an area, merge it in whole"),
    ("++model.areas={V1:{size:big}}", "model.areas.V1.size: Value 'big' of type 'str' could not be converted to Integer"),
    ("++model.areas={V1:{sise:64}}", "model.areas.V1.sise: unknown key"),
    ("+model._target_=os.system", "model._target_"),
    ("+task.timing.wait=100", "task.timing"),
    ("task.timing.fixation=100", "task.timing.fixation: unknown key; task.timing has no entries (to add an entry, put + before"),
    ("+task.timing.fixation=abc", "task.timing.fixation: must be a duration in ms (>= 0)"),
    ("+task.timing.stimulus=[gauss,[100,200]]", "task.timing.stimulus: must be a duration"),
    ("+task.timing.stimulus=[uniform,300]", "task.timing.stimulus: must be a duration"),
    ("+task.timing.stimulus=-100", "task.timing.stimulus: must be a duration"),
    ("model.tau_range=[10,100]", "model.tau_range: must be [low, high] with dt=20.0 <= low <= high"),
    ("+task.params.coherence=3", "task.params"),
    ("+task.dirs=[/no/such/dir]", "task.dirs"),
    ("logging.progress=fancy", "logging.progress"),
    ("train.n_networks=0", "train.n_networks"),
    ("train.batch_size=100000000", "train.batch_size: a step of 100000000 trials x "),  # found before any batch is made
    ("train.matmul_precision=tf32", "train.matmul_precision"),
    ("train.data_workers=-1", "train.data_workers"),
    ("train.data_workers=many", "train.data_workers"),
    ("model.dale=false", "model.long_range: 'excitatory' needs dale: true (without it no neuron is excitatory); with dale: false set long_range: all and readout_from: all"),
    ("model.areas.hidden.exc_frac=0", "readout_from=excitatory but these areas have no excitatory neurons"),  # found as the masks are drawn
    # infinite and not-a-number values pass '> 0' and would reach the eigen-decomposition
    ("model.tau=inf", "model.tau: must be a finite number"),
    ("model.noise.rec=inf", "model.noise.rec: must be a finite number >= 0"),
    ("model.init.spectral_radius=inf", "model.init.spectral_radius"),
    ("model.init.readout_scale=inf", "model.init.readout_scale"),
    ("model.init.input_scale=-1", "model.init.input_scale: must be a finite number >= 0"),
    ("train.lr=inf", "train.lr: must be a finite number > 0"),
    ("train.weight_decay=inf", "train.weight_decay"),
    ("train.reg.rate_l2=inf", "train.reg.rate_l2"),
    ("task.decision_weight=inf", "task.decision_weight"),
    ("task.dt=nan", "task.dt: must be a finite number > 0, got nan"),
    ("train.optimizer=sgd train.momentum=nan", "train.momentum: must be in [0, 1), got nan"),
    ("train.momentum=-5", "train.momentum: must be in [0, 1), got -5.0"),
    ("model.init.balance=row", "model.init.balance"),
    ("task.grace=-20", "task.grace"),
    ("task.trials_per_row=0", "task.trials_per_row"),
    ("task.decision_period=[decision,wait]", "task.decision_period: 'wait' is not a period of PerceptualDecisionMaking-v0"),
    # sizes beyond the machine: refused before anything is built, naming the key (not the disk)
    ("model.areas.hidden.size=30000", "model.areas: 1 network(s) of 30000 neurons need at least"),
    ("model.areas.hidden.size=1000000000", "model.areas: 1 network(s) of 1000000000 neurons need at least"),
    # areas
    ("model.areas={}", "model.areas: {} adds no area"),
    # inconsistent areas
    ("model.input_areas=[V1]", "model.input_areas"),
    ("model.readout_areas=[PFC]", "model.readout_areas"),
    ("+model.projections.hidden.PFC=0.2", "model.projections.hidden.PFC"),
    ("+model.plasticity.projections.PFC.hidden=0.2", "model.plasticity.projections.PFC"),
    ("+train.reg.rate_l1_area.PFC=0.001", "train.reg.rate_l1_area.PFC: unknown area 'PFC'; areas: hidden"),
    ("arch=three_area", None),  # valid: sanity check that the table tests the values, not the layout
    # task/model mismatches: PerceptualDecisionMaking has 3 inputs
    ("+model.input_groups={stimulus:{size:2,areas:[hidden]}}", "model.input_groups"),
]


@pytest.mark.parametrize("override, key", [c for c in BAD_CONFIGS if c[1]], ids=[c[0] for c in BAD_CONFIGS if c[1]])
def test_bad_config_table(override: str, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture) -> None:
    code = nn4n_train_in_process(["debug=fast", *override.split(" "), "hydra.run.dir=run"], monkeypatch, tmp_path)
    err = capsys.readouterr().err.strip()
    assert code != 0, override
    assert "Traceback" not in err and key in err, err
    assert len(err.splitlines()) == 1 and err.startswith("nn4n-train: error: "), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device, available", [("cuda:1", torch.cuda.device_count() > 1), ("mps", torch.backends.mps.is_available())])
def test_device_this_machine_lacks(device: str, available: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    """Found only when training starts, after Hydra made the run directory: that directory goes too."""
    if available:
        pytest.skip(f"{device} exists here")
    code = nn4n_train_in_process(["debug=fast", f"train.device={device}", "hydra.run.dir=run"], monkeypatch, tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"nn4n-train: error: train.device: {device!r} requested but ") and "\n" not in err
    assert not (tmp_path / "run").exists()


FAILING_TASK = """
import numpy as np
from gymnasium import spaces
from neurogym.core import TrialEnv


class FailingTask(TrialEnv):
    def __init__(self, dt=20):
        super().__init__(dt=dt)
        self.timing = {"stimulus": 100, "decision": 100}
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)

    def _new_trial(self, **kwargs):
        raise RuntimeError("no stimulus file")
"""


def test_task_whose_code_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A user's task that raises on its first trial: one line naming the task and its error, no run directory."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "failing.py").write_text(FAILING_TASK)
    argv = ["debug=fast", "task.name=FailingTask-v0", f"task.dirs=[{tmp_path / 'tasks'}]", "hydra.run.dir=run"]
    code = nn4n_train_in_process(argv, monkeypatch, tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2 and not (tmp_path / "run").exists()
    assert err == "nn4n-train: error: task.name: FailingTask-v0 failed on its first trial: RuntimeError: no stimulus file"


def test_crash_before_training_keeps_the_runs_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error (here out of memory) in a command given an existing run leaves its .hydra as it was."""
    assert nn4n_train_in_process(["debug=fast", "train.steps=4", "hydra.run.dir=run"], monkeypatch, tmp_path) == 0
    record = {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()}

    def out_of_memory(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr("nn4n.train.train", out_of_memory)
    with pytest.raises(MemoryError):
        nn4n_train_in_process(["debug=fast", "train.steps=4", "train.eval_every=2", "hydra.run.dir=run"], monkeypatch, tmp_path)
    assert {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()} == record


def test_table_is_big_enough() -> None:
    assert len([c for c in BAD_CONFIGS if c[1]]) >= 30


def test_valid_layout_in_table_passes() -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module("nn4n_configs", version_base="1.3"):
        cfg = resolve(compose("config", ["arch=three_area", "debug=fast"]))
    assert list(cfg.model.areas) == ["V1", "PPC", "PFC"] and cfg.model.input_size == 3


def test_disk_space_checked_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module("nn4n_configs", version_base="1.3"):
        cfg = resolve(compose("config", ["debug=fast"]))
    check_disk_space(cfg, tmp_path, 128, 110)  # plenty here
    monkeypatch.setattr("shutil.disk_usage", lambda _: shutil._ntuple_diskusage(2**30, 2**30 - 2**20, 2**20))
    with pytest.raises(ConfigError, match=r"hydra.run.dir: only 1 MiB free"):
        check_disk_space(cfg, tmp_path, 128, 110)


@pytest.mark.parametrize("target", ["/proc/nn4n_run", "{file}/run"])
def test_unwritable_output_dir(target: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    run = subprocess.run([sys.executable, "-m", "nn4n", "debug=fast", f"hydra.run.dir={target.format(file=tmp_path / 'file')}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("nn4n-train: error: hydra.run.dir: cannot write to")


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'pwned'}",))


@pytest.mark.slow
def test_malicious_checkpoint_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "nn4n.checkpoint/1", "model": Exploit()}, evil)
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(evil)
    with pytest.raises(ValueError, match="refused to load: not a plain-tensor nn4n model file"):
        CTRNN.load(evil)
    assert not (tmp_path / "pwned").exists()
    # as a run's last checkpoint: the CLI refuses to resume from it, in one line
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    evil.rename(tmp_path / "run" / "checkpoints" / "last.pt")
    run = subprocess.run([sys.executable, "-m", "nn4n", "debug=fast", "hydra.run.dir=run"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 3 and "refused to load" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "pwned").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_model_file_round_trip_is_weights_only(tmp_path: Path) -> None:
    model = CTRNN(NetworkConfig(areas={"a": Area(8)}, input_size=2, output_size=2))
    model.save(tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)  # plain tensors and values only
    assert blob["format"] == "nn4n.CTRNN/1"


TRAIN = ["debug=fast", "train.steps=150", "train.checkpoint_every=10", "train.eval_every=75",
         "train.data_workers=1", "logging=minimal", "logging.scalars_every=10", "model.noise.rec=0.1"]


def start(tmp_path: Path, run_dir: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nn4n", *TRAIN, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_until_step(tmp_path: Path, step: int) -> subprocess.Popen:
    """A long run in ``run`` with no checkpoint before the end, returned once its log reaches ``step``."""
    proc = start(tmp_path, "run", "train.steps=100000", "train.checkpoint_every=100000")
    log = tmp_path / "run" / "nn4n.log"
    deadline = time.time() + 300
    while f"step {step}/" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    return proc


def _alive(pid: int) -> bool:
    """Running (a zombie no container init reaps counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for_checkpoint(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)


@pytest.mark.slow
def test_kill9_then_resume_is_bitwise_identical(tmp_path: Path) -> None:
    straight = start(tmp_path, "straight")
    assert straight.wait(timeout=600) == 0, straight.communicate()
    victim = start(tmp_path, "killed")
    wait_for_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt", victim)
    workers = Path(f"/proc/{victim.pid}/task/{victim.pid}/children").read_text().split()
    assert workers  # train.data_workers=1
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    deadline = time.time() + 30  # the loader worker does not outlive the run, holding its memory
    while any(_alive(int(pid)) for pid in workers):
        assert time.time() < deadline, f"loader worker(s) {workers} still running after the run was killed"
        time.sleep(0.1)
    killed_at = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["step"]
    assert killed_at < 150
    resumed = start(tmp_path, "killed")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    for name, tensor in a["models"][0].items():
        assert torch.equal(tensor, b["models"][0][name]), name
    acc = EventAccumulator(str(tmp_path / "killed" / "tensorboard")).Reload()
    steps = [e.step for e in acc.Scalars("loss/task")]
    assert steps == list(range(10, 151, 10))  # no duplicates from the killed process
    values = [e.value for e in EventAccumulator(str(tmp_path / "straight" / "tensorboard")).Reload().Scalars("loss/task")]
    assert [e.value for e in acc.Scalars("loss/task")] == values


@pytest.mark.slow
def test_a_finished_run_trains_further_with_more_steps(tmp_path: Path) -> None:
    straight, short = start(tmp_path, "straight"), start(tmp_path, "run", "train.steps=73")  # not a multiple of eval_every
    assert straight.wait(timeout=600) == 0 and short.wait(timeout=600) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 73
    longer = start(tmp_path, "run")  # train.steps=150, as the straight run
    _, err = longer.communicate(timeout=600)
    assert longer.returncode == 0, err
    assert "resuming from step 73" in (tmp_path / "run" / "nn4n.log").read_text()
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert b["step"] == 150 and all(torch.equal(t, b["models"][0][k]) for k, t in a["models"][0].items())
    ran, extended = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "run"))
    assert extended["steps"] == 150 and extended["accuracy"] == ran["accuracy"]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    logged = {e.step: e.value for e in events.Scalars("loss/task")}  # every 10 steps, and the short run's last
    assert sorted(logged) == sorted([*range(10, 151, 10), 73])
    straight_events = EventAccumulator(str(tmp_path / "straight" / "tensorboard")).Reload()
    assert {e.step: e.value for e in straight_events.Scalars("loss/task")} == {s: v for s, v in logged.items() if s != 73}
    params, hparam_metrics = hparams_session(tmp_path / "run" / "tensorboard")  # the session of 150 steps only
    assert params["train.steps"] == 150 and hparam_metrics["eval/accuracy"] == [(150, pytest.approx(ran["accuracy"]))]
    fewer = start(tmp_path, "run", "train.steps=100")
    _, err = fewer.communicate(timeout=300)
    assert fewer.returncode == 2 and re.search(r"train.steps: is 100 but the run in \S*run has already trained 150 steps;", err)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == extended


@pytest.mark.slow
def test_resume_takes_the_runs_own_overrides(tmp_path: Path) -> None:
    first = start(tmp_path, "run", "train.steps=20", "arch=two_area", "model.areas.motor.tau_range=[40,400]")
    assert first.wait(timeout=300) == 0
    again = subprocess.run([sys.executable, "-m", "nn4n", "resume=run", "train.steps=30"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming from step 20" in (tmp_path / "run" / "nn4n.log").read_text()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 30
    overrides = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    assert "arch=two_area" in overrides and "train.steps=30" in overrides and "train.steps=20" not in overrides
    for argv, message in ((["resume=nowhere"], "resume: nowhere is not an nn4n-train run directory"),
                          (["resume=run", "hydra.run.dir=other"], "resume: give one run directory, for a single run"),
                          (["-m", "resume=run", "seed=1,2"], "resume: give one run directory, for a single run")):
        bad = subprocess.run([sys.executable, "-m", "nn4n", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and bad.stderr.startswith(f"nn4n-train: error: {message}"), bad.stderr
    assert not (tmp_path / "other").exists() and not (tmp_path / "multirun").exists()


def test_steps_of_a_run_with_a_schedule_stay_fixed() -> None:
    saved = {"train.steps": 2000, "train.schedule": "cosine", "train.lr": 1e-3}
    with pytest.raises(ConfigError, match=r"^train.steps: is 4000 but the run in r was started with 2000 and its "
                                          r"learning rate schedule \(cosine\) depends on it; resume with the run's own "
                                          r"overrides \(train.schedule=cosine; nn4n-train resume=r gives them\) or use another output directory$"):
        check_resumable({"config": saved, "step": 2000, "hydra": {"overrides.yaml": "- train.schedule=cosine\n"}},
                        saved | {"train.steps": 4000}, Path("r"))
    constant = saved | {"train.schedule": "none"}
    check_resumable({"config": constant, "step": 500}, constant | {"train.steps": 1000}, Path("r"))  # stop sooner
    with pytest.raises(ConfigError, match=r"train.lr: is 0.1 but the run in r was started with 0.001; resume with the run's own overrides \(none;"):
        check_resumable({"config": constant, "step": 500}, constant | {"train.steps": 4000, "train.lr": 0.1}, Path("r"))
    typed = {"config": constant, "step": 500, "hydra": {"overrides.yaml": "- name=run_${seed}\n"}}  # shown as typed
    with pytest.raises(ConfigError, match=r"resume with the run's own overrides \(name=run_\$\{seed\}; nn4n-train resume=r"):
        check_resumable(typed, constant | {"train.lr": 0.1}, Path("r"))


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_over_cleanly(tmp_path: Path) -> None:
    proc = start_until_step(tmp_path, 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    again = start(tmp_path, "run", "train.steps=20")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("loss/task")] == [10, 20]  # none left of the killed attempt
    # TensorBoard's own loader (the plain EventAccumulator does not purge text)
    plugin_events = PluginEventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [e.step for e in plugin_events.Tensors("config/text_summary")] == [0]
    assert [e.step for e in plugin_events.Tensors("loss/task")] == [10, 20]


@pytest.mark.slow
@pytest.mark.parametrize("stop, every_process", [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)])
def test_a_stop_signal_saves_checkpoint_and_exits(tmp_path: Path, stop: signal.Signals, every_process: bool) -> None:
    """SIGTERM to the training process (``kill PID``), or to it and its loader worker (``timeout``, ``scancel``),
    or SIGINT to both (Ctrl-C in a terminal)."""
    proc = start_until_step(tmp_path, 10)
    workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split() if every_process else []
    assert workers or not every_process  # train.data_workers=1
    for pid in workers:
        os.kill(int(pid), stop)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + stop and err.count("\n") == 1
    name = signal.Signals(stop).name
    assert f"{name} at step" in err and "checkpoint saved" in err and "Traceback" not in err
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert f"{name} at step {state['step']}:" in err and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    proc = start(tmp_path, "run", "train.lr=1e30", "train.checkpoint_every=1", "train.grad_clip=0", "model.activation=relu")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3 and "not finite" in err and "Traceback" not in err
    assert "not finite" not in out and "not finite" in (tmp_path / "run" / "nn4n.log").read_text()  # once in the terminal, and in the log
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["models"][0].values())
    assert f"step {state['step'] + 1}:" in err and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_resume_with_changed_config_is_refused(tmp_path: Path) -> None:
    first = start(tmp_path, "run", "train.steps=20")
    assert first.wait(timeout=300) == 0
    (tmp_path / "run" / "metrics.json").unlink()  # as if it had been stopped before the end
    record = {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()}
    assert "model.tau=200" not in record["overrides.yaml"]
    again = start(tmp_path, "run", "train.steps=20", "model.tau=200")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 2 and "model.tau: is 200" in err and "Traceback" not in err
    assert f"resume with the run's own overrides ({' '.join([*TRAIN, 'train.steps=20'])}; nn4n-train resume=" in err
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 20
    # Hydra wrote the refused command's config into .hydra before nn4n saw it: the run's own is back,
    # also after a command that fails on a bad value before any resume check
    assert {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()} == record
    bad = start(tmp_path, "run", "train.steps=20", "train.lr=-1")
    _, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and err.startswith("nn4n-train: error: train.lr: must be a finite number > 0")
    assert {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()} == record
