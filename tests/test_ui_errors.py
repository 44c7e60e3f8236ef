"""Issue 30 items 3 and 4 through the UI's HTTP API: an evaluation's rows worst first with failure kinds, filters,
the same rows in another run, CSV/Markdown export, an eval slice written under the data roots, and a versioned
corrections dataset (images copied, duplicates refused, nothing overwritten) that the launch form trains on."""

import csv
import io
import json
import shutil

import pytest
from fastapi.testclient import TestClient

from deepsynth_ocr import corrections
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.runs import update_manifest
from deepsynth_ocr.ui.app import create_ui_app

from .conftest import ROOT

DOMAIN = ROOT / "data" / "smoke-domain"
MARKUP = "<b>x</b>&amp;"


@pytest.fixture
def ui(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = tmp_path / "data"
    shutil.copytree(DOMAIN, data / "domain")
    cfg = RunConfig()
    cfg.output_root, cfg.ui.data_roots = str(tmp_path / "runs"), [str(data)]
    client = TestClient(create_ui_app(cfg))
    client.headers["X-CSRF-Token"] = client.get("/").text.split('name="csrf" content="')[1].split('"')[0]
    return client, tmp_path / "runs", data


def _eval_row(source: dict, data, prediction: str, **fields) -> dict:
    from deepsynth_ocr.metrics import RAW, SampleScore

    score = SampleScore.of(source["text"], prediction, RAW, fields.pop("looped", False)).to_dict()
    return {"id": source["id"], "image": str(data / "domain" / source["image"]), "task": fields.pop("task", "ocr"),
            "prompt": "<image>\nFree OCR.", "reference": source["text"], "prediction": prediction, **score, **fields}


def make_run(root, name, data, predictions: dict[int, str], looped=(), tasks=None) -> str:
    """A finished evaluation run whose eval/after.jsonl reads the domain's eval rows as ``predictions`` says."""
    sources = [json.loads(line) for line in (data / "domain" / "eval.jsonl").read_text().splitlines()]
    run_dir = root / f"{name}_20261206_100000"
    (run_dir / "eval").mkdir(parents=True)
    update_manifest(run_dir, name=name, kind="evaluate", status="ok", created_at="2026-12-06T10:00:00", versions={})
    rows = [_eval_row(s, data, predictions.get(i, s["text"]), looped=i in looped, task=(tasks or {}).get(i, "ocr"))
            for i, s in enumerate(sources)]
    (run_dir / "eval" / "after.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.data.eval_path = str(data / "domain" / "eval.jsonl")
    cfg.to_yaml(run_dir / "config.yaml")
    return run_dir.name


def test_rows_come_worst_first_with_failure_kinds_filters_and_a_diff_that_keeps_markup_as_text(ui):
    client, root, data = ui
    name = make_run(root, "base", data, {0: "", 1: "xxxxxxxxxxxxx", 2: "g8t" + MARKUP, 3: "e5f"}, looped={1}, tasks={3: "markdown"})
    page = client.get(f"/runs/{name}/errors")
    assert page.status_code == 200
    ids = [part.split('"')[0] for part in page.text.split('data-id="')[1:]]
    assert ids[:3] == ["eval_0002", "eval_0001", "eval_0000"]  # CER 4.0, 3.25 (a loop), then the empty reading (1.0)
    total = len((data / "domain" / "eval.jsonl").read_text().splitlines())
    assert len(ids) == min(50, total) and f"of {total} rows" in page.text  # one page of 50
    assert f"<ins>g8t{MARKUP.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}</ins>" in page.text
    assert "<b>x</b>" not in page.text  # the prediction's markup is text on the page, never markup
    empty = client.get(f"/runs/{name}/errors?kind=empty").text
    assert [p.split('"')[0] for p in empty.split('data-id="')[1:]] == ["eval_0000"]
    loops = client.get(f"/runs/{name}/errors?kind=repetition").text
    assert [p.split('"')[0] for p in loops.split('data-id="')[1:]] == ["eval_0001"]
    catastrophic = client.get(f"/runs/{name}/errors?kind=catastrophic").text
    assert [p.split('"')[0] for p in catastrophic.split('data-id="')[1:]] == ["eval_0002", "eval_0001"]
    markdown = client.get(f"/runs/{name}/errors?task=markdown").text
    assert [p.split('"')[0] for p in markdown.split('data-id="')[1:]] == ["eval_0003"]
    assert client.get(f"/runs/{name}/errors?kind=nonsense").status_code == 400
    assert client.get(f"/runs/{name}/errors?tag=../../etc").status_code == 404
    image = client.get(f"/runs/{name}/image/after/0")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert f'href="/runs/{name}/errors"' in client.get(f"/runs/{name}").text  # reached from the run page


def test_the_same_rows_in_another_run_and_the_export_as_csv_and_markdown(ui):
    client, root, data = ui
    base = make_run(root, "base", data, {0: "zzzz", 5: "a|b\n<i>"})
    tuned = make_run(root, "tuned", data, {0: "g8t0"})
    page = client.get(f"/runs/{base}/errors?vs={tuned}&kind=error").text
    assert page.count('data-id="') == 2 and "g8t0" in page  # the other run's reading of the same row beside it
    table = list(csv.reader(io.StringIO(client.get(f"/runs/{base}/errors.csv?vs={tuned}&kind=error").text)))
    assert table[0] == ["id", "task", "score", "failure", "reference", "prediction", f"prediction ({tuned})", f"score ({tuned})"]
    assert [r[0] for r in table[1:]] == ["eval_0005", "eval_0000"] and table[1][5] == "a|b\n<i>"  # worst first
    assert table[2][6] == "g8t0" and table[2][7].startswith("CER 0.250")
    md = client.get(f"/runs/{base}/errors.md?vs={tuned}&kind=error").text.splitlines()
    assert len(md) == 4 and "a\\|b ⏎ &lt;i&gt;" in md[2]  # one table row per eval row; markup kept as text


def _read_as_training_does(path, tiny_parts) -> list[dict]:
    tokenizer, _, family = tiny_parts
    ds, report = prepare_manifest(str(path), RunConfig().data, tokenizer, family.default_prompt)
    assert report.rejected == 0, report
    return [ds[i] for i in range(len(ds))]


def test_ticked_rows_become_an_eval_slice_the_kit_reads_and_an_existing_slice_is_never_overwritten(ui, tiny_parts):
    client, root, data = ui
    name = make_run(root, "base", data, {0: "zzzz"})
    saved = client.post(f"/api/runs/{name}/slice", json={"tag": "after", "rows": [0, 3], "name": "hard-rows"})
    assert saved.status_code == 200, saved.text
    path = data / "slices" / "hard-rows.jsonl"
    assert saved.json()["slice"] == str(path)
    rows = _read_as_training_does(path, tiny_parts)
    assert [r["id"] for r in rows] == ["eval_0000", "eval_0003"] and rows[0]["text"] == "g8t5"
    again = client.post(f"/api/runs/{name}/slice", json={"tag": "after", "rows": [1], "name": "hard-rows"})
    assert again.status_code == 409 and "never overwritten" in again.json()["error"]
    assert len(path.read_text().splitlines()) == 2
    assert client.post(f"/api/runs/{name}/slice", json={"tag": "after", "rows": [99], "name": "x"}).status_code == 400
    assert client.post(f"/api/runs/{name}/slice", json={"tag": "after", "rows": [1], "name": "../x"}).status_code == 400
    no_csrf = client.post(f"/api/runs/{name}/slice", json={"tag": "after", "rows": [1], "name": "y"}, headers={"X-CSRF-Token": ""})
    assert no_csrf.status_code == 403 and not (data / "slices" / "y.jsonl").exists()


def test_corrections_are_versioned_copy_their_images_refuse_duplicates_and_feed_the_launch_form(ui, tiny_parts):
    client, root, data = ui
    name = make_run(root, "base", data, {0: "zzzz", 1: "qqqq", 2: "wwww"})
    first = client.post(f"/api/runs/{name}/corrections", json={
        "tag": "after", "rows": [0, 1], "texts": {"0": "g8t5", "1": "e5f3"}, "dataset": "fixes"})
    assert first.status_code == 200, first.text
    folder = data / "corrections" / "fixes"
    assert first.json()["version"] == str(folder / "v0001.jsonl") and first.json()["rows"] == 2
    v1 = (folder / "v0001.jsonl").read_text()
    second = client.post(f"/api/runs/{name}/corrections", json={
        "tag": "after", "rows": [1, 2], "texts": {"1": "other", "2": "n1z3"}, "dataset": "fixes"})
    body = second.json()
    assert second.status_code == 200 and body["version"] == str(folder / "v0002.jsonl") and len(body["added"]) == 1
    assert len(body["refused"]) == 1 and "already in fixes v0001" in body["refused"][0]  # reported, not dropped
    assert (folder / "v0001.jsonl").read_text() == v1  # the earlier version is untouched
    rows = corrections.read_rows(folder / "v0002.jsonl")
    assert [r["text"] for r in rows] == ["g8t5", "e5f3", "n1z3"] and rows[2]["source"] == f"{name} after row eval_0002"
    assert all((folder / r["image"]).is_file() for r in rows)  # copied: the dataset outlives the run and its source
    assert (folder / rows[0]["image"]).read_bytes() == (data / "domain" / "images" / "eval_0000.png").read_bytes()
    loaded = _read_as_training_does(folder / "v0002.jsonl", tiny_parts)
    assert [r["text"] for r in loaded] == ["g8t5", "e5f3", "n1z3"] and loaded[0]["prompt"] == "<image>\nFree OCR."
    only_dupes = client.post(f"/api/runs/{name}/corrections", json={
        "tag": "after", "rows": [0], "texts": {"0": "g8t5"}, "dataset": "fixes"})
    assert only_dupes.status_code == 409 and "duplicates are refused" in only_dupes.json()["error"]
    assert corrections.versions(folder)[-1].name == "v0002.jsonl"
    empty = client.post(f"/api/runs/{name}/corrections", json={"tag": "after", "rows": [3], "texts": {"3": "  "}, "dataset": "fixes"})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    assert client.post(f"/api/runs/{name}/corrections", json={
        "tag": "after", "rows": [3], "texts": {"3": "x"}, "dataset": "../up"}).status_code == 400

    page = client.get(f"/runs/{name}/errors").text
    assert "v0001, v0002" in page and f"train_path={folder / 'v0002.jsonl'}" in page
    form = client.get(f"/launch?clone={name}&train_path={folder / 'v0002.jsonl'}")
    assert f'data-train-path="{folder / "v0002.jsonl"}"' in form.text  # the page puts it into data.train_path
    assert client.get(f"/launch?clone={name}&train_path=/etc/passwd").status_code == 404
    preview = client.post("/api/launch/preview", json={"clone": name, "fields": {"data.train_path": str(folder / "v0002.jsonl")}})
    assert preview.status_code == 200 and f'data.train_path="{folder / "v0002.jsonl"}"' in preview.json()["command"]
