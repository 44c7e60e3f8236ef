"""End-to-end runs through the CLI: what lands in the run directory, and how failures are recorded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepsynth_ocr.cli import main

from .conftest import ROOT, SAMPLES


def _only_run_dir(root: Path) -> Path:
    dirs = list(root.iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_cli_train_writes_a_complete_run_directory(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(ROOT)
    code = main(["train", "-c", "configs/smoke.yaml", "-s", f"output_root={tmp_path / 'runs'}",
                 "-s", "train.max_steps=4", "-s", "train.save_steps=2", "-s", "eval.max_samples=4",
                 "-s", "train.logging_steps=1"])
    assert code == 0
    run_dir = _only_run_dir(tmp_path / "runs")
    for name in ("config.yaml", "console.log", "metrics.jsonl", "eval/before.jsonl", "eval/after.jsonl",
                 "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "data_report.json",
                 "manifest.json"):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert manifest["backend"] == "hf" and manifest["backend_reason"]
    assert manifest["parameters"]["trainable"] > 0 and manifest["parameters"]["frozen"] > 0
    trained = manifest["parameters"]["trained"]  # what is trained, named and counted
    assert trained["lora_modules"] == len(trained["modules"]) == 14
    assert trained["lora_modules_by_kind"]["self_attn.q_proj"] == 2 and "mlp.experts" not in trained["lora_modules_by_kind"]
    assert trained["trainable_parameters"] == manifest["parameters"]["trainable"]
    assert manifest["dtype"] == "float32" and manifest["dtype_reason"] == "auto: no CUDA device, float32 on the CPU"
    assert manifest["version_mismatches"] == []
    assert manifest["versions"]["transformers"]
    assert {"before", "after"} <= set(manifest["metrics"])
    assert (run_dir / "checkpoints" / "checkpoint-4").is_dir()
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 4
    rows = [json.loads(x) for x in (run_dir / "eval" / "after.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {"reference", "prediction", "cer", "wer", "stopped"} <= set(rows[0])
    log = (run_dir / "console.log").read_text()
    assert "backend: hf" in log and "paged_adamw_8bit" in log
    assert "dtype: float32 (auto: no CUDA device" in log and "LoRA on 14 modules" in log
    # W&B ran offline inside the run directory and wrote nothing in the home directory.
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert not any(home.iterdir()), list(home.iterdir())


def test_bad_data_path_fails_with_a_named_error_and_a_failed_manifest(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = main(["train", "-c", "configs/smoke.yaml", "-s", f"output_root={tmp_path / 'runs'}",
                 "-s", "data.train_path=/nonexistent/train.jsonl"])
    assert code == 2
    assert "/nonexistent/train.jsonl" in capsys.readouterr().err
    manifest = json.loads((_only_run_dir(tmp_path / "runs") / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "/nonexistent/train.jsonl" in manifest["error"]


def test_rows_with_problems_are_reported_and_the_run_continues(tmp_path, smoke_cfg):
    from deepsynth_ocr.jobs.train import train

    lines = (SAMPLES / "train.jsonl").read_text().splitlines()[:6]
    lines = [line.replace('"image": "', f'"image": "{SAMPLES}/') for line in lines]
    lines += ['{"id": "x1", "image": "missing.png", "text": "a"}', "not json", '{"id": "x2", "image": "' + str(SAMPLES / "images" / "train_0000.png") + '", "text": ""}']
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    smoke_cfg.data.train_path = str(manifest)
    smoke_cfg.train.max_steps = 1
    smoke_cfg.eval.enabled = False
    smoke_cfg.tracking.wandb = "disabled"
    result = train(smoke_cfg)
    report = json.loads((result.run_dir / "data_report.json").read_text())[0]
    assert (report["read"], report["kept"], report["rejected"]) == (9, 6, 3)
    assert report["by_reason"] == {"empty_text": 1, "missing_image": 1, "unparseable_row": 1}
    assert "read 9 = kept 6 + rejected 3" in (result.run_dir / "console.log").read_text()


@pytest.mark.slow
def test_adapter_reloads_in_a_fresh_process_with_identical_logits(tmp_path, smoke_cfg):
    """Save after real training, reload onto a fresh base in another process: logits identical."""
    from deepsynth_ocr.jobs.train import train

    smoke_cfg.train.max_steps = 20
    smoke_cfg.eval.enabled = False
    smoke_cfg.tracking.wandb = "disabled"
    result = train(smoke_cfg)
    import torch

    from deepsynth_ocr.collate import OcrCollator
    from deepsynth_ocr.data.prepare import prepare_manifest

    loaded = result.loaded
    ds, _ = prepare_manifest(SAMPLES / "eval.jsonl", smoke_cfg.data, loaded.processor.tokenizer, loaded.family.default_prompt)
    batch = OcrCollator(loaded.processor, loaded.family)([ds[i] for i in range(4)])
    batch.pop("labels")
    loaded.model.eval()
    with torch.no_grad():
        live = loaded.model(**batch).logits
    torch.save(batch, tmp_path / "batch.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "tests" / "reload_adapter.py"), str(result.run_dir),
                    str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")], check=True, env=env, cwd=ROOT)
    out = torch.load(tmp_path / "out.pt")
    assert torch.equal(live, out["adapter"])
    assert (out["merged"] - live).abs().max() < 1e-5
    assert (out["base"] - live).abs().max() > 1e-3  # the adapter really changes the model


def test_each_logged_step_says_where_its_time_went(smoke_cfg):
    """Stage timings per logging interval, in metrics.jsonl (and so in the console and W&B): forward+backward,
    optimizer, checkpoint, between steps; samples/s and tokens/s; they add up to no more than the interval."""
    from deepsynth_ocr.jobs.train import train

    smoke_cfg.train.max_steps, smoke_cfg.train.save_steps, smoke_cfg.train.logging_steps = 6, 2, 1
    smoke_cfg.eval.enabled, smoke_cfg.tracking.wandb = False, "disabled"
    run_dir = train(smoke_cfg).run_dir
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for r in steps:
        assert r["time/forward_backward_s"] > 0 and r["time/optimizer_s"] > 0
        assert r["tokens_per_s"] > r["samples_per_s"] > 0
        parts = sum(r.get(f"time/{k}_s", 0) for k in ("forward_backward", "optimizer", "between_steps", "checkpoint"))
        assert parts <= r["time/wall_s"] * 1.01 + 1e-3
    assert [r["step"] for r in steps if r.get("time/checkpoint_s", 0) > 0] == [3, 5]  # saved after steps 2 and 4
    assert "mem/peak_allocated_gib" not in steps[0]  # no GPU: no VRAM figure invented; the host's peak instead
    assert all(0 < r["mem/peak_rss_gib"] for r in steps)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # The run-wide peak outlives the per-step resets (GPU_AUDIT_3 W1), beside what loading left resident.
    memory = manifest["memory"]
    assert memory["train_peak_rss_gib"] >= max(r["mem/peak_rss_gib"] for r in steps) > 0
    assert memory["rss_after_load_gib"] > 0 and "train_peak_allocated_gib" not in memory
    assert manifest["image_processor"] == "DeepseekOcr2ImageProcessorPil" and manifest["gradient_checkpointing"] == "off"
    assert "steady_s_per_step" not in manifest["timings"]  # 6 steps: none past the 10 warm-up steps
