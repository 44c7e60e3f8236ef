"""``train.resume`` after a SIGKILL continues the run: the same loss at every later step and the same
final adapter as the run that was never interrupted, to float32 rounding (GPU_AUDIT.md item 7).

Rounding, not bit equality: on a shared CI machine two identical CPU runs have differed in the 7th
significant digit (BLAS kernels chosen by alignment and thread timing). What tells a resume from a
silent restart is that the resumed attempt logs no step at or before the checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import ROOT

STEPS, KILL_AFTER = 30, 20


def _train_command(output_root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "deepsynth_ocr.cli", "train", "-c", "configs/smoke.yaml",
            "-s", f"output_root={output_root}", "-s", f"train.max_steps={STEPS}", "-s", "train.save_steps=10",
            "-s", "train.logging_steps=1", "-s", "eval.enabled=false", "-s", "tracking.wandb=disabled", *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _only_run_dir(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _signal_when(proc, ready, sig) -> tuple[Path, str]:
    """Send ``sig`` to ``proc`` once ``ready()`` returns its run directory (None until then); wait for the
    process to end. Returns the run directory and what the process wrote to stderr (if piped)."""
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            run_dir = ready()
            if run_dir is not None:
                proc.send_signal(sig)
                break
            assert proc.poll() is None, "the run ended before the signal"
            time.sleep(0.02)
        else:
            pytest.fail("the run did not get there within 300 s")
    finally:
        _, err = proc.communicate(timeout=180)
    return run_dir, err or ""


def _logged(run_dir: Path | None, step: int) -> Path | None:
    """``run_dir`` once its metrics.jsonl holds ``step``."""
    metrics = run_dir / "metrics.jsonl" if run_dir else None
    return run_dir if metrics and metrics.is_file() and step in _losses(run_dir) else None


def _newest_run(output_root: Path) -> Path | None:
    return next(iter(output_root.glob("smoke_*")), None) if output_root.is_dir() else None


def _kill_after_checkpoint(output_root: Path) -> Path:
    """Start a run, SIGKILL it once checkpoint-KILL_AFTER is complete (training has logged the step after it)."""
    proc = subprocess.Popen(_train_command(output_root), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def ready():
        run_dir = _logged(_newest_run(output_root), KILL_AFTER + 1)
        complete = run_dir and (run_dir / "checkpoints" / f"checkpoint-{KILL_AFTER}" / "trainer_state.json").is_file()
        return run_dir if complete else None

    run_dir, _ = _signal_when(proc, ready, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    return run_dir


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    plain = tmp_path / "plain"
    subprocess.run(_train_command(plain), cwd=ROOT, env=_env(), check=True, capture_output=True)
    plain_dir = _only_run_dir(plain)

    killed = tmp_path / "killed"
    killed_dir = _kill_after_checkpoint(killed)
    assert json.loads((killed_dir / "manifest.json").read_text())["status"] == "running"  # SIGKILL: no chance to record
    assert max(_losses(killed_dir)) < STEPS
    resumed = subprocess.run(_train_command(killed, "-s", "train.resume=true"), cwd=ROOT, env=_env(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _only_run_dir(killed) == killed_dir  # the same run directory, continued
    expected = _losses(plain_dir)
    # metrics.jsonl holds both attempts; the resumed attempt's rows come last and win.
    got = _losses(killed_dir)
    after = range(KILL_AFTER + 1, STEPS + 1)
    loss_rows = [json.loads(line) for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    early = [r["step"] for r in loss_rows if "loss" in r and r["step"] <= KILL_AFTER]
    assert len(early) == len(set(early)), "the resumed attempt trained again from before its checkpoint"
    assert [got[s] for s in after] == pytest.approx([expected[s] for s in after], rel=1e-5)
    a = load_file(str(plain_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(killed_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    far = [k for k in a if not torch.allclose(b[k].float(), a[k].float(), rtol=1e-4, atol=1e-5)]
    assert not far, f"{len(far)} adapter tensors differ beyond rounding, e.g. {far[:3]}"
    assert json.loads((killed_dir / "manifest.json").read_text())["status"] == "ok"
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
