"""Data-parallel training: the CLI unchanged under torchrun and under `accelerate launch` with the shipped DDP
config, 2 CPU processes over gloo, one run directory written by the main process, and the loss curve of the
single-process run at the same global batch."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deepsynth_ocr.models import backends

from .conftest import ROOT
from .runs_helpers import child_env, losses, smoke_launch

STEPS = 10
# Measured: relative differences of at most 3e-7 per step (reduction order across two processes).
TOLERANCE = 1e-5


def _train(root, per_device, launcher=()):
    launch = smoke_launch(root, f"train.max_steps={STEPS}", f"train.per_device_batch_size={per_device}", "train.save_steps=5")
    cmd = [*launcher, *launch.command[1:]] if launcher else launch.command  # the launcher runs the same -m module
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return launch.run_dir


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process run both launchers are held to."""
    return _train(tmp_path_factory.mktemp("single"), 16)


BIN = os.path.dirname(sys.executable)
LAUNCHERS = {
    "torchrun": [os.path.join(BIN, "torchrun"), "--nproc_per_node", "2", "--master_port", "29533"],
    # The shipped config as a user runs it; without CUDA, accelerate's processes join over gloo.
    "accelerate": [os.path.join(BIN, "accelerate"), "launch", "--config_file", str(ROOT / "configs" / "accelerate" / "ddp.yaml"),
                   "--main_process_port", "29534"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(single, launcher, tmp_path):
    ddp = _train(tmp_path / "ddp", 8, LAUNCHERS[launcher])
    a, b = losses(single), losses(ddp)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
    assert worst <= TOLERANCE, worst
    manifest = json.loads((ddp / "manifest.json").read_text())
    assert (manifest["status"], manifest["world_size"], manifest["global_batch"]) == ("ok", 2, 16)
    assert manifest["backend"] == "hf"
    # Only the main process wrote: one log line per step, one adapter, the checkpoints with both ranks' RNG.
    assert len((ddp / "metrics.jsonl").read_text().splitlines()) == STEPS + 1  # + the end-of-training summary
    assert (ddp / "adapter" / "adapter_model.safetensors").is_file()
    assert {p.name for p in (ddp / "checkpoints" / "checkpoint-5").glob("rng_state_*.pth")} == {
        "rng_state_0.pth", "rng_state_1.pth"}


def test_unsloth_is_refused_under_a_launcher_and_auto_picks_hf(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(backends.UserError, match="trains on one GPU"):
        backends.choose_backend("unsloth")
    assert backends.choose_backend("auto")[0] == "hf"


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [d for c in map(int, children) for d in (c, *_descendants(c))]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal_torchrun(tmp_path, sig: int, port: str):
    """A 2-rank torchrun run signalled after step 6: SIGTERM to the launcher, which forwards it to every rank; or
    SIGKILL to the launcher and every rank at once (torchrun starts each rank in a session of its own), as a crash of
    the machine would. Returns the launcher, the run directory and the launcher's stderr."""
    from .runs_helpers import logged, wait_for

    launch = smoke_launch(tmp_path / "ddp", f"train.max_steps={STEPS}", "train.per_device_batch_size=8", "train.save_steps=5")
    launcher = [*LAUNCHERS["torchrun"][:-1], port]
    proc = subprocess.Popen([*launcher, *launch.command[1:]], cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        run_dir = wait_for(lambda: logged(launch.run_dir, 6), proc)
        ranks = _descendants(proc.pid)
        for pid in [proc.pid, *ranks] if sig == signal.SIGKILL else [proc.pid]:
            os.kill(pid, sig)
    finally:
        _, err = proc.communicate(timeout=180)
    wait_for(lambda: True if not any(map(_alive, ranks)) else None, timeout=30)  # no rank left running
    return launcher, run_dir, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_signal_to_torchrun_leaves_a_checkpoint_both_ranks_wrote_and_the_resume_matches_one_process(single, tmp_path, sig):
    """Issue 32: SIGTERM to the launcher ends both ranks at the same step with one complete checkpoint of it and
    status interrupted, no rank left waiting; SIGKILL of every process leaves the run ``died`` with its last periodic
    checkpoint (step 5). Either way the resume under torchrun follows the one-process loss curve."""
    from deepsynth_ocr.jobs.launch import resume_launch
    from deepsynth_ocr.runs import read_run

    launcher, run_dir, err = _signal_torchrun(tmp_path, sig, "29535" if sig == signal.SIGTERM else "29536")
    status = read_run(run_dir).status
    if sig == signal.SIGTERM:
        assert status == "interrupted", (read_run(run_dir).error, err[-2000:])
        resume_from = max(losses(run_dir))  # the step the stop saved
    else:
        assert status == "died", err[-2000:]  # no process left to record anything
        resume_from = 5
    assert resume_from < STEPS
    checkpoint = run_dir / "checkpoints" / f"checkpoint-{resume_from}"
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert (checkpoint / "trainer_state.json").is_file()

    resume = resume_launch(run_dir)
    resumed = subprocess.run([*launcher, *resume.command[1:]], cwd=ROOT, env=child_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoint}" in (run_dir / "console.log").read_text()
    a, b = losses(single), losses(run_dir)
    assert sorted(b) == list(range(1, STEPS + 1))
    worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in range(resume_from + 1, STEPS + 1))
    assert worst <= TOLERANCE, worst
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "ok"


DEEPSPEED = [os.path.join(BIN, "accelerate"), "launch", "--main_process_port", "29537", "--mixed_precision", "no",
             "--config_file"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="DeepSpeed is not in the CPU stack: `make test-deepspeed` installs it beside and runs this")
def test_deepspeed_zero2_matches_one_process_and_zero3_is_refused_before_loading(tmp_path):
    """Issue 32: the shipped ZeRO-2 config through accelerate launch, DeepSpeed's CPU accelerator over gloo, against
    one process with the same optimizer (DeepSpeed wraps torch's AdamW, not bitsandbytes')."""
    adamw = ("train.optim=adamw_torch",)
    single = smoke_launch(tmp_path / "single", f"train.max_steps={STEPS}", "train.per_device_batch_size=16", *adamw)
    subprocess.run(single.command, cwd=ROOT, env=child_env(), check=True, capture_output=True)
    zero2 = smoke_launch(tmp_path / "zero2", f"train.max_steps={STEPS}", "train.per_device_batch_size=8",
                         "train.save_steps=5", *adamw)
    cmd = [*DEEPSPEED, str(ROOT / "configs" / "accelerate" / "deepspeed-zero2.yaml"), *zero2.command[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(single.run_dir), losses(zero2.run_dir)
    assert sorted(b) == list(range(1, STEPS + 1))
    assert max(abs(a[s] - b[s]) / abs(a[s]) for s in a) <= TOLERANCE
    checkpoint = zero2.run_dir / "checkpoints" / "checkpoint-5"
    assert (checkpoint / "latest").is_file() and (checkpoint / "adapter_model.safetensors").is_file()  # DeepSpeed's own
    assert (zero2.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    zero3 = smoke_launch(tmp_path / "zero3", f"train.max_steps={STEPS}", *adamw)
    cmd = [*DEEPSPEED, str(ROOT / "configs" / "accelerate" / "deepspeed-zero3.yaml"), *zero3.command[1:]]
    refused = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    assert refused.returncode != 0 and "DeepSpeed ZeRO-3 is not supported" in refused.stderr
    assert not list((tmp_path / "zero3").glob("*/manifest.json"))  # refused before a run directory was made


def test_fsdp_on_cpu_and_zero3_are_refused_in_one_line_before_anything_loads(monkeypatch):
    """accelerate engages FSDP only on accelerator devices: on CPU processes the shipped fsdp config trained with DDP
    and sharded nothing (seen in the log), so the kit says so instead; ZeRO-3 cannot save its adapter."""
    from deepsynth_ocr.errors import UserError
    from deepsynth_ocr.ranks import refuse_unsupported_sharding

    refuse_unsupported_sharding()  # nothing asked for: nothing refused
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UserError, match="FSDP without a GPU.*ddp.yaml"):
        refuse_unsupported_sharding()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(UserError, match="ZeRO-3 is not supported"):
        refuse_unsupported_sharding()
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    refuse_unsupported_sharding()
