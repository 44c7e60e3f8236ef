"""A run's console log says what ran and how it ended: a header (start, command line, model, output directory), a
footer (end, status, exit code, results), milliseconds on every text line, and a flush to the disk (fsync) at each
status change."""

from __future__ import annotations

import re

import pytest

from deepsynth_ocr import runs

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (INFO|WARNING|ERROR) ")


def _synced(monkeypatch) -> list[int]:
    calls = []
    real = runs.os.fsync
    monkeypatch.setattr(runs.os, "fsync", lambda fd: calls.append(fd) or real(fd))
    return calls


def test_a_finished_run_logs_its_header_and_footer_with_millisecond_stamps_and_syncs_them(smoke_cfg, monkeypatch):
    from deepsynth_ocr.jobs.train import train

    synced = _synced(monkeypatch)
    cfg = smoke_cfg.with_overrides(["train.max_steps=2", "eval.max_samples=4", "eval.every_steps=0",
                                    "eval.baselines=[]", "tracking.wandb=disabled"])
    run_dir = train(cfg).run_dir
    lines = [line for line in (run_dir / "console.log").read_text().splitlines() if STAMP.match(line)]
    header, footer = lines[0], lines[-1]
    assert f"=== train run {run_dir.name} started | command: " in header
    assert "| model: random (tiny, backend hf) |" in header and header.endswith(f"| output: {run_dir}")
    assert re.search(rf"=== train run {run_dir.name} ended: ok, exit code 0, [\d.]+ s \| results: CER [\d.]+ -> [\d.]+, 2 steps$", footer)
    assert len(synced) >= 2  # after the header and after the footer


def test_a_failed_run_ends_its_log_with_status_and_exit_code(smoke_cfg, monkeypatch, tmp_path):
    from deepsynth_ocr.errors import UserError
    from deepsynth_ocr.jobs.train import train

    _synced(monkeypatch)
    missing = tmp_path / "nowhere.jsonl"
    cfg = smoke_cfg.with_overrides([f"data.train_path={missing}", "tracking.wandb=disabled"])
    with pytest.raises(UserError):
        train(cfg, tmp_path / "runs" / "broken")
    log = (tmp_path / "runs" / "broken" / "console.log").read_text().splitlines()
    assert "=== train run broken started" in log[0]
    assert re.search(r"=== train run broken ended: failed, exit code 1, [\d.]+ s \| results: none recorded$", log[-1])


def test_the_results_line_names_each_tasks_metric():
    manifest = {"metrics": {"before": {"cer": None, "qa_f1": 0.25}, "after": {"cer": None, "qa_f1": 0.5}, "steps": 30}}
    assert runs.results_line(manifest) == "Q&A token F1 0.2500 -> 0.5000, 30 steps"


def test_lora_dropout_is_on_the_launch_form_and_checked_like_any_field(tmp_path):
    from deepsynth_ocr.config import RunConfig
    from deepsynth_ocr.ui import forms

    from .conftest import ROOT

    preset = ROOT / "configs" / "smoke.yaml"
    assert any(f["name"] == "lora.dropout" and f["type"] == "float" for f in forms.fields(RunConfig.from_yaml(preset)))
    good, errors = forms.overrides(preset, {"lora.dropout": "0.05"}, [tmp_path], tmp_path / "runs")
    assert errors == {} and "lora.dropout=0.05" in good
    _, errors = forms.overrides(preset, {"lora.dropout": "1.5"}, [tmp_path], tmp_path / "runs")
    assert "must be in [0, 1)" in errors["lora.dropout"]
