"""Source readers: type inference, column mapping, Parquet layouts, saved datasets, CSV details."""

import io
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepsynth_ocr.config import DataConfig
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.data.sources import SourceError, infer_source_type, read_csv, read_parquet
from deepsynth_ocr.data.synthetic import render_text


def _png(text):
    buf = io.BytesIO()
    render_text(text).save(buf, format="PNG")
    return buf.getvalue()


def test_source_type_is_inferred_from_the_path(tmp_path):
    for name, kind in (("a.jsonl", "jsonl"), ("a.csv", "csv"), ("a.tsv", "csv"), ("a.parquet", "parquet"),
                       ("a.tar", "webdataset")):
        (tmp_path / name).write_text("")
        assert infer_source_type(str(tmp_path / name)) == kind
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "x-000.tar").write_text("")
    assert infer_source_type(str(shards)) == "webdataset"
    assert infer_source_type(str(tmp_path / "shards" / "x-*.tar")) == "webdataset"
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "p.png").write_bytes(_png("p"))
    assert infer_source_type(str(folder)) == "folder"
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "saved"))
    assert infer_source_type(str(tmp_path / "saved")) == "hf_disk"
    assert infer_source_type("someone/some-dataset") == "hub"
    with pytest.raises(SourceError, match="no such file"):
        infer_source_type(str(tmp_path / "missing.jsonl"))
    (tmp_path / "a.xyz").write_text("")
    with pytest.raises(SourceError, match="data.source_type"):
        infer_source_type(str(tmp_path / "a.xyz"))


def test_parquet_with_bytes_paths_and_structs_and_custom_columns(tmp_path, tiny_parts):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "p.png").write_bytes(_png("pa"))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"scan": [_png("by"), _png("st")], "transcription": ["by", "st"], "other": [1, 2]}), path)
    paths = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"scan": ["img/p.png"], "transcription": ["pa"]}), paths)
    structs = tmp_path / "structs.parquet"
    pq.write_table(pa.table({"scan": [{"bytes": _png("sb"), "path": None}], "transcription": ["sb"]}), structs)
    cfg = DataConfig(image_column="scan", text_column="transcription")
    texts = []
    for p in (path, paths, structs):
        ds, report = prepare_manifest(p, cfg, tiny_parts[0], "<image>\nFree OCR.")
        assert report.rejected == 0
        texts += ds["text"]
        assert ds[0]["image"].size == (48, 48)
    assert texts == ["by", "st", "pa", "sb"]
    rows = list(read_parquet(str(path), {"image": "scan", "text": "transcription"}, batch_size=1))
    assert [r.location for r in rows] == [f"{path}:row 0", f"{path}:row 1"]
    assert "other" not in rows[0].fields


def test_saved_dataset_source_with_decoded_image_feature(tmp_path, tiny_parts):
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (30, 20), "white")], "text": ["w"]})
    ds = ds.cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    out, report = prepare_manifest(tmp_path / "saved", DataConfig(), tiny_parts[0], "<image>\nFree OCR.")
    assert report.read == report.kept == 1 and report.source_type == "hf_disk"
    assert out[0]["image"].size == (30, 20) and out[0]["text"] == "w"


def test_csv_quoted_multiline_cells_and_line_numbers(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('image,text\na.png,"two\nlines"\nb.png,one\n')
    rows = list(read_csv(path, {"image": "image", "text": "text"}))
    assert [r.fields["text"] for r in rows] == ["two\nlines", "one"]
    assert [r.location.rsplit(":", 1)[1] for r in rows] == ["3", "4"]


def test_jsonl_manifest_gives_path_references_and_a_train_run_reads_a_prepared_dir(tmp_path, tiny_parts):
    from deepsynth_ocr.config import RunConfig
    from deepsynth_ocr.jobs.prepare import prepare

    render_text("ab").save(tmp_path / "a.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i}", "image": "a.png", "text": f"t{i}"}) + "\n" for i in range(10)))
    ds, _ = prepare_manifest(manifest, DataConfig(), tiny_parts[0], "<image>\nFree OCR.")
    # An unchanged file stays a reference (cheap in memory); a prepare output embeds the bytes.
    assert ds.cast_column("image", datasets.Image(decode=False))[0]["image"]["path"] == str(tmp_path / "a.png")
    cfg = RunConfig()
    cfg.prepare.sources, cfg.prepare.output_dir, cfg.prepare.validation_size = [str(manifest)], str(tmp_path / "p"), 3
    prepare(cfg, progress=False)
    train, report = prepare_manifest(tmp_path / "p", DataConfig(), tiny_parts[0], "<image>\nFree OCR.")
    val, _ = prepare_manifest(tmp_path / "p", DataConfig(), tiny_parts[0], "<image>\nFree OCR.", split="validation")
    assert (len(train), len(val)) == (7, 3) and report.source_type == "prepared"
    assert set(train["id"]) | set(val["id"]) == {f"r{i}" for i in range(10)}
    stored = train.cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert stored["bytes"] and not stored["path"]
    with pytest.raises(ValueError, match="no 'test' split"):
        prepare_manifest(tmp_path / "p", DataConfig(), tiny_parts[0], "", split="test")


def test_hub_source_without_network_fails_with_advice(monkeypatch):
    import huggingface_hub

    from deepsynth_ocr.data.sources import read_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceError, match="someone/not-here: cannot load the hub dataset.*save_to_disk"):
        list(read_hub("someone/not-here", {"image": "image", "text": "text"}))
