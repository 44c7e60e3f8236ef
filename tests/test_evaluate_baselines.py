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


def test_installed_baselines_read_the_rendered_eval_set(eval_set, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSYNTH_CACHE", str(tmp_path / "cache"))  # the engines themselves, not earlier readings
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


def _counting(monkeypatch, name):
    """The real engine ``name`` with its calls counted."""
    calls, build = [], baselines.ENGINES[name]

    def counted(cfg):
        engine = build(cfg)
        return baselines.Engine(engine.name, lambda image: calls.append(1) or engine.recognize(image), engine.identity)

    monkeypatch.setitem(baselines.ENGINES, name, counted)
    return calls


def test_a_second_run_on_the_same_eval_set_reads_the_kept_readings_and_scores_the_same(eval_set, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DEEPSYNTH_CACHE", str(tmp_path / "cache"))
    calls = _counting(monkeypatch, "tesseract")
    cfg = EvalConfig(baselines=["tesseract"])
    first = baselines.run_baselines(eval_set, cfg, tmp_path / "first")
    assert len(calls) == 16
    with caplog.at_level(logging.INFO):
        second = baselines.run_baselines(eval_set, cfg, tmp_path / "second")
    assert len(calls) == 16 and second == first  # no engine call, the same scores
    assert (tmp_path / "first" / "baseline_tesseract.jsonl").read_text() == (tmp_path / "second" / "baseline_tesseract.jsonl").read_text()
    assert f"16 read from {tmp_path / 'cache' / 'baselines'}" in caplog.text
    baselines.run_baselines(eval_set, EvalConfig(baselines=["tesseract"], baseline_cache=False), tmp_path / "third")
    assert len(calls) == 32  # switched off: every image read again


def test_readings_are_kept_per_pixels_and_engine_identity_and_survive_a_cut_line(tmp_path, monkeypatch, caplog):
    from PIL import Image

    monkeypatch.setenv("DEEPSYNTH_CACHE", str(tmp_path / "cache"))
    calls = []
    engine = baselines.Engine("fake", lambda image: calls.append(image.getpixel((0, 0))) or f"text{len(calls)}", "v1")
    white, black = Image.new("L", (4, 2), 255), Image.new("L", (4, 2), 0)
    readings = baselines.Readings(engine)
    assert [readings.read(white, engine.recognize), readings.read(white, engine.recognize)] == ["text1", "text1"]
    assert readings.read(black, engine.recognize) == "text2" and calls == [255, 0]
    with readings.path.open("a") as f:
        f.write('{"image": "abc", "te')  # a writer killed mid-line
    again = baselines.Readings(engine)
    assert again.read(black, engine.recognize) == "text2" and len(calls) == 2  # kept across instances
    newer = baselines.Readings(baselines.Engine("fake", engine.recognize, "v2"))
    assert newer.path != readings.path and newer.read(black, engine.recognize) == "text3"  # a new version reads anew
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # the cache root is a file: nothing can be kept, the readings still come back
    monkeypatch.setenv("DEEPSYNTH_CACHE", str(blocker))
    blocked = baselines.Readings(engine)
    with caplog.at_level(logging.WARNING):
        texts = [blocked.read(white, engine.recognize), blocked.read(black, engine.recognize)]
    assert texts == ["text4", "text5"] and caplog.text.count("baseline cache") == 1
