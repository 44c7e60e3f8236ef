"""Run control: launch a job as a process, list runs and sweeps, stop one, resume it by its directory.

The run-directory owner's read side is tested on directories written the way the jobs write them (a
manifest, a lock naming a live or a gone process); the whole cycle on a real smoke training run."""

import json
import pathlib
import signal
import socket
import subprocess
import sys
from datetime import datetime

import optuna
import pytest
from optuna.trial import TrialState
from safetensors.torch import load_file

from deepsynth_ocr.jobs.launch import evaluate_launch, resume_launch, start, sweep_launch, train_launch
from deepsynth_ocr.runs import (
    RunDirError,
    latest_run_dir,
    list_runs,
    new_run_path,
    read_run,
    stop_run,
    update_manifest,
    write_launch,
)

from .conftest import ROOT
from .runs_helpers import child_env, cli, logged, losses, reference_run, smoke_launch, wait_for

HOST = socket.gethostname()


def _run(root, name, stamp, kind="train", status="ok", config=True, **fields):
    run_dir = root / f"{name}_{stamp}"
    run_dir.mkdir(parents=True)
    fields.setdefault("created_at", stamp)
    update_manifest(run_dir, name=name, kind=kind, status=status, versions={}, **{k: v for k, v in fields.items() if v is not None})
    if config:
        (run_dir / "config.yaml").write_text(f"name: {name}\n")
    return run_dir


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_resuming_by_name_picks_the_newest_training_run_of_exactly_that_name(tmp_path):
    older = _run(tmp_path, "smoke", "20261201_100000")
    newest = _run(tmp_path, "smoke", "20261202_100000", status="interrupted")
    _run(tmp_path, "smoke_big", "20261203_100000")  # newer, and its directory matches smoke_*
    _run(tmp_path, "smoke", "20261204_100000", kind="evaluate")  # newer, same name, not a training run
    _run(tmp_path, "smoke", "20261205_100000", config=False)  # started, but nothing to resume from
    assert latest_run_dir(tmp_path, "smoke") == newest != older
    assert latest_run_dir(tmp_path, "smoke_big") == tmp_path / "smoke_big_20261203_100000"
    assert latest_run_dir(tmp_path, "smok") is None


def test_two_runs_of_one_name_started_in_the_same_second_get_two_directories(tmp_path):
    dirs = [new_run_path(tmp_path, "smoke") for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() for d in dirs)
    assert dirs[1].name == f"{dirs[0].name}_2" or dirs[1].name[:-2] != dirs[0].name[:-2]  # a second may tick over
    launches = [train_launch(ROOT / "configs" / "smoke.yaml", [f"output_root={tmp_path / 'l'}"]) for _ in range(2)]
    assert launches[0].run_dir != launches[1].run_dir


