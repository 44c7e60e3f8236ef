import json

from PIL import Image

from deepsynth_ocr.config import DataConfig
from deepsynth_ocr.data.fonts import available_fonts
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.data.synthetic import render_text


def _write_manifest(tmp_path):
    (tmp_path / "img").mkdir()
    render_text("ok1").save(tmp_path / "img" / "good1.png")
    render_text("ok2").save(tmp_path / "img" / "good2.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "tiny.png")
    good = render_text("xy")
    good.save(tmp_path / "img" / "full.png")
    data = (tmp_path / "img" / "full.png").read_bytes()
    (tmp_path / "img" / "truncated.png").write_bytes(data[: len(data) // 2])
    lines = [
        {"id": "a", "image": "img/good1.png", "text": "ok1"},                 # 1 kept
        {"id": "b", "image": "img/missing.png", "text": "gone"},              # 2 missing_image
        {"id": "c", "image": "img/broken.png", "text": "bad"},                # 3 undecodable_image
        {"id": "d", "image": "img/good2.png", "text": "   "},                 # 4 empty_text
        "{not json",                                                          # 5 unparseable_row
        {"id": "e", "image": "img/tiny.png", "text": "small"},                # 6 image_too_small
        {"id": "f", "text": "no image"},                                      # 7 missing_field
        {"id": "a", "image": "img/good2.png", "text": "dup"},                 # 8 duplicate_id
        {"id": "g", "image": "img/truncated.png", "text": "cut"},             # 9 truncated_image
        {"id": "h", "image": "img/good2.png", "text": "ok2", "prompt": "<image>\nRead."},  # 10 kept
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_bad_rows_are_reported_with_line_and_reason(tmp_path, tiny_parts):
    tokenizer = tiny_parts[0]
    path = _write_manifest(tmp_path)
    ds, report = prepare_manifest(path, DataConfig(), tokenizer, "<image>\nFree OCR.")
    assert report.read == 10
    assert report.kept == len(ds) == 2
    assert report.read == report.kept + report.rejected
    got = {r.location.rsplit(":", 1)[1]: r.reason for r in report.rejections}
    assert got == {
        "2": "missing_image", "3": "undecodable_image", "4": "empty_text", "5": "unparseable_row",
        "6": "image_too_small", "7": "missing_field", "8": "duplicate_id", "9": "truncated_image",
    }
    assert all(r.location.startswith(str(path)) for r in report.rejections)
    assert ds["text"] == ["ok1", "ok2"]
    assert ds["prompt"] == ["<image>\nFree OCR.", "<image>\nRead."]
    assert ds[0]["image"].size == (48, 48)
    summary = report.summary()
    assert "read 10 = kept 2 + rejected 8" in summary


def test_text_is_nfc_normalised_and_length_checked(tmp_path, tiny_parts):
    tokenizer = tiny_parts[0]
    render_text("e").save(tmp_path / "e.png")
    nfd = "e\u0301"  # e + combining acute
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"image": "e.png", "text": nfd}) + "\n" + json.dumps({"image": "e.png", "text": "x" * 50, "id": "long"}) + "\n")
    ds, report = prepare_manifest(path, DataConfig(max_target_tokens=10), tokenizer, "<image>\nFree OCR.")
    assert ds["text"] == ["\u00e9"]
    assert [r.reason for r in report.rejections] == ["text_too_long"]


def test_render_text_never_clips_and_fonts_are_found():
    assert available_fonts()
    image = render_text("wwwwww")  # too wide at the default size: the font shrinks instead
    assert image.size == (48, 48)
    assert image.convert("L").getextrema()[0] < 128  # ink was drawn


def test_long_targets_truncate_to_the_token_limit_and_are_counted(tmp_path, tiny_parts):
    """data.long_targets: truncate keeps the row with the start of its target, cut to data.max_target_tokens tokens,
    and counts it in the report; the prompt and the image are untouched. The default still rejects."""
    tokenizer = tiny_parts[0]
    render_text("ab").save(tmp_path / "ab.png")
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"image": "ab.png", "text": "abcdefghij" * 5, "id": "long"}) + "\n"
                    + json.dumps({"image": "ab.png", "text": "ab", "id": "short"}) + "\n")
    ds, report = prepare_manifest(path, DataConfig(max_target_tokens=10, long_targets="truncate"), tokenizer, "<image>\nFree OCR.")
    assert ds["id"] == ["long", "short"] and report.rejections == []
    assert len(tokenizer(ds["text"][0], add_special_tokens=False).input_ids) <= 10
    assert ds["text"][0] and ("abcdefghij" * 5).startswith(ds["text"][0]) and ds["text"][1] == "ab"
    assert ds["prompt"] == ["<image>\nFree OCR."] * 2 and ds[0]["image"].size == ds[1]["image"].size
    assert dict(report.normalised) == {"target_truncated": 1} and "target_truncated 1" in report.summary()
    _, rejected = prepare_manifest(path, DataConfig(max_target_tokens=10), tokenizer, "<image>\nFree OCR.")
    assert [r.reason for r in rejected.rejections] == ["text_too_long"] and "truncate keeps its start" in rejected.rejections[0].detail
