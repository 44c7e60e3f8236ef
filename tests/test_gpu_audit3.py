"""GPU_AUDIT_3's findings that a CPU can see: each test fails on the code before its fix."""

import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

from deepsynth_ocr import gpu_proof

from .conftest import ROOT


def test_gpu_smoke_describes_the_run_with_the_keys_measured_run_returns():
    """C1: it printed r['s_per_step'], a key measured_run never had, after the whole run."""
    from deepsynth_ocr.gpu_smoke import describe

    r = {"backend": "hf", "device": "NVIDIA H100", "peak_reserved_gib": 5.5, "peak_allocated_gib": 4.25, "steps": 30,
         "steady_s_per_step": 0.42, "s_per_step_whole_run": 0.61, "cer_before": 0.6, "cer_after": 0.2, "run_dir": "runs/x"}
    text = describe(r)
    assert "steady 0.420 s/step, 0.610 over the whole run of 30 steps" in text and "reserved 5.50 GiB" in text
    assert "CER before 0.6000 -> after 0.2000" in text
    assert "steady n/a" in describe({**r, "steady_s_per_step": None, "peak_reserved_gib": None})


class _FastVisionModel:
    """Stands in for Unsloth's class: a full fine-tune load unfreezes everything, as Unsloth's setup does."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    def from_pretrained(self, **kwargs):
        self.kwargs = kwargs
        for p in self.model.parameters():
            p.requires_grad_(True)
        return self.model, self.processor

    def for_inference(self, model):
        pass


def test_unsloth_full_fine_tuning_keeps_the_vision_tower_frozen_and_the_tiny_base_keeps_pil(monkeypatch, tiny_parts):
    """C3: full_finetuning=True sets requires_grad on every parameter, and the kit's check then raised. W2: Unsloth's
    processor load picks torchvision where it imports; the tiny base keeps the PIL processor it was measured with."""
    from deepsynth_ocr.config import RunConfig
    from deepsynth_ocr.models import backends
    from deepsynth_ocr.models.tiny import build_tiny_model, build_tiny_tokenizer

    _, processor, family = tiny_parts
    model = build_tiny_model(build_tiny_tokenizer(), family.tiny_geometry, seed=0)
    fast = _FastVisionModel(model, processor=object())
    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastVisionModel=fast))
    cfg = RunConfig()
    cfg.lora.enabled = False
    loaded = backends.load_unsloth(cfg, family, "test", for_training=True)
    assert fast.kwargs["full_finetuning"] is True
    vision = [p for n, p in loaded.model.named_parameters() if backends.is_vision_param(n, family)]
    assert vision and not any(p.requires_grad for p in vision)
    assert loaded.trainable_params > 0
    assert type(loaded.processor.image_processor).__name__ == "DeepseekOcr2ImageProcessorPil"


def test_the_tiny_base_processor_saves_no_backend_keyword_into_its_tokenizer(tmp_path):
    """M2: a backend keyword reached every sub-processor, and the tokenizer saved it."""
    from deepsynth_ocr.models.backends import load_processor
    from deepsynth_ocr.models.families import get_family
    from deepsynth_ocr.models.tiny import BUNDLED_BASE

    processor = load_processor(str(BUNDLED_BASE), get_family("tiny"))
    assert type(processor.image_processor).__name__ == "DeepseekOcr2ImageProcessorPil"
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()).get("backend") != "pil"
    # and the kit loads it back with PIL wherever torchvision imports (load_processor), not through this file


def _probe_unsloth(tmp_path, backend: str) -> bool:
    """Whether a stand-in Unsloth got imported by the CLI for a config with ``model.backend: backend``."""
    fake = tmp_path / "unsloth"
    fake.mkdir(exist_ok=True)
    (fake / "__init__.py").write_text("import os\nopen(os.environ['PROBE_OUT'], 'w').write('imported')\n")
    probe = tmp_path / f"probe-{backend}"
    env = {k: v for k, v in os.environ.items() if k != "DEEPSYNTH_SKIP_UNSLOTH"}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), UNSLOTH_ALLOW_CPU="1", PROBE_OUT=str(probe))
    out = subprocess.run([sys.executable, "-m", "deepsynth_ocr.cli", "evaluate", "-c", "configs/smoke.yaml",
                          "-s", f"model.backend={backend}", "-s", "data.eval_path=does/not/exist.jsonl",
                          "-s", f"output_root={tmp_path / 'runs'}"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "does/not/exist.jsonl" in out.stderr  # it stopped on the missing file, as meant
    return probe.is_file()


def test_the_hf_backend_is_transformers_as_released_and_auto_still_imports_unsloth_first(tmp_path):
    """W3: importing Unsloth patches transformers' 4-bit loader for every backend; the kit's hf backend is
    transformers + peft as released, so the CLI keeps Unsloth out once it knows the backend is hf."""
    assert _probe_unsloth(tmp_path, "hf") is False
    assert _probe_unsloth(tmp_path, "auto") is True


def test_both_cases_get_the_same_allocator_and_the_unsloth_case_one_gpu_and_its_logs(monkeypatch):
    """W4 and L2's environment."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hf, unsloth = gpu_proof.child_env("hf"), gpu_proof.child_env("unsloth")
    assert hf["PYTORCH_ALLOC_CONF"] == unsloth["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    assert unsloth["CUDA_VISIBLE_DEVICES"] == "0" and unsloth["UNSLOTH_ENABLE_LOGGING"] == "1"
    assert "UNSLOTH_ENABLE_LOGGING" not in hf or hf["UNSLOTH_ENABLE_LOGGING"] == os.environ.get("UNSLOTH_ENABLE_LOGGING")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu_proof.child_env("unsloth")["CUDA_VISIBLE_DEVICES"] == "3"  # the machine's own choice is kept


STAND_IN_CASE = """
import json, pathlib, sys, time
run = pathlib.Path(sys.argv[1]) / 'gpu-proof-unsloth_20261206_120000'
run.mkdir(parents=True)
(run / 'config.yaml').write_text('name: gpu-proof-unsloth\\n')
(run / 'manifest.json').write_text(json.dumps({'name': 'gpu-proof-unsloth', 'kind': 'train', 'status': 'running',
    'created_at': '2026-12-06T12:00:00', 'timings': {'load_s': 41.5, 'eval_before_s': 12.0},
    'progress': {'step': 17, 'max_steps': 60}, 'metrics': {'before': {'cer': 0.62}}}))
(run / 'console.log').write_text('loading\\ncompiling decoder layer 3\\n')
print('compiling', flush=True)
time.sleep(120)
"""


def test_a_case_that_times_out_still_brings_back_its_manifest_figures_and_console_tail(tmp_path):
    """L1 and L2: the last case gets what remains of the whole call's deadline, and when it is killed its run
    directory's timings, progress and metrics and its console log are in the JSON all the same."""
    runs = tmp_path / "runs"
    steps = [gpu_proof.Step("quick", [sys.executable, "-c", "import json, sys; json.dump({'x': 1}, open(sys.argv[-1], 'w'))"],
                            30, dict(os.environ)),
             gpu_proof.Step("unsloth", [sys.executable, "-c", STAND_IN_CASE, str(runs)], 270, dict(os.environ),
                            runs=(str(runs), "gpu-proof-unsloth"))]
    out = tmp_path / "out"
    start = time.monotonic()
    gpu_proof.drive(steps, out, {}, deadline=start + gpu_proof.DEADLINE_MARGIN_S + 6)
    assert time.monotonic() - start < 30  # not the step's own 270 s
    case = json.loads((out / "gpu_proof.json").read_text())["steps"]["unsloth"]
    assert case["status"] == "timeout" and case["timeout_s"] < 10
    assert case["run"]["timings"] == {"load_s": 41.5, "eval_before_s": 12.0}
    assert case["run"]["progress"]["step"] == 17 and case["run"]["metrics"]["before"]["cer"] == 0.62
    assert "compiling decoder layer 3" in case["console_tail"]
    assert (out / "unsloth.console.log").read_text().startswith("loading")


def test_the_checks_write_the_preflight_before_the_paged_check_can_fail(tmp_path, monkeypatch):
    """L3: a failing paged check no longer loses the preflight facts."""
    def boom():
        raise RuntimeError("CUDA error: invalid argument")

    monkeypatch.setattr(gpu_proof, "paged_optimizer_check", boom)
    result = tmp_path / "checks.json"
    assert gpu_proof.main(["checks", "--allow-cpu", "--json", str(result)]) == 1
    data = json.loads(result.read_text())
    assert data["preflight"]["torch"] == torch.__version__ and "environment" in data["preflight"]
    assert data["paged_optimizer"] == {"ok": False, "error": "RuntimeError: CUDA error: invalid argument"}


def test_no_child_outlives_the_driver(tmp_path):
    """L4: a driver killed from outside (the device call's timeout) takes its running case with it."""
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    driver = ("import os, sys; from pathlib import Path; from deepsynth_ocr import gpu_proof; "
              f"gpu_proof.drive([gpu_proof.Step('case', [sys.executable, '-c', {child!r}], 60, dict(os.environ))], "
              f"Path({str(tmp_path / 'out')!r}), {{}})")
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    for _ in range(100):
        if pid_file.is_file() and pid_file.read_text():
            break
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for _ in range(50):
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the case outlived its driver")
