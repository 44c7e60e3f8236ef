"""report.html: self-contained, before/after/baseline table, 20 worst samples, privacy, headless Chromium."""

import json
import re

import pytest
from PIL import Image

from deepsynth_ocr import report
from deepsynth_ocr.config import EvalConfig, RunConfig
from deepsynth_ocr.data.synthetic import render_text
from deepsynth_ocr.evaluate import Prediction, score_and_write

from .conftest import ROOT

ARTIFACTS = ROOT / "artifacts"


def _fake_run(tmp_path, log_images=True):
    """A run directory as train.run leaves it, with 25 eval rows and known predictions."""
    run_dir = tmp_path / "run_20260101_000000"
    (run_dir / "eval").mkdir(parents=True)
    cfg = RunConfig()
    cfg.tracking.log_images = log_images
    cfg.to_yaml(run_dir / "config.yaml")
    (run_dir / "manifest.json").write_text(json.dumps({"status": "ok"}))
    rows = []
    for i in range(25):
        text = f"w{i:02d}x"
        path = tmp_path / f"img{i}.png"
        render_text(text).save(path)
        rows.append({"id": f"s{i:02d}", "text": text, "image_path": str(path)})
    ecfg = EvalConfig()
    # before: everything wrong; after: sample i has i % 5 wrong characters; baseline: all right but one
    before = score_and_write(rows, [Prediction("zz", False) for _ in rows], ecfg, run_dir / "eval" / "before.jsonl")
    after = score_and_write(rows, [Prediction(r["text"][: 4 - i % 5] if i % 5 else r["text"], True)
                                   for i, r in enumerate(rows)], ecfg, run_dir / "eval" / "after.jsonl")
    score_and_write(rows, [Prediction("?" if i == 0 else r["text"], True) for i, r in enumerate(rows)], ecfg,
                    run_dir / "eval" / "baseline_tesseract.jsonl")
    with (run_dir / "metrics.jsonl").open("w") as f:
        for step in range(1, 11):
            f.write(json.dumps({"step": step, "loss": 3.0 / step}) + "\n")
        for step, summary, tag in ((0, before, "before"), (5, {"cer": 0.5, "wer": 0.8}, "periodic"), (10, after, "after")):
            f.write(json.dumps({"step": step, "eval": tag, **summary}) + "\n")
    return run_dir, rows


def test_report_is_self_contained_with_table_plots_and_20_worst_samples(tmp_path):
    run_dir, rows = _fake_run(tmp_path)
    page = report.write_report(run_dir).read_text()
    assert "src='http" not in page and 'src="http' not in page and "<script" not in page
    table = page[page.index("<table id='scores'>"):page.index("</table>")]
    assert [re.sub("<[^>]+>", "", r.split("</td>")[0]) for r in table.split("<tr>")[2:]] == [
        "before (base model)", "after (fine-tuned)", "baseline: tesseract"]
    cells = {re.sub("<[^>]+>", "", r.split("</td>")[0]): re.findall("<td>([^<]*)</td>", r)[1:]
             for r in table.split("<tr>")[2:]}
    # columns: CER, WER, CER mean, median, p90, exact, catastrophic, n (hand-computed from _fake_run)
    assert cells["before (base model)"] == ["1.0000", "1.0000", "1.0000", "1.0000", "1.0000", "0.0%", "0.0%", "25"]
    assert cells["after (fine-tuned)"][5] == "20.0%"  # i % 5 == 0: 5 of 25 exact
    assert cells["baseline: tesseract"][:1] + cells["baseline: tesseract"][5:] == ["0.0400", "96.0%", "0.0%", "25"]
    assert page.count("<div class='sample'>") == 20
    # worst first: after-CERs are (i % 5)/4, so the first shown sample has CER 1.0 and a deletion diff
    first = page.index("<div class='sample'>")
    assert "CER 1.0000" in page[first:first + 200]
    assert page.count("data:image/png;base64,") == 20 + 2  # 20 samples + loss and CER plots
    assert "<del>" in page and "CER / WER" not in page  # plot titles live inside the PNGs


def test_privacy_switch_keeps_images_and_texts_out_of_the_report(tmp_path):
    run_dir, rows = _fake_run(tmp_path, log_images=False)
    page = report.write_report(run_dir).read_text()
    assert not any(r["text"] in page for r in rows)
    assert page.count("data:image/png;base64,") == 2  # the plots only
    assert "privacy" in page and "<table id='scores'>" in page


def test_report_renders_in_headless_chromium_with_a_screenshot(tmp_path):
    # make setup installs Debian's chromium; a missing browser fails here rather than passing unseen.
    try:
        report.find_browser()
    except FileNotFoundError as e:
        pytest.fail(f"{e}; the report check needs it")
    run_dir, _ = _fake_run(tmp_path)
    html_path = report.write_report(run_dir)
    dom = report.rendered_dom(html_path)
    assert dom.count('class="sample"') == 20 and "baseline: tesseract" in dom
    png = report.screenshot(html_path, ARTIFACTS / "report_screenshot.png")
    with Image.open(png) as im:
        assert im.size == (1280, 2400)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) blank"


@pytest.mark.parametrize("log_images", [True, False])
def test_wandb_per_sample_table_honours_the_privacy_switch(tmp_path, log_images):
    from deepsynth_ocr.config import TrackingConfig
    from deepsynth_ocr.tracking import Tracker

    logged = {}

    class FakeRun:
        def log(self, values, step=None):
            logged.update(values)

    tracker = Tracker(tmp_path / "wandb", TrackingConfig(wandb="disabled", log_images=log_images), "t", {})
    tracker.run = FakeRun()
    rows = [{"id": "a", "image": render_text("ab"), "reference": "secret", "prediction": "secrit",
             "cer": 1 / 6, "wer": 1.0, "failure": False}]
    tracker.log_samples("eval/samples", rows)
    table = logged["eval/samples"]
    if log_images:
        assert table.columns == ["id", "image", "reference", "prediction", "cer", "wer", "failure"]
        assert table.data[0][2:] == ["secret", "secrit", 1 / 6, 1.0, False]
    else:
        assert table.columns == ["cer", "wer", "failure"]
        assert "secret" not in repr(table.data)
