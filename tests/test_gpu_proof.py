"""What of the GPU proof (`make gpu-proof`) can run on a CPU: its configs, wheel trimming, and its hf case."""

import json
import re
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


def test_without_cuda_the_proof_refuses_in_one_line(capsys):
    assert gpu_proof.main(["run", "--out", "unused.json"]) == 2
    assert capsys.readouterr().err.strip() == "gpu-proof: no CUDA device; this proof needs an NVIDIA GPU"


@pytest.mark.slow
def test_the_proof_runs_its_hf_case_and_records_a_failing_case_with_its_error(tmp_path):
    out = tmp_path / "proof.json"
    code = gpu_proof.main(["run", "--steps", "3", "--allow-cpu", "--output-root", str(tmp_path / "runs"),
                           "--out", str(out)])
    assert code == 1  # the unsloth case cannot run without CUDA, and the proof says it failed
    cases = json.loads(out.read_text())["cases"]
    hf = cases["hf"]
    assert hf["status"] == "ok" and hf["backend"] == "hf" and hf["dtype"] == "bfloat16" and hf["steps"] == 3
    assert 0 < hf["cer_before"] <= 1 and 0 < hf["cer_after"] <= 1 and hf["s_per_step"] > 0
    assert hf["peak_reserved_gib"] is None and hf["device"] == "cpu"  # no VRAM figure is invented on a CPU
    assert hf["parameters"]["language_model_precision"]["4bit"] > 0 and hf["versions"]["bitsandbytes"]
    assert cases["unsloth"]["status"] == "failed" and "CUDA is not available" in cases["unsloth"]["error"]
