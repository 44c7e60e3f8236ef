"""Runs that fail safe: a run lock, stale locks, a stop on SIGTERM that resumes exactly, a stop on a
non-finite loss, partial checkpoints, secrets kept out of run directories, exit codes."""

import json
import signal
import socket
import subprocess
import sys

import pytest

from deepsynth_ocr.cli import main
from deepsynth_ocr.errors import NonFiniteLoss
from deepsynth_ocr.jobs.launch import notebook_launch, start
from deepsynth_ocr.jobs.train import train
from deepsynth_ocr.runs import RunLocked

from .conftest import ROOT
from .runs_helpers import (
    child_env,
    cli,
    logged,
    losses,
    only_run_dir,
    reference_run,
    signal_when,
    smoke_launch,
    wait_for,
)


def _quick(cfg, steps=4, save=2):
    cfg.train.max_steps, cfg.train.save_steps, cfg.train.logging_steps = steps, save, 1
    cfg.eval.enabled, cfg.tracking.wandb = False, "disabled"
    return cfg


def _lock(run_dir, pid, host=None):
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "then"}))


def test_a_run_directory_being_written_is_refused_in_one_line_naming_its_holder(tmp_path, smoke_cfg):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = tmp_path / "runs" / "smoke_1"
        _lock(run_dir, holder.pid)
        with pytest.raises(RunLocked, match=rf"pid {holder.pid} on host {socket.gethostname()} since then"):
            train(_quick(smoke_cfg), run_dir)
        assert not (run_dir / "manifest.json").exists()  # the holder's directory is left alone
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_on_this_host_is_taken_over_with_a_warning(tmp_path, smoke_cfg, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run_dir = tmp_path / "runs" / "smoke_1"
    _lock(run_dir, gone.pid)
    result = train(_quick(smoke_cfg), run_dir)
    assert f"taking over the stale lock of pid {gone.pid}" in (result.run_dir / "console.log").read_text()
    assert not (run_dir / ".lock").exists()  # released at the end


def test_a_lock_held_on_another_host_is_never_taken_over(tmp_path, smoke_cfg):
    run_dir = tmp_path / "runs" / "smoke_1"
    _lock(run_dir, 999_999_999, host="another-host")
    with pytest.raises(RunLocked, match="another-host"):
        train(_quick(smoke_cfg), run_dir)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, smoke_cfg, monkeypatch):
    from deepsynth_ocr.training import KitTrainer

    real = KitTrainer.compute_loss

    def turns_nan_at_step_5(self, model, inputs, *args, **kwargs):
        loss = real(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step >= 4 else loss

    monkeypatch.setattr(KitTrainer, "compute_loss", turns_nan_at_step_5)
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 5; the last good checkpoint is .*checkpoint-4"):
        train(_quick(smoke_cfg, steps=20, save=2))
    run_dir = only_run_dir(tmp_path / "runs")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed: non-finite loss at step 5" and manifest["stopped_at_step"] == 5
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert not (run_dir / "adapter").exists()


def test_a_checkpoint_cut_short_is_skipped_for_the_one_before(tmp_path, smoke_cfg):
    first = train(_quick(smoke_cfg, steps=4, save=2))
    (first.run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").unlink()  # a kill mid-save
    smoke_cfg.train.resume, smoke_cfg.train.max_steps = True, 6
    resumed = train(smoke_cfg)
    log = (resumed.run_dir / "console.log").read_text()
    assert resumed.run_dir == first.run_dir
    assert "checkpoint-4 is incomplete (no trainer_state.json)" in log
    assert f"resuming from {first.run_dir / 'checkpoints' / 'checkpoint-2'}" in log
    assert [k for k in losses(first.run_dir) if k > 2][-2:] == [5, 6]  # trained on from step 3


def test_planted_secrets_appear_in_no_file_of_the_run_directory(tmp_path):
    """Fake tokens in the environment and in a config value on the command line; the run (W&B offline,
    through the CLI in its own process) is scanned byte by byte."""
    secrets = {"HF_TOKEN": "hf_FAKEtoken1234567890", "WANDB_API_KEY": "wandbFAKEkey0987654321"}
    env = {**child_env(), **secrets, "HOME": str(tmp_path / "home")}
    launch = smoke_launch(tmp_path / "runs", "train.max_steps=2", "eval.enabled=true", "eval.max_samples=2",
                          "tracking.wandb=offline", f"export.hub_repo_id=someone/{secrets['HF_TOKEN']}")
    proc = subprocess.run(launch.command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = only_run_dir(tmp_path / "runs")
    assert list((run_dir / "wandb").glob("offline-run-*"))
    leaks = []
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [f"{path.relative_to(run_dir)}: {n}" for n, v in secrets.items() if v.encode() in data]
    assert leaks == []
    assert "someone/***" in (run_dir / "config.yaml").read_text()
    assert "someone/***" in " ".join(json.loads((run_dir / "manifest.json").read_text())["command"])


def test_infer_given_only_missing_paths_exits_non_zero_in_one_line(tmp_path, capsys):
    code = main(["infer", str(tmp_path / "nope.png"), str(tmp_path / "none" / "*.png"), "-o", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "no input found" in err and "nope.png" in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_planted_secrets_appear_nowhere_in_a_notebook_run(tmp_path):
    """papermill: the injected parameters and the cells' outputs (the config is shown) are masked too."""
    token = "hf_FAKEnotebookToken12345"
    env = {**child_env(), "HF_TOKEN": token, "HOME": str(tmp_path / "home")}
    run_dir = tmp_path / "nb"
    launch = notebook_launch("02_finetune", "configs/smoke.yaml", {"train_max_steps": 2, "eval_max_samples": 2,
                             "tracking_wandb": "offline", "export_hub_repo_id": f"someone/{token}"}, run_dir)
    proc = subprocess.run(launch.command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "02_finetune.ipynb").is_file()
    leaks = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaks == []
    assert "someone/***" in (run_dir / "02_finetune.ipynb").read_text()


@pytest.mark.slow
def test_sigterm_to_a_papermill_run_checkpoints_and_the_notebook_resumes_to_the_uninterrupted_result(tmp_path, shared_tmp):
    expected = losses(reference_run(shared_tmp, "train.save_steps=1000"))
    params = {"train_max_steps": 30, "train_save_steps": 1000, "train_logging_steps": 1,
              # evaluation stays on (the notebook shows it) but small; greedy decoding leaves the training RNG alone
              "eval_max_samples": 4, "eval_every_steps": 0, "tracking_wandb": "disabled"}
    launch = notebook_launch("02_finetune", "configs/smoke.yaml", params, tmp_path / "nb")
    proc = subprocess.Popen(launch.command, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    run_dir, err = signal_when(proc, lambda: logged(launch.run_dir, 10), signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    step = manifest["stopped_at_step"]
    assert manifest["status"] == "interrupted" and 10 <= step < 30
    resumed = cli("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = losses(run_dir)
    assert [got[s] for s in range(step + 1, 31)] == [expected[s] for s in range(step + 1, 31)]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_a_notebook_run_stopped_through_its_lock_holder_is_interrupted(tmp_path):
    """`deepsynth-ocr stop` signals the kernel that holds the run's lock, not the papermill process."""
    params = {"train_max_steps": 300, "train_logging_steps": 1, "eval_enabled": False, "tracking_wandb": "disabled"}
    launch = notebook_launch("02_finetune", "configs/smoke.yaml", params, tmp_path / "nb")
    proc = start(launch, env=child_env(), cwd=ROOT)
    wait_for(lambda: logged(launch.run_dir, 3), proc)
    holder = json.loads((launch.run_dir / ".lock").read_text())["pid"]
    assert holder != proc.pid  # the kernel, a child of the notebook process
    stopped = cli("stop", str(launch.run_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert f"sent SIGTERM to pid {holder}" in stopped.stdout and f"{launch.run_dir}: interrupted" in stopped.stdout
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    manifest = json.loads((launch.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["kind"] == "notebook" and manifest["workers"] == []
    assert "failing_cell" not in manifest
