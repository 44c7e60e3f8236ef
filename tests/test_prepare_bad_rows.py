"""Acceptance: a corpus with 18 kinds of bad rows across five source types. Every bad row is
reported with the right reason code and its location, every good row is kept, read = kept + rejected."""

import io
import json
import tarfile

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.prepare import PrepareError
from deepsynth_ocr.data.synthetic import render_text
from deepsynth_ocr.jobs.prepare import prepare


def _png(text: str = "ok", size=(48, 48)) -> bytes:
    from deepsynth_ocr.data.synthetic import RenderStyle

    buf = io.BytesIO()
    render_text(text, RenderStyle(width=size[0], height=size[1])).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(mode: str = "RGB", exif_orientation: int = 0) -> bytes:
    im = Image.new("RGB", (40, 20), "white")
    im.paste((0, 0, 0), (0, 0, 20, 20))  # left half black
    buf = io.BytesIO()
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    im.convert(mode).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def _tar(path, members: dict[str, bytes], cut: int | None = None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data[:cut] if cut else data)


def build_corpus(root):
    """Five sources; returns (sources, expected {location: reason}, ids of the good rows)."""
    img = root / "img"
    img.mkdir(parents=True)
    (img / "good.png").write_bytes(_png("ok"))
    (img / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image at all")
    full = _png("xy")
    (img / "truncated.png").write_bytes(full[: len(full) // 2])
    Image.new("RGB", (4, 4), "white").save(img / "tiny.png")
    Image.new("L", (3000, 3000), 255).save(img / "bomb.png")  # a few KB on disk, 9 Mpx decoded
    Image.new("RGB", (2000, 10), "white").save(img / "wide.png")

    jsonl = root / "m.jsonl"
    rows = [
        {"id": "j1", "image": "img/good.png", "text": "ok"},                                    # 1 kept
        "{not json",                                                                           # 2
        {"id": "j3", "text": "no image"},                                                      # 3
        {"id": "j4", "image": "img/nowhere.png", "text": "gone"},                              # 4
        {"id": "j5", "image": "img/broken.png", "text": "bad"},                                # 5
        {"id": "j6", "image": "img/truncated.png", "text": "cut"},                             # 6
        {"id": "j7", "image": "img/tiny.png", "text": "small"},                                # 7
        {"id": "j8", "image": "img/good.png", "text": " \t "},                                 # 8
        {"id": "j9", "image": "img/good.png", "text": 42},                                     # 9
        {"id": "j10", "image": "img/good.png", "text": "x", "task": "translate"},               # 10
        {"id": "j11", "image": "img/good.png", "text": "x", "prompt": "Read this."},           # 11
        {"id": "j1", "image": "img/good.png", "text": "again"},                                # 12
        {"id": "j13", "image": "img/good.png", "text": "ok", "task": "markdown"},              # 13 kept
    ]
    jsonl.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")

    csv_path = root / "m.csv"
    csv_path.write_text(
        "id,image,text,task,question,answer,summary\n"
        "c2,img/good.png,ok,,,,\n"                                   # line 2 kept
        "c3,img/good.png,too,many,cells,,,,\n"                       # 3
        f"c4,img/good.png,{'x' * 100},,,,\n"                         # 4
        "c5,img/good.png,bell\x07char,,,,\n"                         # 5
        "c6,img/bomb.png,big,,,,\n"                                  # 6
        "c7,img/wide.png,wide,,,,\n"                                 # 7
        "c8,,A short document.,qa,,an answer,\n"                     # 8 (no question)
        f"c9,,{'word ' * 3000},summarize,,,a summary\n"              # 9
        "c10,,A short document to summarise.,summarize,,,short\n"    # 10 kept
        "c11,,Who wrote it? Nobody.,qa,Who wrote it?,Nobody,\n"      # 11 kept
    )

    parquet = root / "m.parquet"
    pq.write_table(pa.table({
        "id": ["p0", "p1", "p2", "p3", "p4", "p5"],
        "image": [_png("pq"), b"garbage", None, _png("pq2"), _jpeg("CMYK"), _jpeg(exif_orientation=6)],
        "text": ["fine", "bad bytes", "no image", "mojibake \ufffd here", "cmyk", "rotated"],
    }), parquet, row_group_size=2)

    folder = root / "scans"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png("a"))
    (folder / "a.gt.txt").write_text("a\n", encoding="utf-8")
    (folder / "b.png").write_bytes(_png("b"))                      # no transcription
    (folder / "c.txt").write_text("orphan", encoding="utf-8")      # no image
    (folder / "d.png").write_bytes(_png("d"))
    (folder / "d.txt").write_bytes(b"caf\xe9")                     # latin-1, not UTF-8

    shards = root / "shards"
    shards.mkdir()
    jpeg = _jpeg()
    _tar(shards / "shard-0.tar", {
        "s1.png": _png("s1"), "s1.txt": b"s1",
        "s2.png": _png("s2"),                                        # no .txt
        "s3.txt": b"s3",                                             # no image
        "s4.jpg": jpeg[: len(jpeg) // 2], "s4.txt": b"s4",           # truncated JPEG
    })
    pair = {"t1.png": _png("t1"), "t1.txt": b"t1", "t2.png": _png("t2") * 4, "t2.txt": b"t2"}
    # t1.png, t1.txt: 2 x (512 header + 512 data); t2.png's header starts at byte 2048.
    _tar(shards / "shard-1.tar", pair, cut=2048 + 512 + 100)        # cut inside t2.png
    _tar(shards / "shard-2.tar", {"u" + k[1:]: v for k, v in pair.items()}, cut=2048)  # cut between samples

    j, c = str(jsonl), str(csv_path)
    expected = {
        f"{j}:2": "unparseable_row", f"{j}:3": "missing_field", f"{j}:4": "missing_image",
        f"{j}:5": "undecodable_image", f"{j}:6": "truncated_image", f"{j}:7": "image_too_small",
        f"{j}:8": "empty_text", f"{j}:9": "invalid_field", f"{j}:10": "unknown_task", f"{j}:11": "bad_prompt",
        f"{j}:12": "duplicate_id",
        f"{c}:3": "unparseable_row", f"{c}:4": "text_too_long", f"{c}:5": "invalid_text",
        f"{c}:6": "decompression_bomb", f"{c}:7": "image_too_large", f"{c}:8": "missing_field",
        f"{c}:9": "document_too_long",
        f"{parquet}:row 1": "undecodable_image", f"{parquet}:row 2": "missing_field",
        f"{parquet}:row 3": "invalid_text",
        f"{folder / 'b.png'}": "missing_text", f"{folder / 'c.txt'}": "missing_image",
        f"{folder / 'd.png'}": "invalid_text",
        f"{shards / 'shard-0.tar'}:s2": "missing_text", f"{shards / 'shard-0.tar'}:s3": "missing_image",
        f"{shards / 'shard-0.tar'}:s4": "truncated_image", f"{shards / 'shard-1.tar'}:t2": "unreadable_file",
        f"{shards / 'shard-2.tar'}:end": "unreadable_file",
    }
    good = {"j1", "j13", "c2", "c10", "c11", "p0", "p4", "p5", "a.png", "shard-0.tar:s1", "shard-1.tar:t1", "shard-2.tar:u1"}
    return [j, c, str(parquet), str(folder), str(shards)], expected, good


def _cfg(tmp_path, sources) -> RunConfig:
    cfg = RunConfig()
    cfg.prepare.sources = sources
    cfg.prepare.output_dir = str(tmp_path / "out")
    cfg.prepare.validation_size = 0.25
    cfg.prepare.dpi = 40  # small pages: the corpus is about validation, not legibility
    cfg.prepare.max_pages = 1
    cfg.data.max_target_tokens = 64
    cfg.data.max_image_pixels = 4_000_000
    cfg.data.max_image_side = 1500
    return cfg


def test_every_bad_row_is_reported_and_every_good_row_kept(tmp_path, capsys):
    sources, expected, good = build_corpus(tmp_path / "corpus")
    assert len(set(expected.values())) >= 15
    result = prepare(_cfg(tmp_path, sources), progress=False)

    got = {r.location: r.reason for report in result.reports for r in report.rejections}
    assert got == expected
    assert all(r.detail for report in result.reports for r in report.rejections)
    assert result.read == result.kept + result.rejected == len(expected) + len(good)
    for report in result.reports:
        assert report.read == report.kept + report.rejected
    assert [r.source_type for r in result.reports] == ["jsonl", "csv", "parquet", "folder", "webdataset"]

    dd = datasets.load_from_disk(str(result.output_dir))
    kept = {row_id for split in dd.values() for row_id in split["id"]}
    assert kept == good
    assert sum(result.splits.values()) == len(good) == sum(len(s) for s in dd.values())

    by_id = {r["id"]: r for split in dd.values() for r in split}
    assert by_id["c11"]["prompt"] == "<image>\nWho wrote it?" and by_id["c11"]["text"] == "Nobody"
    assert by_id["c10"]["prompt"] == "<image>\nSummarize the document." and by_id["c10"]["text"] == "short"
    assert by_id["c10"]["image"].size == (331, 468)  # one A4 page at 40 dpi
    assert by_id["j13"]["prompt"] == "<image>\n<|grounding|>Convert the document to markdown."
    assert by_id["a.png"]["text"] == "a"
    assert by_id["p5"]["image"].size == (20, 40)  # EXIF orientation 6 applied
    assert all(r["image"].mode == "RGB" for r in by_id.values())
    assert by_id["p4"]["source"] == f"{sources[2]}:row 4"

    report = json.loads((result.output_dir / "report.json").read_text())
    assert (report["read"], report["kept"], report["rejected"]) == (result.read, result.kept, result.rejected)
    assert report["sources"][2]["normalised"] == {"CMYK->RGB": 1, "exif_rotated": 1}
    manifest = json.loads((result.output_dir / "manifest.json").read_text())
    assert manifest["splits"] == result.splits and len(manifest["config_hash"]) == 16
    assert [s["source"] for s in manifest["sources"]] == sources
    summary = result.summary()
    assert f"total: read {result.read} = kept {result.kept} + rejected {result.rejected}" in summary
    assert "document_too_long: 1" in summary


def test_strict_fails_on_the_first_bad_row_with_its_location(tmp_path):
    sources, _, _ = build_corpus(tmp_path / "corpus")
    cfg = _cfg(tmp_path, sources)
    cfg.data.strict = True
    with pytest.raises(PrepareError) as err:
        prepare(cfg, progress=False)
    assert str(err.value).startswith(f"{sources[0]}:2: unparseable_row")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_cli_prepare_prints_the_summary_and_fails_cleanly(tmp_path, capsys):
    from deepsynth_ocr.cli import main

    sources, expected, good = build_corpus(tmp_path / "corpus")
    out = tmp_path / "cli_out"
    assert main(["prepare", sources[0], sources[2], "--out", str(out), "-s", "prepare.validation_size=0"]) == 0
    printed = capsys.readouterr().out
    assert "total: read 19 = kept 5 + rejected 14" in printed
    assert json.loads((out / "manifest.json").read_text())["splits"] == {"train": 5}
    assert main(["prepare", sources[0], "--out", str(out), "--strict"]) == 2
    assert f"{sources[0]}:2: unparseable_row" in capsys.readouterr().err
    assert (out / "manifest.json").is_file()  # the earlier output survives a failed run