def test_a_running_manifest_whose_holder_is_gone_reads_died_and_a_live_one_running(tmp_path, sleeper):
    dead = _run(tmp_path, "a", "20261201_100000", status="running")
    (dead / ".lock").write_text(json.dumps({"pid": _gone_pid(), "host": HOST}))
    alive = _run(tmp_path, "b", "20261202_100000", status="running", progress={"step": 7, "max_steps": 30},
                 metrics={"before": {"cer": 0.5}})
    (alive / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": HOST}))
    elsewhere = _run(tmp_path, "c", "20261203_100000", status="running")
    remote_pid = _gone_pid()  # gone here, but it names a process of another machine: never presumed dead
    (elsewhere / ".lock").write_text(json.dumps({"pid": remote_pid, "host": "another-host"}))
    no_lock = _run(tmp_path, "d", "20261204_100000", status="running")
    got = {i.name: (i.status, i.pids, i.step, i.total, i.cer_before) for i in list_runs(tmp_path)}
    assert got == {"a": ("died", [], None, None, None), "b": ("running", [sleeper.pid], 7, 30, 0.5),
                   "c": ("running", [remote_pid], None, None, None), "d": ("died", [], None, None, None)}
    assert read_run(elsewhere).host == "another-host"
    assert [i.name for i in list_runs(tmp_path)] == ["d", "c", "b", "a"]  # newest first
    assert [i.name for i in list_runs(tmp_path, status="died")] == ["d", "a"]
    assert [i.name for i in list_runs(tmp_path, name="b")] == ["b"]
    assert read_run(no_lock).status == "died"
    with pytest.raises(RunDirError, match="another-host"):
        stop_run(elsewhere)  # never a signal to a pid of another machine


def test_a_launched_process_reads_starting_until_it_holds_the_run_and_died_if_it_never_does(tmp_path, sleeper):
    run_dir = tmp_path / "smoke_1"
    run_dir.mkdir()
    (run_dir / ".launch").write_text(json.dumps({"pid": sleeper.pid, "host": HOST, "kind": "train", "name": "smoke",
                                                 "started": "2026-12-05T10:00:00"}))
    info = read_run(run_dir)
    assert (info.status, info.kind, info.name, info.pids) == ("starting", "train", "smoke", [sleeper.pid])
    sleeper.kill()
    sleeper.wait()
    assert read_run(run_dir).status == "died"
    queued = tmp_path / "smoke_2"
    queued.mkdir()
    write_launch(queued, None, "train", "smoke", ["train"])  # waiting for a slot of the jobs UI: not dead
    assert (read_run(queued).status, read_run(queued).pids) == ("queued", [])
    resumed = _run(tmp_path, "smoke", "20261201_100000", status="interrupted")
    write_launch(resumed, None, "train", "smoke", ["train"])
    assert read_run(resumed).status == "queued"


def test_stop_sends_sigterm_to_the_lock_holder_and_refuses_a_run_that_is_not_running(tmp_path, sleeper):
    run_dir = _run(tmp_path, "a", "20261201_100000", status="running")
    (run_dir / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": HOST}))
    assert stop_run(run_dir) == [sleeper.pid]
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    finished = _run(tmp_path, "b", "20261202_100000", status="ok")
    with pytest.raises(RunDirError, match="not running .status ok.; nothing to stop"):
        stop_run(finished)
    out = cli("stop", str(finished))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "not running" in out.stderr


def test_resume_refuses_what_cannot_be_resumed_in_one_line(tmp_path, sleeper):
    evaluation = _run(tmp_path, "a", "20261201_100000", kind="evaluate", status="failed")
    finished = _run(tmp_path, "b", "20261202_100000", status="ok")
    running = _run(tmp_path, "c", "20261203_100000", status="running")
    (running / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": HOST}))
    for run_dir, says in ((evaluation, "evaluate run: it has no checkpoint"), (finished, "nothing to resume"),
                          (running, f"stop it first: deepsynth-ocr stop {running}")):
        with pytest.raises(RunDirError, match=says):
            resume_launch(run_dir)
    out = cli("resume", str(tmp_path / "nope"))
    assert out.returncode == 2 and "no run directory" in out.stderr


def test_resume_continues_exactly_the_directory_with_its_resolved_config(tmp_path):
    run_dir = _run(tmp_path, "smoke", "20261201_100000", status="interrupted")
    launch = resume_launch(run_dir)
    assert launch.args == ["train", "-c", str(run_dir / "config.yaml"), "-s", "train.resume=true", "--run-dir", str(run_dir)]
    sweep_dir = _run(tmp_path, "sw", "20261202_100000", kind="sweep", status="died",
                     sweep={"trials": 4, "storage": None, "notebook": True})
    assert resume_launch(sweep_dir).args == ["sweep", "-c", str(sweep_dir / "config.yaml"), "--space",
                                             str(sweep_dir / "space.yaml"), "--trials", "4", "--notebook",
                                             "--run-dir", str(sweep_dir)]
    nb = _run(tmp_path, "nb", "20261203_100000", kind="notebook", status="interrupted", notebook_name="02_finetune",
              notebook_parameters={"train_max_steps": 30, "tracking_wandb": "disabled"}, config_path="/c/smoke.yaml")
    assert resume_launch(nb).args == ["notebook", "02_finetune", "-f", "/c/smoke.yaml", "-p", "train_max_steps", "30",
                                      "-p", "tracking_wandb", "disabled", "-p", "train_resume", "true",
                                      "--run-dir", str(nb)]


def test_launch_checks_the_config_before_anything_starts(tmp_path):
    with pytest.raises(Exception, match="train.learning_rate"):
        train_launch(ROOT / "configs" / "smoke.yaml", [f"output_root={tmp_path}", "train.learning_rate=-1"])
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    launch = evaluate_launch(ROOT / "configs" / "smoke.yaml", [f"output_root={tmp_path}"], adapter="/a")
    assert launch.kind == "evaluate" and launch.args[-4:] == ["--adapter", "/a", "--run-dir", str(launch.run_dir)]


def test_the_runs_table_and_json_list_runs_and_sweeps(tmp_path):
    _run(tmp_path, "smoke", "20261201_100000", progress={"step": 30, "max_steps": 30},
         metrics={"before": {"cer": 0.61}, "after": {"cer": 0.12}})
    _run(tmp_path, "sweep-smoke", "20261202_100000", kind="sweep", status="interrupted",
         trials={"wanted": 4, "done": 2}, best={"cer": 0.2, "trial": 1})
    table = cli("runs", "--root", str(tmp_path))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["RUN", "KIND", "STATUS", "STARTED", "STEPS", "CER", "BEFORE", "->", "AFTER", "PID"]
    assert lines[1].split()[:3] == ["sweep-smoke_20261202_100000", "sweep", "interrupted"] and "2/4" in lines[1]
    assert lines[2].split()[:3] == ["smoke_20261201_100000", "train", "ok"] and "0.6100 -> 0.1200" in lines[2]
    rows = json.loads(cli("runs", "--root", str(tmp_path), "--json").stdout)
    assert [(r["kind"], r["step"], r["total"], r["cer_after"]) for r in rows] == [("sweep", 2, 4, 0.2), ("train", 30, 30, 0.12)]


def test_reading_runs_imports_no_torch_transformers_or_unsloth():
    code = ("import sys, deepsynth_ocr.runs, deepsynth_ocr.jobs.launch, deepsynth_ocr.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'unsloth') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_launch_list_stop_and_resume_a_smoke_training_to_the_uninterrupted_adapter(tmp_path, shared_tmp):
    """`stop` sends SIGTERM: the run saves a checkpoint of the step it is in, exits 143 saying how to resume, reads
    interrupted; `resume` continues the same directory to the uninterrupted run's losses and adapter."""
    plain = reference_run(shared_tmp, "train.save_steps=1000")

    launch = smoke_launch(tmp_path / "runs", "train.save_steps=1000")
    proc = start(launch, env=child_env(), cwd=ROOT)
    wait_for(lambda: logged(launch.run_dir, 5), proc)
    listed = json.loads(cli("runs", "--root", str(tmp_path / "runs"), "--json").stdout)
    assert [(r["dir"], r["kind"], r["status"], r["pids"], r["total"]) for r in listed] == [
        (str(launch.run_dir), "train", "running", [proc.pid], 30)]
    stopped = cli("stop", launch.run_dir.name, "--root", str(tmp_path / "runs"))
    assert stopped.returncode == 0, stopped.stderr
    assert f"{launch.run_dir}: interrupted; continue with: deepsynth-ocr resume {launch.run_dir}" in stopped.stdout
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    step = read_run(launch.run_dir).manifest["stopped_at_step"]
    assert read_run(launch.run_dir).status == "interrupted" and 5 <= step < 30

    resumed = cli("resume", str(launch.run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = read_run(launch.run_dir)
    assert (info.status, info.step, info.total) == ("ok", 30, 30)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [launch.run_dir.name]  # the same directory, no other
    a = load_file(str(plain / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(launch.run_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    got, expected = losses(launch.run_dir), losses(plain)
    assert [got[s] for s in range(step + 1, 31)] == [expected[s] for s in range(step + 1, 31)]  # bit for bit
    assert (launch.run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").is_file()
    log = (launch.run_dir / "console.log").read_text()
    assert log.count("run interrupted: SIGTERM at step") == 1  # the process's output and the kit's log, once each
    assert "stopped: SIGTERM at step" in log and f"deepsynth-ocr resume {launch.run_dir}" in log  # what stderr said
    assert f"resuming from {launch.run_dir / 'checkpoints' / f'checkpoint-{step}'}" in log


def _study(sweep_dir):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name="smoke", storage=JournalStorage(JournalFileBackend(str(sweep_dir / "study.journal"))))


@pytest.mark.slow
@pytest.mark.long
def test_sigterm_to_a_sweep_mid_trial_interrupts_the_study_and_a_resume_finishes_the_planned_trials_once(tmp_path):
    space = ROOT / "configs" / "sweeps" / "smoke-space.yaml"
    launch = sweep_launch(ROOT / "configs" / "smoke.yaml", space, 3, [
        f"output_root={tmp_path}", "train.max_steps=40", "train.save_steps=10", "train.logging_steps=1",
        "eval.max_samples=8", "eval.every_steps=0", "eval.baselines=[]", "tracking.wandb=disabled"])
    proc = start(launch, env=child_env(), cwd=ROOT)
    trial_1 = launch.run_dir / "trials" / "trial_001"
    wait_for(lambda: logged(trial_1, 12), proc, timeout=400)  # the second trial is past its first checkpoint
    stopped = cli("stop", str(launch.run_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    info = read_run(launch.run_dir)
    assert (info.kind, info.status, info.step, info.total) == ("sweep", "interrupted", 1, 3)
    assert info.manifest["trials"]["interrupted"] == 1 and info.manifest["workers"] == []
    assert read_run(trial_1).status == "interrupted"
    stopped_at = read_run(trial_1).manifest["stopped_at_step"]
    assert stopped_at >= 12

    resumed = cli("resume", str(launch.run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = _study(launch.run_dir).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.user_attrs["run_dir"] for t in complete}) == 3  # no trial ran twice in two directories
    retry = next(t for t in complete if t.user_attrs.get("retry_of") == 1)
    assert retry.params == trials[1].params and retry.user_attrs["run_dir"] == str(trial_1)
    rows = [json.loads(line) for line in (trial_1 / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)) == 40  # trial 1 went on from its checkpoint, no step trained twice
    info = read_run(launch.run_dir)
    assert (info.status, info.step) == ("ok", 3) and info.cer_after == min(t.value for t in complete)
    assert "interrupted" in (launch.run_dir / "report.html").read_text()


def test_listing_200_runs_reads_only_their_small_state_files(tmp_path, monkeypatch):
    """No metrics.jsonl, log or checkpoint is opened: the listing stays fast however long the runs trained
    (benchmarks/runs_list.py measures it)."""
    for i in range(200):
        run_dir = _run(tmp_path, f"r{i:03d}", f"20261201_{i:06d}", status="running" if i % 2 else "ok")
        (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    read = []
    real = pathlib.Path.read_text
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self, *a, **k: read.append(self.name) or real(self, *a, **k))
    runs = list_runs(tmp_path)
    assert len(runs) == 200 and sum(r.status == "died" for r in runs) == 100  # running, with no lock
    assert set(read) == {"manifest.json", ".lock", ".launch"}  # the last two: tried, and absent here


def test_prune_removes_old_finished_runs_says_what_and_never_a_running_or_queued_one(tmp_path, sleeper):
    old = [_run(tmp_path, f"r{i}", f"2026010{i}_100000", created_at=None) for i in range(1, 4)]
    for i, d in enumerate(old, 1):
        update_manifest(d, created_at=f"2026-01-0{i}T10:00:00")
    running = _run(tmp_path, "live", "20260101_090000", status="running")
    update_manifest(running, created_at="2026-01-01T09:00:00")
    (running / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": HOST}))
    queued = tmp_path / "waiting_20260101_080000"
    queued.mkdir()
    write_launch(queued, None, "train", "waiting", ["train"])
    fresh = _run(tmp_path, "new", "20991231_100000")
    update_manifest(fresh, created_at=datetime.now().isoformat(timespec="seconds"))
    dry = cli("runs", "prune", "--root", str(tmp_path), "--older-than", "30", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("would remove ") == 4 and all(d.exists() for d in old)
    out = cli("runs", "prune", "--root", str(tmp_path), "--keep", "1")
    assert out.returncode == 0, out.stderr
    assert [d.exists() for d in old] == [False, False, False] and running.exists() and queued.exists() and fresh.exists()
    assert all(f"removing {d}" in out.stdout for d in old) and "removed 3 run(s)" in out.stdout
    assert cli("runs", "prune", "--root", str(tmp_path)).returncode == 2  # nothing said: nothing removed
