"""What the tests of runs as processes share: the smoke training's launch, the environment of a child
process, reading a run's losses, and signalling a process once its run reaches a point."""

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from deepsynth_ocr.jobs.launch import PROGRAM, Launch, train_launch

from .conftest import ROOT

STEPS = 30
# Short, checkpointing every 10 steps, logging every step, no evaluation or W&B: the runs of the resume tests.
QUICK = (f"train.max_steps={STEPS}", "train.save_steps=10", "train.logging_steps=1", "eval.enabled=false",
         "tracking.wandb=disabled")


def smoke_launch(output_root: Path, *overrides: str, run_dir: Path | None = None) -> Launch:
    """``deepsynth-ocr train`` of configs/smoke.yaml into a new run directory under ``output_root``."""
    return train_launch(ROOT / "configs" / "smoke.yaml", [f"output_root={output_root}", *QUICK, *overrides], run_dir)


def reference_run(shared: Path, *overrides: str) -> Path:
    """The run directory of an uninterrupted smoke training with ``overrides``, trained once per test session: the
    resume tests of several files compare against the same reference, and the xdist workers share it through
    ``shared`` (a lock makes a second worker wait for the first instead of training it again)."""
    from filelock import FileLock

    key = hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:12]
    root = shared / f"reference-{key}"
    with FileLock(str(root) + ".lock"):
        done = [p for p in root.iterdir() if (p / "adapter").is_dir()] if root.is_dir() else []
        if done:
            return done[0]
        shutil.rmtree(root, ignore_errors=True)  # a reference cut short by a failed test is trained again
        launch = smoke_launch(root, *overrides)
        subprocess.run(launch.command, cwd=ROOT, env=child_env(), check=True, capture_output=True)
        return launch.run_dir


def child_env() -> dict:
    """The environment of a job the tests start: the checkout first on the path, then what the caller added
    (``make test-deepspeed`` puts DeepSpeed's folder there)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> training loss from metrics.jsonl; a resumed attempt's rows come last and win."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def only_run_dir(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def logged(run_dir: Path | None, step: int) -> Path | None:
    """``run_dir`` once its metrics.jsonl holds ``step``."""
    metrics = run_dir / "metrics.jsonl" if run_dir else None
    return run_dir if metrics and metrics.is_file() and step in losses(run_dir) else None


def wait_for(ready, proc=None, timeout: float = 300):
    """``ready()``'s first non-None value; fails when ``proc`` ends first or after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = ready()
        if value is not None:
            return value
        assert proc is None or proc.poll() is None, "the process ended before it got there"
        time.sleep(0.02)
    pytest.fail(f"not there within {timeout} s")


def signal_when(proc, ready, sig) -> tuple[Path, str]:
    """Send ``sig`` to ``proc`` once ``ready()`` returns its run directory; wait for the process to end.
    Returns the run directory and what the process wrote to stderr (if piped)."""
    try:
        run_dir = wait_for(ready, proc)
        proc.send_signal(sig)
    finally:
        _, err = proc.communicate(timeout=180)
    return run_dir, err or ""


def cli(*args: str) -> subprocess.CompletedProcess:
    """``deepsynth-ocr ARGS`` in its own process, as a user types it."""
    return subprocess.run([*PROGRAM, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True)
