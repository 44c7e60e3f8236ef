"""Where the time goes: the server's stage histograms, OpenTelemetry spans (request tree, batch links, job
stages), JSON log lines, sample persistence with redaction and retention, and the Grafana dashboard's
metrics. The server parts run the real app and batching queue over an engine that reads each image's
size as its text (no model), so they take seconds."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from deepsynth_ocr import logs, telemetry
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.evaluate import Prediction
from deepsynth_ocr.serving.app import create_app
from deepsynth_ocr.serving.metrics import STAGES

from .conftest import ROOT


class SizeEngine:
    """Answers each image with its size; spends a little time in each batch stage so the clocks move."""

    base_name, adapters, default_model, default_prompt = "fake", [], "fake", "<image>\nFree OCR."
    names = ["fake"]

    def __init__(self, cfg: RunConfig):
        self.cfg, self.batches = cfg, []

    def run_batch(self, name, rows, bounds, clock=None):
        self.batches.append(len(rows))
        with clock.stage("preprocess"):
            time.sleep(0.002)
        with clock.stage("generate"):
            time.sleep(0.01)
            return [Prediction(f"{r['image'].width}x{r['image'].height}", True, n_tokens=3) for r in rows]


def png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(width: int, height: int = 20) -> dict:
    return {"model": "fake", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png(width, height)}}, {"type": "text", "text": "Free OCR."}]}]}


def make_app(tmp_path: Path, tracer=None, **serve):
    cfg = RunConfig()
    cfg.serve.max_wait_ms = 200  # concurrent requests share a batch
    for name, value in serve.items():
        setattr(cfg.serve, name, value)
    cfg.validate()
    return create_app(SizeEngine(cfg), cfg, [], tracer)


def samples(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


def in_memory_tracer():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def post_concurrently(client: TestClient, bodies: list[dict], ids: list[str]) -> list:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b_i: client.post("/v1/chat/completions", json=b_i[0], headers={"X-Request-Id": b_i[1]}),
                             zip(bodies, ids, strict=True)))


def test_every_stage_histogram_moves_when_a_request_is_served_and_the_access_log_carries_the_stages(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="deepsynth_ocr.serving.access")
    with TestClient(make_app(tmp_path)) as client:
        before = samples(client.get("/metrics").text, "deepsynth_ocr_stage_seconds_count")
        reply = client.post("/v1/chat/completions", json=chat(40), headers={"X-Request-Id": "one"})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "40x20"
        text = client.get("/metrics").text
    after = samples(text, "deepsynth_ocr_stage_seconds_count")
    sums = samples(text, "deepsynth_ocr_stage_seconds_sum")
    for stage in STAGES:
        key = (("stage", stage),)
        assert after[key] == before.get(key, 0) + 1, stage
    # The batch's stages are what the engine spent: 2 ms preprocessing, 10 ms generating.
    assert sums[(("stage", "preprocess"),)] >= 0.002 and sums[(("stage", "generate"),)] >= 0.01
    line = next(r for r in caplog.records if r.name == "deepsynth_ocr.serving.access" and r.fields["request_id"] == "one")
    assert {f"{s}_ms" for s in STAGES} <= set(line.fields) and line.fields["generate_ms"] >= 10


def test_a_json_log_line_per_request_parses_and_names_the_request(tmp_path):
    stream = io.StringIO()
    logs.configure("json", stream=stream)
    try:
        with TestClient(make_app(tmp_path)) as client:
            client.post("/v1/chat/completions", json=chat(30), headers={"X-Request-Id": "req-json-1"})
            client.post("/v1/chat/completions", json={"model": "nope"}, headers={"X-Request-Id": "req-json-2"})
    finally:
        logs.configure("text")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is one JSON object
    access = {r["request_id"]: r for r in lines if r["logger"] == "deepsynth_ocr.serving.access"}
    ok, bad = access["req-json-1"], access["req-json-2"]
    assert ok["status"] == 200 and ok["level"] == "INFO" and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", ok["time"])
    assert ok["batch_size"] == 1 and ok["generate_ms"] >= 10 and "text" not in ok
    assert bad["status"] == 404 and bad["error"]  # an unknown model, as OpenAI answers it


def test_spans_form_a_tree_per_request_and_the_batch_span_links_every_request_it_served(tmp_path):
    tracer, exporter = in_memory_tracer()
    with TestClient(make_app(tmp_path, tracer)) as client:
        replies = post_concurrently(client, [chat(10 + i) for i in range(3)], [f"r{i}" for i in range(3)])
    assert [r.json()["choices"][0]["message"]["content"] for r in replies] == ["10x20", "11x20", "12x20"]
    spans = exporter.get_finished_spans()
    roots = {s.attributes["request_id"]: s for s in spans if s.name == "POST /v1/chat/completions"}
    assert set(roots) == {"r0", "r1", "r2"}
    for root in roots.values():
        children = sorted((s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
                          key=lambda s: s.start_time)
        assert [c.name for c in children] == ["body_read", "decode", "queue_wait", "preprocess", "generate", "respond"]
        assert all(root.start_time <= c.start_time <= c.end_time <= root.end_time for c in children)
        assert root.attributes["http.status_code"] == 200 and root.attributes["batch_size"] == 3
    (batch,) = [s for s in spans if s.name == "batch"]
    assert batch.attributes["batch.size"] == 3
    assert {link.context.span_id for link in batch.links} == {r.context.span_id for r in roots.values()}
    stages = [s.name for s in spans if s.parent is not None and s.parent.span_id == batch.context.span_id]
    assert sorted(stages) == ["generate", "preprocess"]


def test_without_otel_variables_no_tracer_and_without_the_sdk_a_warning_not_a_crash(monkeypatch, caplog):
    assert telemetry.tracer_from_env("x", env={}) is None
    assert telemetry.tracer_from_env("x", env={"OTEL_TRACES_EXPORTER": "none"}) is None
    assert telemetry.tracer_from_env("x", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318",
                                               "OTEL_SDK_DISABLED": "true"}) is None
    monkeypatch.setitem(__import__("sys").modules, "opentelemetry.sdk.trace", None)  # the SDK is not installed
    caplog.set_level(logging.WARNING)
    assert telemetry.tracer_from_env("x", env={"OTEL_TRACES_EXPORTER": "console"}) is None
    assert "opentelemetry-sdk is not installed" in caplog.text
    with telemetry.span(None, "nothing") as span:  # the helpers are no-ops on None
        assert span is None
    telemetry.record(None, "nothing", None, 0, 1)


def test_sample_persistence_is_off_by_default_and_writes_nothing(tmp_path):
    with TestClient(make_app(tmp_path)) as client:
        assert client.post("/v1/chat/completions", json=chat(20)).status_code == 200
        assert client.app.state.samples is None
    assert list(tmp_path.rglob("*")) == []


def _wait_for_files(folder: Path, pattern: str, n: int) -> list[Path]:
    deadline = time.time() + 10
    while len(found := sorted(folder.rglob(pattern))) < n and time.time() < deadline:
        time.sleep(0.05)
    return found


def test_kept_samples_hold_thumbnail_and_text_and_redaction_keeps_only_length_and_hash(tmp_path):
    plain, redacted = tmp_path / "plain", tmp_path / "redacted"
    with TestClient(make_app(tmp_path, samples_dir=str(plain), samples_rate=1.0)) as client:
        client.post("/v1/chat/completions", json=chat(300, 100), headers={"X-Request-Id": "kept-1"})
        (record,) = _wait_for_files(plain, "kept-1.json", 1)
    kept = json.loads(record.read_text())
    assert kept["pages"][0]["text"] == "300x100" and kept["stages_ms"]["generate_ms"] >= 10
    with Image.open(record.parent / kept["pages"][0]["thumbnail"]) as thumb:
        assert max(thumb.size) == 256  # a thumbnail, not the upload

    with TestClient(make_app(tmp_path, samples_dir=str(redacted), samples_rate=1.0, samples_redact=True)) as client:
        client.post("/v1/chat/completions", json=chat(300, 100), headers={"X-Request-Id": "kept-2"})
        (record,) = _wait_for_files(redacted, "kept-2.json", 1)
    page = json.loads(record.read_text())["pages"][0]
    import hashlib

    assert page == {"width": 300, "height": 100, "text_chars": 7, "text_sha256": hashlib.sha256(b"300x100").hexdigest()}
    assert [p.name for p in redacted.rglob("*") if p.is_file()] == ["kept-2.json"]  # no thumbnail
    assert "300x100" not in record.read_text()


def test_sample_retention_removes_the_oldest_beyond_the_size_and_age_limits(tmp_path):
    from deepsynth_ocr.config import ServeConfig
    from deepsynth_ocr.serving.samples import SampleKeeper

    folder = tmp_path / "samples"
    day = folder / "2026-01-01"
    day.mkdir(parents=True)
    now = time.time()
    for i, age_days in enumerate([40, 3, 2, 1]):  # the first is past the age limit
        p = day / f"old-{i}.json"
        p.write_bytes(b"x" * 400_000)
        os.utime(p, (now - age_days * 86400, now - age_days * 86400))
    cfg = ServeConfig(samples_dir=str(folder), samples_rate=1.0, samples_max_mb=1.0, samples_max_age_days=30)
    SampleKeeper(cfg)  # retention runs at start-up
    assert sorted(p.name for p in day.iterdir()) == ["old-2.json", "old-3.json"]  # age first, then the oldest past 1 MiB


def test_the_grafana_dashboard_queries_only_metrics_the_server_exports(tmp_path):
    dashboard = json.loads((ROOT / "docker" / "grafana" / "deepsynth-ocr-server.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bdeepsynth_ocr_[a-z_]+", target["expr"])}
    with TestClient(make_app(tmp_path)) as client:
        client.post("/v1/chat/completions", json=chat(20))
        client.post("/v1/chat/completions", json={"model": "nope"})  # an error, so the errors counter has a series
        exported = {s.name for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    assert len(queried) >= 8
    assert queried <= exported, f"the dashboard queries metrics /metrics does not have: {sorted(queried - exported)}"
    stages = {s for panel in dashboard["panels"] for t in panel["targets"] if "stage" in t["expr"] for s in [t["expr"]]}
    assert stages, "the dashboard shows the per-stage times"


def test_a_training_job_traces_its_stages_logs_json_lines_and_times_its_evaluation(smoke_cfg, monkeypatch, capsys):
    """One short run with OTEL on (the in-memory exporter) and log.format json: the job span's children are
    load -> eval_before -> train -> eval_after -> save; every console line is a JSON object carrying the run
    id, the step records carry their stage times; the eval summaries carry decode/preprocess/generate."""
    from deepsynth_ocr.jobs.train import train

    tracer, exporter = in_memory_tracer()
    monkeypatch.setattr(telemetry, "tracer_from_env", lambda service, env=None: tracer)
    smoke_cfg.train.max_steps, smoke_cfg.train.logging_steps, smoke_cfg.train.save_steps = 4, 2, 0
    smoke_cfg.eval.max_samples, smoke_cfg.tracking.wandb = 4, "disabled"
    smoke_cfg.log.format = "json"
    run_dir = train(smoke_cfg).run_dir

    spans = exporter.get_finished_spans()
    (job,) = [s for s in spans if s.name == "deepsynth-ocr train"]
    assert job.attributes["run_id"] == run_dir.name and job.attributes["run.status"] == "ok"
    stages = sorted((s for s in spans if s.parent is not None and s.parent.span_id == job.context.span_id),
                    key=lambda s: s.start_time)
    assert [s.name for s in stages] == ["load", "eval_before", "train", "eval_after", "save"]

    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # nothing but JSON on the console
    steps = [r for r in records if r["message"].startswith("step ") and "loss" in r]
    assert [r["step"] for r in steps] == [2, 4] and all(r["run_id"] == run_dir.name for r in steps)
    assert all(r["time/forward_backward_s"] > 0 and r["samples_per_s"] > 0 for r in steps)
    evals = {r["eval"]: r for r in records if r.get("eval") in ("before", "after")}
    assert set(evals) == {"before", "after"} and evals["after"]["n"] == 4
    console_log = [json.loads(line) for line in (run_dir / "console.log").read_text().splitlines()]
    assert any(r["message"].startswith("step 4") for r in console_log)

    summary = json.loads((run_dir / "manifest.json").read_text())["metrics"]["after"]
    assert summary["time/generate_s"] > 0 and summary["time/preprocess_s"] > 0 and summary["time/decode_s"] >= 0
    assert summary["images_per_s"] > 0
    assert summary["time/decode_s"] + summary["time/preprocess_s"] + summary["time/generate_s"] <= summary["time/wall_s"] * 1.01


def test_infer_reports_where_its_time_went(tmp_path):
    from deepsynth_ocr.jobs.infer import infer

    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.model.name_or_path, cfg.infer.batch_size = "random", 2
    images = sorted((ROOT / "data" / "samples" / "images").glob("*.png"))[:3]
    summary = infer([str(p) for p in images], tmp_path / "out.jsonl", cfg)
    assert summary.written == 3
    assert summary.timing["time/decode_s"] > 0 and summary.timing["time/generate_s"] > 0
    assert summary.timing["images_per_s"] > 0
    assert re.search(r"decode [\d.]+ s, preprocess [\d.]+ s, generate [\d.]+ s, [\d.]+ inputs/s", str(summary))


def test_each_api_key_has_its_own_token_bucket_and_a_429_says_when_to_retry(tmp_path, monkeypatch):
    """serve.rate_limit_per_minute per client: a key over its bucket gets 429 with Retry-After and is counted under
    a hash of the key, never the key; another key (with its own rate from the keys file) is not affected; the bucket
    refills with time."""
    from deepsynth_ocr.jobs.serve import api_keys
    from deepsynth_ocr.serving import limits

    slow_key, fast_key = "slow-key-0123456789abcdef", "fast-key-0123456789abcdef"
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# team keys\n{slow_key}\n{fast_key} rate_limit_per_minute=6000\n")
    now = [1000.0]
    monkeypatch.setattr(limits.time, "monotonic", lambda: now[0])
    cfg = RunConfig()
    cfg.serve.rate_limit_per_minute, cfg.serve.rate_limit_burst, cfg.serve.api_keys_file = 30.0, 2, str(keys_file)
    keys = api_keys(cfg.serve)
    assert keys == {fast_key: 6000.0, slow_key: None}
    app = create_app(SizeEngine(cfg), cfg, keys)
    slow, fast = ({"Authorization": f"Bearer {k}"} for k in (slow_key, fast_key))
    with TestClient(app) as client:
        assert [client.get("/v1/models", headers=slow).status_code for _ in range(2)] == [200, 200]  # the burst
        refused = client.get("/v1/models", headers=slow)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"  # 30 a minute: one per 2 s
        assert refused.json()["error"]["code"] == "rate_limited"
        fast_codes = []
        for _ in range(5):  # 100 a second: a token back every 10 ms
            now[0] += 0.02
            fast_codes.append(client.get("/v1/models", headers=fast).status_code)
        assert fast_codes == [200] * 5  # its own bucket and rate
        assert client.get("/v1/models").status_code == 401  # no key: refused before any bucket
        assert client.get("/v1/models", headers=slow).status_code == 429  # 100 ms later: still empty
        now[0] += 2.0
        assert client.get("/v1/models", headers=slow).status_code == 200  # refilled
        metrics = client.get("/metrics", headers=fast).text
    counted = samples(metrics, "deepsynth_ocr_rate_limited_total")
    assert counted == {(("client", limits.client_id(slow_key.encode(), None)),): 2.0}
    assert slow_key not in metrics and samples(metrics, "deepsynth_ocr_errors_total")[(("kind", "rate_limited"),)] == 2.0


def test_a_bad_rate_in_the_keys_file_names_the_line_not_the_key(tmp_path):
    from deepsynth_ocr.errors import UserError
    from deepsynth_ocr.jobs.serve import api_keys

    keys_file = tmp_path / "keys.txt"
    secret = "secret-key-0123456789abcdef"
    keys_file.write_text(f"{secret} rate_limit_per_minute=fast\n")
    cfg = RunConfig()
    cfg.serve.api_keys_file = str(keys_file)
    with pytest.raises(UserError, match="line 1") as e:
        api_keys(cfg.serve)
    assert secret not in str(e.value)
