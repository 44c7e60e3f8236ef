"""The jobs UI as an attacker would try it: no write without the CSRF token, no file outside the runs
root, no secret on any page, stream or download, markup in a run name or a prediction shown as text,
no non-loopback bind without a token, launches rate limited, bad form values refused field by field."""

import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.runs import update_manifest
from deepsynth_ocr.ui.app import create_ui_app

from .conftest import ROOT
from .runs_helpers import child_env

SECRET_ENV = "hf_FAKEuiEnvToken1234567890"
SECRET_CONFIG = "hf_FAKEuiConfigToken0987654321"  # pasted into a config value, never in the environment
MARKUP = "<script>window.__pwned = 1</script>"


def _ui(tmp_path, monkeypatch, **ui) -> tuple[TestClient, str]:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_TOKEN", SECRET_ENV)
    cfg = RunConfig()
    cfg.output_root = str(tmp_path / "runs")
    for k, v in ui.items():
        setattr(cfg.ui, k, v)
    app = create_ui_app(cfg)
    client = TestClient(app)
    csrf = client.get("/").text.split('name="csrf" content="')[1].split('"')[0]
    return client, csrf


def _planted_run(root, name="smoke_20261205_100000"):
    """A finished run whose files carry the secrets (as a careless process might have written them) and markup."""
    run_dir = root / name
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "adapter").mkdir()
    update_manifest(run_dir, name=f"smoke{MARKUP}", kind="train", status="failed", created_at="2026-12-05T10:00:00",
                    versions={}, error=f"boom {SECRET_ENV} {MARKUP}", metrics={"before": {"cer": 0.5}, "after": {"cer": 0.1}})
    (run_dir / "config.yaml").write_text(f"name: smoke\nexport:\n  hub_repo_id: someone/{SECRET_CONFIG}\n")
    (run_dir / "console.log").write_text(f"2026-12-05 INFO token {SECRET_ENV} and {SECRET_CONFIG}\n{MARKUP}\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 0, "eval": "before", "cer": 0.5}\n')
    row = {"id": "r1", "image": None, "reference": "ab", "prediction": f"{MARKUP} {SECRET_CONFIG}", "cer": 0.5}
    for tag in ("before", "after"):
        (run_dir / "eval" / f"{tag}.jsonl").write_text(json.dumps(row) + "\n")
    (run_dir / "adapter" / "README.md").write_text(f"pushed with {SECRET_ENV}\n")
    return run_dir


def test_a_write_without_the_csrf_token_or_from_another_origin_is_refused(tmp_path, monkeypatch):
    client, csrf = _ui(tmp_path, monkeypatch)
    run_dir = _planted_run(tmp_path / "runs")
    for headers in ({}, {"X-CSRF-Token": "0" * 64}, {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}):
        r = client.post(f"/api/runs/{run_dir.name}/delete", headers=headers)
        assert r.status_code == 403, headers
    assert run_dir.is_dir()
    r = client.post("/api/launch", json={"preset": "smoke.yaml", "fields": {}})
    assert r.status_code == 403 and not [p for p in (tmp_path / "runs").iterdir() if p.name != ".ui" and p != run_dir]
    assert client.post(f"/api/runs/{run_dir.name}/delete", headers={"X-CSRF-Token": csrf}).json() == {"deleted": run_dir.name}
    assert not run_dir.exists()


def test_files_outside_the_runs_root_are_404_traversal_and_symlinks_included(tmp_path, monkeypatch):
    client, _ = _ui(tmp_path, monkeypatch)
    run_dir = _planted_run(tmp_path / "runs")
    outside = tmp_path / "outside.txt"
    outside.write_text("private")
    (run_dir / "escape.txt").symlink_to(outside)
    (run_dir / "escape_dir").symlink_to(tmp_path)
    for url in ("/files/../outside.txt", "/files/%2e%2e/outside.txt", "/files/..%2foutside.txt",
                f"/files/{run_dir.name}/escape.txt", f"/files/{run_dir.name}/escape_dir/outside.txt",
                "/files//etc/passwd", "/files/.ui/secret", f"/files/{run_dir.name}/../../outside.txt",
                "/runs/..%2f..%2foutside.txt", f"/runs/{run_dir.name}/image/after/0", f"/runs/{run_dir.name}/image/x/-1"):
        r = client.get(url)
        assert r.status_code == 404 and "private" not in r.text, url
    assert client.get(f"/files/{run_dir.name}/metrics.jsonl").status_code == 200


def test_planted_secrets_reach_no_page_stream_or_download(tmp_path, monkeypatch):
    client, _ = _ui(tmp_path, monkeypatch)
    run_dir = _planted_run(tmp_path / "runs")
    name = run_dir.name
    pages = ["/", "/api/runs", f"/runs/{name}", f"/api/runs/{name}", f"/files/{name}/", f"/files/{name}/console.log",
             f"/files/{name}/config.yaml", f"/files/{name}/manifest.json", f"/files/{name}/eval/after.jsonl",
             f"/files/{name}/adapter/README.md", f"/compare?run={name}&run={name}", "/launch", "/api/presets/smoke.yaml",
             "/data", "/try"]
    for url in pages:
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code)
        assert SECRET_ENV not in r.text and SECRET_CONFIG not in r.text, url
    with client.stream("GET", f"/runs/{name}/events") as stream:
        text = ""
        for chunk in stream.iter_text():
            text += chunk
            if "event: run" in text and "event: log" in text:
                break
    assert "token *** and ***" in text and SECRET_ENV not in text and SECRET_CONFIG not in text
    assert "someone/***" in client.get(f"/runs/{name}").text


