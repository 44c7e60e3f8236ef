"""``train.resume`` after a SIGKILL continues the run: the same loss at every later step and the same
final adapter as the run that was never interrupted, to float32 rounding (GPU_AUDIT.md item 7).

Rounding, not bit equality: on a shared CI machine two identical CPU runs have differed in the 7th
significant digit (BLAS kernels chosen by alignment and thread timing). What tells a resume from a
silent restart is that the resumed attempt logs no step at or before the checkpoint."""

import json
import re
import signal
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from .conftest import ROOT
from .runs_helpers import STEPS, child_env, cli, logged, losses, only_run_dir, signal_when, smoke_launch

KILL_AFTER = 20


AUGMENTED = "augment.enabled=true"  # on-the-fly augmentation must not break the resume's exactness (issue 24)


def _kill_after_checkpoint(output_root) -> tuple:
    """Start a run, SIGKILL it once checkpoint-KILL_AFTER is complete (training has logged the step after it)."""
    launch = smoke_launch(output_root, AUGMENTED)
    proc = subprocess.Popen(launch.command, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def ready():
        run_dir = logged(launch.run_dir, KILL_AFTER + 1)
        complete = run_dir and (run_dir / "checkpoints" / f"checkpoint-{KILL_AFTER}" / "trainer_state.json").is_file()
        return run_dir if complete else None

    run_dir, _ = signal_when(proc, ready, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    return run_dir


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_reads_died_and_resumes_by_directory_to_the_uninterrupted_result(tmp_path):
    plain = smoke_launch(tmp_path / "plain", AUGMENTED)
    subprocess.run(plain.command, cwd=ROOT, env=child_env(), check=True, capture_output=True)

    killed = tmp_path / "killed"
    killed_dir = _kill_after_checkpoint(killed)
    assert json.loads((killed_dir / "manifest.json").read_text())["status"] == "running"  # SIGKILL: no chance to record
    listed = json.loads(cli("runs", "--root", str(killed), "--json").stdout)
    assert [(r["dir"], r["status"], r["pids"]) for r in listed] == [(str(killed_dir), "died", [])]
    assert max(losses(killed_dir)) < STEPS
    # train.resume_from: a new run in its own directory continues from the killed run's checkpoint, which stays put.
    checkpoint = killed_dir / "checkpoints" / f"checkpoint-{KILL_AFTER}"
    fork = smoke_launch(tmp_path / "fork", AUGMENTED, f"train.resume_from={checkpoint}")
    forked = subprocess.run(fork.command, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    assert forked.returncode == 0, forked.stderr[-3000:]
    assert sorted(losses(fork.run_dir)) == list(range(KILL_AFTER + 1, STEPS + 1))  # nothing before the checkpoint
    assert [losses(fork.run_dir)[s] for s in range(KILL_AFTER + 1, STEPS + 1)] == pytest.approx(
        [losses(plain.run_dir)[s] for s in range(KILL_AFTER + 1, STEPS + 1)], rel=1e-5)
    assert (checkpoint / "trainer_state.json").is_file() and max(losses(killed_dir)) < STEPS  # the source untouched
    resumed = cli("resume", str(killed_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run_dir(killed) == killed_dir  # the same run directory, continued
    expected = losses(plain.run_dir)
    # metrics.jsonl holds both attempts; the resumed attempt's rows come last and win.
    got = losses(killed_dir)
    after = range(KILL_AFTER + 1, STEPS + 1)
    loss_rows = [json.loads(line) for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    early = [r["step"] for r in loss_rows if "loss" in r and r["step"] <= KILL_AFTER]
    assert len(early) == len(set(early)), "the resumed attempt trained again from before its checkpoint"
    assert [got[s] for s in after] == pytest.approx([expected[s] for s in after], rel=1e-5)
    a = load_file(str(plain.run_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(killed_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    far = [k for k in a if not torch.allclose(b[k].float(), a[k].float(), rtol=1e-4, atol=1e-5)]
    assert not far, f"{len(far)} adapter tensors differ beyond rounding, e.g. {far[:3]}"
    manifest = json.loads((killed_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["attempts"][0]["status"] == "running"  # the attempt that died
    log = (killed_dir / "console.log").read_text()
    assert f"resuming from {killed_dir / 'checkpoints' / f'checkpoint-{KILL_AFTER}'}" in log
    assert "adapter tensors restored by exact key" in log


def test_resume_refuses_a_checkpoint_whose_adapter_keys_do_not_match(tmp_path, smoke_cfg):
    """A checkpoint that does not fit the model fails loudly, never trains on from a fresh adapter."""
    from safetensors.torch import save_file

    from deepsynth_ocr.jobs.train import train
    from deepsynth_ocr.models.adapters import AdapterError

    smoke_cfg.train.max_steps, smoke_cfg.train.save_steps = 2, 2
    smoke_cfg.eval.enabled, smoke_cfg.tracking.wandb = False, "disabled"
    first = train(smoke_cfg)
    weights = first.run_dir / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors"
    state = load_file(str(weights))
    renamed = {k.replace("language_model.", "language_model.language_model.", 1): v for k, v in state.items()}
    save_file(renamed, str(weights))  # the doubled prefix that PeftModel.from_pretrained produces
    smoke_cfg.train.resume, smoke_cfg.train.max_steps = True, 4
    with pytest.raises(AdapterError, match="matches no parameter"):
        train(smoke_cfg)
    manifest = json.loads((first.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "matches no parameter" in manifest["error"]
    assert torch.equal(load_file(str(weights))[next(iter(renamed))], next(iter(renamed.values())))


def test_resume_from_names_what_is_wrong_with_the_checkpoint_before_anything_loads(tmp_path, smoke_cfg):
    from deepsynth_ocr.config import ConfigError
    from deepsynth_ocr.errors import UserError
    from deepsynth_ocr.jobs.train import train

    checkpoint = tmp_path / "checkpoint-10"
    cfg = smoke_cfg
    cfg.output_root, cfg.train.max_steps, cfg.train.resume_from = str(tmp_path / "runs"), 30, str(checkpoint)
    for setup, says in [(lambda: None, "is not a directory"),
                        (lambda: checkpoint.mkdir(), "is not a complete checkpoint (no trainer_state.json"),
                        (lambda: [(checkpoint / f).write_text("{}" if f.endswith(".json") else "x") for f in
                                  ("trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_model.safetensors")]
                         and (checkpoint / "trainer_state.json").write_text('{"global_step": 40}'),
                         "is at step 40, and train.max_steps is 30")]:
        setup()
        with pytest.raises(UserError, match=re.escape(says)):
            train(cfg)
        assert not (tmp_path / "runs").exists()  # refused before a run directory was made
    cfg.train.resume = True
    with pytest.raises(ConfigError, match="choose one"):
        cfg.validate()
