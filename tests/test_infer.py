"""`deepsynth-ocr infer`: folders with a corrupt image and a 3-page PDF, streaming JSONL, resume."""

import json

import pytest
from PIL import Image

from deepsynth_ocr.cli import main
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.synthetic import render_text
from deepsynth_ocr.infer import done_inputs, expand_inputs, ocr_inputs
from deepsynth_ocr.models.backends import LoadedModel


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for i, text in enumerate(["ab", "cd"]):
        render_text(text).save(d / f"img{i}.png")
    render_text("ef").save(d / "sub" / "img2.jpg")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (d / "notes.txt").write_text("ignored: not an image")
    pages = [render_text(t).convert("RGB") for t in ("p1", "p2", "p3")]
    pages[0].save(d / "doc.pdf", save_all=True, append_images=pages[1:])
    return d


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_expand_inputs_handles_folders_globs_pdf_pages_and_missing_specs(folder):
    items, errors = expand_inputs([str(folder), str(folder / "*.png"), str(folder / "nothing*.png")])
    keys = [i.key for i in items]
    assert len(keys) == len(set(keys)) == 3 + 1 + 3  # images (incl. sub/ and the corrupt one) + 3 PDF pages
    assert [k.rsplit("#", 1)[1] for k in keys if "#page=" in k] == ["page=1", "page=2", "page=3"]
    assert len(errors) == 1 and "nothing" in errors[0]["input"]


def test_cli_infer_twice_resumes_and_records_the_corrupt_image_once(folder, tmp_path, capsys):
    out = tmp_path / "pred.jsonl"
    args = ["infer", str(folder), "-o", str(out), "-s", "infer.max_new_tokens=6", "-s", "infer.batch_size=4"]
    assert main(args) == 0
    first = _rows(out)
    assert "7 inputs: 0 already done, 7 written (1 errors)" in capsys.readouterr().out
    assert len(first) == 7
    errors = [r for r in first if r["error"]]
    assert len(errors) == 1 and errors[0]["input"].endswith("corrupt.png") and "cannot read input" in errors[0]["error"]
    pages = sorted(r["page"] for r in first if r["file"].endswith("doc.pdf"))
    assert pages == [1, 2, 3]
    assert all(isinstance(r["text"], str) and r["n_tokens"] <= 6 for r in first if not r["error"])

    assert main(args) == 0
    assert "7 inputs: 7 already done, 0 written (0 errors)" in capsys.readouterr().out
    assert _rows(out) == first  # nothing new, the corrupt image still appears once


def test_interrupted_output_is_repaired_and_only_missing_inputs_run(folder, tmp_path, tiny_parts):
    from deepsynth_ocr.models import tiny

    tokenizer, processor, family = tiny_parts
    model = tiny.build_tiny_model(tokenizer, family.tiny_geometry, seed=0)
    cfg = RunConfig()
    cfg.infer.max_new_tokens = 4
    out = tmp_path / "pred.jsonl"
    ocr_inputs([str(folder / "img0.png"), str(folder / "img1.png")], out, cfg, LoadedModel(model, processor, family))
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1][:20])  # the second row was cut off mid-write
    assert len(done_inputs(out)) == 1
    summary = ocr_inputs([str(folder / "img0.png"), str(folder / "img1.png")], out, cfg, LoadedModel(model, processor, family))
    assert (summary.skipped, summary.written) == (1, 1)
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip().endswith("}")]
    assert sorted(r["input"].rsplit("/", 1)[1] for r in rows) == ["img0.png", "img1.png"]


def test_a_batch_that_fails_is_retried_row_by_row(folder, tmp_path, tiny_parts, monkeypatch):
    from deepsynth_ocr import infer
    from deepsynth_ocr.models import tiny

    tokenizer, processor, family = tiny_parts
    model = tiny.build_tiny_model(tokenizer, family.tiny_geometry, seed=0)
    Image.new("RGB", (12, 12)).save(folder / "tiny.png")  # readable (data.min_image_side is 8); generation fails
    real = infer.generate_batch

    def fails_on_tiny_images(model, collator, rows, cfg, max_new_tokens, clock=None):
        if any(r["image"].size == (12, 12) for r in rows):
            raise ValueError("image too small for the vision tower")
        return real(model, collator, rows, cfg, max_new_tokens, clock=clock)

    monkeypatch.setattr(infer, "generate_batch", fails_on_tiny_images)
    cfg = RunConfig()
    cfg.infer.max_new_tokens = 4
    summary = ocr_inputs([str(folder / "img0.png"), str(folder / "tiny.png")], tmp_path / "o.jsonl", cfg,
                            LoadedModel(model, processor, family))
    rows = {r["input"].rsplit("/", 1)[1]: r for r in _rows(tmp_path / "o.jsonl")}
    assert (summary.written, summary.errors) == (2, 1)
    assert rows["img0.png"]["error"] is None and isinstance(rows["img0.png"]["text"], str)
    assert "generation failed: ValueError: image too small" in rows["tiny.png"]["error"]