def test_markup_in_a_run_name_or_a_prediction_is_escaped_in_server_rendered_pages(tmp_path, monkeypatch):
    client, _ = _ui(tmp_path, monkeypatch)
    run_dir = _planted_run(tmp_path / "runs")
    page = client.get(f"/runs/{run_dir.name}").text
    assert MARKUP not in page and "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    compare = client.get(f"/compare?run={run_dir.name}&run={run_dir.name}").text
    assert MARKUP not in compare.replace("<script id=\"compare-data\"", "")  # the curves' JSON holds numbers only


def test_bad_form_values_are_refused_next_to_their_field_and_nothing_starts(tmp_path, monkeypatch):
    client, csrf = _ui(tmp_path, monkeypatch)
    fields = {"train.learning_rate": "-1", "data.train_path": "/etc/passwd", "lora.r": "many", "name": "a/b"}
    r = client.post("/api/launch", json={"preset": "smoke.yaml", "fields": fields}, headers={"X-CSRF-Token": csrf})
    errors = r.json()["errors"]
    assert r.status_code == 400 and set(errors) == set(fields)
    assert errors["train.learning_rate"] == "train.learning_rate: must be > 0, got -1.0"
    assert "outside the UI's data roots" in errors["data.train_path"] and "expected int" in errors["lora.r"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [".ui"]
    for preset in ("../requirements-cpu.txt", "sweeps/../../Makefile", "/etc/hostname", "sweeps/smoke-space.yaml"):
        r = client.post("/api/launch", json={"preset": preset, "fields": {}}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 404, preset
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [".ui"]


def test_launches_are_rate_limited(tmp_path, monkeypatch):
    client, csrf = _ui(tmp_path, monkeypatch, launches_per_minute=2, gpu_slots=1)
    monkeypatch.setattr("deepsynth_ocr.ui.scheduler.start", lambda launch, env=None, cwd=None: subprocess.Popen(["true"]))
    codes = [client.post("/api/launch", json={"preset": "smoke.yaml", "fields": {"train.max_steps": "5"}},
                         headers={"X-CSRF-Token": csrf}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_the_issue_30_writes_need_the_csrf_token_are_rate_limited_and_escape_the_pages_they_fill(tmp_path, monkeypatch):
    """Slices, corrections (from a row and from the playground), presets and queue moves: refused without the CSRF
    token (nothing written), limited per minute, and a corrected text holding markup shows as text."""
    client, csrf = _ui(tmp_path, monkeypatch, uploads_per_minute=2, data_roots=[str(tmp_path / "data")])
    run_dir = _planted_run(tmp_path / "runs")
    rows = [{"id": f"r{i}", "image": str(ROOT / "data" / "smoke-domain" / "images" / f"eval_000{i}.png"), "reference": "ab",
             "prediction": MARKUP, "cer": 0.5, "task": "ocr"} for i in range(3)]
    (run_dir / "eval" / "after.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(client.app.state.ui, "data_roots", [tmp_path / "data", ROOT / "data"])
    writes = [(f"/api/runs/{run_dir.name}/slice", {"tag": "after", "rows": [0], "name": "s"}),
              (f"/api/runs/{run_dir.name}/corrections", {"tag": "after", "rows": [0], "texts": {"0": MARKUP}, "dataset": "c"}),
              ("/api/try/correct", {"upload": "0" * 32, "text": "x", "dataset": "c"}),
              ("/api/presets", {"preset": "smoke.yaml", "fields": {}, "name": "p"}),
              (f"/api/queue/{run_dir.name}/move", {"to": "up"})]
    for url, body in writes:
        assert client.post(url, json=body).status_code == 403, url
    assert not (tmp_path / "data").exists() and not (ROOT / "configs" / "p.yaml").exists()
    ok = client.post(writes[1][0], json=writes[1][1], headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    page = client.get(f"/runs/{run_dir.name}/errors").text
    assert MARKUP not in page and "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page  # rows and diffs escaped
    codes = [client.post(writes[0][0], json={**writes[0][1], "name": f"s{i}"}, headers={"X-CSRF-Token": csrf}).status_code
             for i in range(2)]
    assert codes == [200, 429]  # two data writes a minute: the corrections above and one slice


def test_a_token_guards_every_request_and_signs_in_once(tmp_path, monkeypatch):
    token = "t" * 24
    monkeypatch.chdir(ROOT)
    cfg = RunConfig()
    cfg.output_root = str(tmp_path / "runs")
    client = TestClient(create_ui_app(cfg, token))
    assert client.get("/").status_code == 401 and client.get("/api/runs").status_code == 401
    assert client.get("/health").json() == {"status": "ok"}  # the container's probe, and nothing else
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    signed = client.get(f"/?token={token}", follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/" and "HttpOnly" in signed.headers["set-cookie"]
    assert client.get("/").status_code == 200  # the cookie from here on


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::"])
def test_a_non_loopback_bind_without_a_token_is_refused_in_one_line(host, tmp_path):
    env = {k: v for k, v in child_env().items() if k != "DEEPSYNTH_UI_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "deepsynth_ocr.cli", "ui", "--root", str(tmp_path), "--host", host,
                        "--port", "8799"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "DEEPSYNTH_UI_TOKEN" in r.stderr, r.stderr
    short = subprocess.run([sys.executable, "-m", "deepsynth_ocr.cli", "ui", "--root", str(tmp_path), "--host", host],
                           cwd=ROOT, env={**env, "DEEPSYNTH_UI_TOKEN": "short"}, capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "shorter than 16" in short.stderr
    assert os.listdir(tmp_path) == []  # refused before anything was written
