"""Baseline engines on the same eval set; a missing engine is skipped with a notice, never silently."""

import json
import logging

import pytest

from deepsynth_ocr import baselines
from deepsynth_ocr.config import EvalConfig, RunConfig
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.models import tiny

from .conftest import SAMPLES


@pytest.fixture(scope="module")
def eval_set():
    ds, _ = prepare_manifest(SAMPLES / "eval.jsonl", RunConfig().data, tiny.build_tiny_tokenizer(), "<image>\nFree OCR.")
    return ds


def test_installed_baselines_read_the_rendered_eval_set(eval_set, tmp_path):
    # make setup installs both (Debian tesseract-ocr, pip rapidocr + onnxruntime).
    engines = [e.name for e in baselines.available_engines(EvalConfig())]
    assert engines == ["tesseract", "rapidocr"], f"only {engines} available: run make setup"
    summaries = baselines.run_baselines(eval_set, EvalConfig(), tmp_path)
    for name in ("tesseract", "rapidocr"):
        rows = [json.loads(x) for x in (tmp_path / f"baseline_{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 16 and summaries[name]["n"] == 16
        # clean rendered 2-4 character strings: a working engine gets most of them right
        assert summaries[name]["cer"] < 0.35, (name, summaries[name]["cer"], [(r["reference"], r["prediction"]) for r in rows])
        assert summaries[name]["exact_match"] >= 0.5


def test_missing_engine_is_skipped_with_a_notice(eval_set, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(baselines.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING):
        summaries = baselines.run_baselines(eval_set, EvalConfig(baselines=["tesseract"]), tmp_path)
    assert summaries == {} and not list(tmp_path.iterdir())
    assert "baseline tesseract skipped" in caplog.text and "apt-get install tesseract-ocr" in caplog.text


def test_missing_language_data_is_named(monkeypatch):
    notice = baselines._tesseract(EvalConfig(tesseract_lang="eng+xyz"))
    assert isinstance(notice, str) and "xyz" in notice
