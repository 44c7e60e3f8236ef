"""The OCR server on the bundled tiny base: the official openai client gets what ``deepsynth-ocr infer``
writes, requests are batched, bad input is a 4xx, keys guard it, SIGTERM answers what is in flight."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.jobs.serve import build_app, plan_models, server_config

from .conftest import ROOT

DOMAIN = ROOT / "data" / "smoke-domain"
IMAGES = sorted((DOMAIN / "images").glob("eval_*.png"))[:4]
KEY = "test-key-0123456789abcdef"


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def chat_body(model: str, url: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}], **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A short real LoRA run on the tiny base (eval off): the fine-tune the server is started for."""
    from deepsynth_ocr.jobs.train import train

    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.output_root = str(tmp_path_factory.mktemp("runs"))
    cfg.data.train_path, cfg.data.eval_path = str(DOMAIN / "train.jsonl"), ""
    cfg.train.max_steps, cfg.train.learning_rate, cfg.train.save_steps = 8, 4e-3, 0
    cfg.tracking.wandb = "disabled"
    return train(cfg).run_dir


def generation_processes(pid: int) -> list[psutil.Process]:
    """The spawned children of ``pid`` that run generation (not multiprocessing's resource tracker)."""
    return [c for c in psutil.Process(pid).children() if "spawn_main" in " ".join(c.cmdline())]


def run_config(run_dir: Path, **serve) -> RunConfig:
    """The run's own config (as ``serve --run`` reads it) with ``serve`` fields overridden; the model stays in
    the server's process unless a test asks for the generation process (the default, which the ``served``
    fixture and the SIGTERM test use: each spawn costs a few seconds)."""
    from deepsynth_ocr.runs import load_config

    serve.setdefault("generation_process", False)
    cfg = load_config(run_dir, None)
    for name, value in serve.items():
        setattr(cfg.serve, name, value)
    cfg.serve.port = free_port()
    return cfg


@contextlib.contextmanager
def live(cfg: RunConfig, run_dir: Path | None, keys: list[str] = ()):
    """The server (as ``deepsynth-ocr serve`` builds it) on a background thread; yields its base URL."""
    server = uvicorn.Server(server_config(build_app(plan_models(cfg, run_dir), list(keys))))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://{cfg.serve.host}:{cfg.serve.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def metric(text: str, name: str, **labels) -> float:
    """The value of the sample ``name`` with exactly ``labels`` in Prometheus text (0 when absent)."""
    return next((sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                 if sample.name == name and sample.labels == labels), 0.0)


def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body to /v1/chat/completions at once (one connection each); the replies in order."""
    async def fire():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json=b) for b in bodies))

    return asyncio.run(fire())


@pytest.fixture(scope="module")
def served(run_dir):
    """One server for the run: its adapter (named after the run), a second name for the same adapter,
    and the base."""
    cfg = run_config(run_dir, adapters=[f"again={run_dir / 'adapter'}"], generation_process=True)
    with live(cfg, run_dir) as url:
        yield url, cfg


def infer_texts(cfg: RunConfig, images: list[Path], adapter: Path | None, out: Path) -> dict[str, str]:
    from deepsynth_ocr.jobs.infer import infer

    cfg = RunConfig.from_dict(cfg.to_dict())
    cfg.infer.adapter = str(adapter) if adapter else ""
    infer([str(p) for p in images], out, cfg)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {Path(r["file"]).name: r["text"] for r in rows}


def test_the_openai_client_reads_what_infer_writes_for_the_run_and_for_the_base(served, run_dir, tmp_path):
    url, cfg = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    run_name = run_dir.name
    assert [m.id for m in client.models.list().data] == ["tiny-base", run_name, "again"]
    want_run = infer_texts(cfg, IMAGES, run_dir / "adapter", tmp_path / "run.jsonl")
    want_base = infer_texts(cfg, IMAGES, None, tmp_path / "base.jsonl")
    assert want_run != want_base, "the fine-tune reads like the base: the adapter-selection check would prove nothing"
    for model, want in [(run_name, want_run), ("again", want_run), ("tiny-base", want_base)]:
        for image in IMAGES:
            answer = client.chat.completions.create(
                model=model, max_tokens=cfg.infer.max_new_tokens,
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image.read_bytes())}},
                                                        {"type": "text", "text": "Free OCR."}]}])
            assert answer.choices[0].message.content == want[image.name], (model, image.name)
            assert answer.model == model
            assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
            assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    # /v1/ocr reads with the run's adapter when the upload names no model.
    with open(IMAGES[0], "rb") as f:
        page = httpx.post(f"{url}/v1/ocr", files={"file": (IMAGES[0].name, f, "image/png")}).json()
    assert page["model"] == run_name and [p["text"] for p in page["pages"]] == [want_run[IMAGES[0].name]]


def test_a_pdf_upload_answers_one_result_per_page(served):
    url, _ = served
    pages = [Image.open(p).convert("RGB") for p in IMAGES[:3]]
    pdf = io.BytesIO()
    pages[0].save(pdf, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    reply = httpx.post(f"{url}/v1/ocr", files={"file": ("three.pdf", pdf.getvalue(), "application/pdf")},
                       data={"model": "tiny-base", "max_tokens": "12"}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [p["page"] for p in body["pages"]] == [1, 2, 3]
    assert all(p["completion_tokens"] <= 12 for p in body["pages"])
    assert body["usage"]["completion_tokens"] == sum(p["completion_tokens"] for p in body["pages"])


def test_32_concurrent_requests_are_all_answered_in_shared_batches(served):
    url, _ = served
    images = [IMAGES[i % len(IMAGES)] for i in range(32)]
    before = httpx.get(f"{url}/metrics").text
    replies = post_all(url, [chat_body("tiny-base", data_url(p.read_bytes()), max_tokens=16) for p in images])
    assert [r.status_code for r in replies] == [200] * 32
    texts = {}
    for image, reply in zip(images, replies, strict=True):  # the same image always reads the same in any batch
        texts.setdefault(image.name, set()).add(reply.json()["choices"][0]["message"]["content"])
    assert all(len(t) == 1 for t in texts.values()), texts
    after = httpx.get(f"{url}/metrics").text
    batches = metric(after, "deepsynth_ocr_batch_size_count") - metric(before, "deepsynth_ocr_batch_size_count")
    images_done = metric(after, "deepsynth_ocr_batch_size_sum") - metric(before, "deepsynth_ocr_batch_size_sum")
    assert images_done == 32 and batches < 32, (batches, images_done)  # some batch held more than one request
    ok = metric(after, "deepsynth_ocr_requests_total", endpoint="/v1/chat/completions", status="200")
    assert ok - metric(before, "deepsynth_ocr_requests_total", endpoint="/v1/chat/completions", status="200") == 32
    assert metric(after, "deepsynth_ocr_generated_tokens_total") > metric(before, "deepsynth_ocr_generated_tokens_total")
    for stage in ("body_read", "decode", "queue_wait", "generate", "respond"):  # where each request's time went
        count = "deepsynth_ocr_stage_seconds_count"
        assert metric(after, count, stage=stage) - metric(before, count, stage=stage) == 32, stage
        assert metric(after, "deepsynth_ocr_stage_seconds_sum", stage=stage) > metric(before, "deepsynth_ocr_stage_seconds_sum", stage=stage)


def _png(image: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **kw)
    return out.getvalue()


def bad_requests(model: str) -> list[tuple[str, dict, int, str]]:
    """(what, httpx.post keyword arguments, expected status, expected error code)."""
    good = IMAGES[0].read_bytes()
    bomb = _png(Image.new("1", (8000, 6000)), optimize=True)  # 48 Mpx in a few kB: above data.max_image_pixels
    body = chat_body
    return [
        ("bad base64", {"json": body(model, "data:image/png;base64,@@not-base64@@")}, 400, "invalid_base64"),
        ("corrupt image", {"json": body(model, data_url(good[:8] + b"\0" * 200))}, 400, "undecodable_image"),
        ("truncated image", {"json": body(model, data_url(good[: len(good) // 2]))}, 400, "truncated_image"),
        ("decompression bomb", {"json": body(model, data_url(bomb))}, 413, "decompression_bomb"),
        ("not an image", {"json": body(model, data_url(b"%PDF-1.4 hello", "application/pdf"))}, 415, "unsupported_media_type"),
        ("unknown bytes", {"json": body(model, data_url(b"hello, world" * 10))}, 415, "unsupported_media_type"),
        ("missing image_url", {"json": {"model": model, "messages": [{"role": "user", "content": "Free OCR."}]}},
         400, "missing_image_url"),
        ("empty image_url", {"json": body(model, "")}, 400, "missing_image_url"),
        ("two images", {"json": {"model": model, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(good)}}] * 2}]}}, 400, "too_many_images"),
        ("unknown model", {"json": body("no-such-adapter", data_url(good))}, 404, "model_not_found"),
        ("bad JSON", {"content": b'{"model": "x", ', "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ("not an object", {"json": ["a list"]}, 400, "invalid_request"),
        ("sampling", {"json": body(model, data_url(good), temperature=0.7)}, 400, "unsupported_parameter"),
        ("streaming", {"json": body(model, data_url(good), stream=True)}, 400, "unsupported_parameter"),
        ("several choices", {"json": body(model, data_url(good), n=3)}, 400, "unsupported_parameter"),
        ("max_tokens too large", {"json": body(model, data_url(good), max_tokens=10**6)}, 400, "max_tokens_too_large"),
        ("max_tokens not a number", {"json": body(model, data_url(good), max_tokens="many")}, 400, "invalid_max_tokens"),
        ("system message", {"json": {"model": model, "messages": [{"role": "system", "content": "be nice"},
                                                                   *body(model, data_url(good))["messages"]]}},
         400, "unsupported_message"),
        ("remote URL", {"json": body(model, "https://example.com/a.png")}, 400, "remote_url_refused"),
        ("file path", {"json": body(model, str(IMAGES[0]))}, 403, "file_urls_disabled"),
        ("oversized body (declared)", {"content": b"{" + b" " * (21 * 2**20) + b"}",
                                       "headers": {"content-type": "application/json"}}, 413, "body_too_large"),
        ("oversized body (streamed)", {"content": iter([b" " * 2**20] * 21), "headers": {"content-type": "application/json"}},
         413, "body_too_large"),
    ]


def test_each_bad_input_is_a_4xx_naming_the_problem_and_the_server_serves_on(served):
    url, _ = served
    good = chat_body("tiny-base", data_url(IMAGES[0].read_bytes()), max_tokens=16)
    with httpx.Client(base_url=url, timeout=60) as client:
        expected = client.post("/v1/chat/completions", json=good).json()["choices"][0]["message"]["content"]
        for what, kwargs, status, code in bad_requests("tiny-base"):
            reply = client.post("/v1/chat/completions", **kwargs)
            assert reply.status_code == status, (what, reply.status_code, reply.text[:300])
            error = reply.json()["error"]
            assert error["code"] == code and error["message"], (what, error)
            assert client.get("/health").json() == {"status": "ok"}, what
        after = client.post("/v1/chat/completions", json=good)
        assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == expected
        bad_upload = client.post("/v1/ocr", files={"file": ("x.png", b"not an image at all", "image/png")})
        assert bad_upload.status_code == 415 and "x.png" in bad_upload.json()["error"]["message"]
        no_file = client.post("/v1/ocr", data={"model": "tiny-base"})
        assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
        assert client.get("/nowhere").status_code == 404
        assert metric(client.get("/metrics").text, "deepsynth_ocr_errors_total", kind="invalid_base64") >= 1


def test_the_openai_client_sees_the_refusal_as_its_own_error_type(served):
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=chat_body("nope", data_url(IMAGES[0].read_bytes()))["messages"])
    assert "nope" in e.value.message and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-base", temperature=0.5,
                                       messages=chat_body("tiny-base", data_url(IMAGES[0].read_bytes()))["messages"])
    assert e.value.body["param"] == "temperature"


def test_api_keys_guard_the_api_and_the_metrics_but_never_reach_the_log(run_dir, caplog):
    cfg = run_config(run_dir, log_content=False)
    caplog.set_level(logging.INFO)
    with live(cfg, run_dir, keys=[KEY, "second-key-fedcba9876543210"]) as url:
        ok = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
        assert [m.id for m in ok.models.list().data] == ["tiny-base", run_dir.name]
        answer = ok.chat.completions.create(model="tiny-base", max_tokens=8,
                                            messages=chat_body("x", data_url(IMAGES[0].read_bytes()))["messages"])
        second = openai.OpenAI(base_url=f"{url}/v1", api_key="second-key-fedcba9876543210")
        assert second.models.list().data
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key=KEY[:-1] + "X", max_retries=0).models.list()
        for headers in [{}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}]:
            assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 401, headers
            assert httpx.get(f"{url}/metrics", headers=headers).status_code == 401, headers
        assert httpx.get(f"{url}/health").status_code == 200  # probes need no key
        assert httpx.get(f"{url}/ready").status_code == 200
        refused = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny-base"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert KEY not in refused.text
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "deepsynth_ocr.serving.access"]
    assert {a["status"] for a in access} >= {200, 401}
    assert all(re.fullmatch(r"[0-9a-f]{32}", a["request_id"]) for a in access)
    chat = next(a for a in access if a["path"] == "/v1/chat/completions" and a["status"] == 200)
    assert chat["model"] == "tiny-base" and chat["batch_size"] == 1 and chat["completion_tokens"] > 0
    stages = [chat[f"{s}_ms"] for s in ("body_read", "decode", "queue_wait", "generate", "respond")]
    assert all(ms >= 0 for ms in stages) and chat["generate_ms"] > 0 and sum(stages) <= chat["ms"]
    assert "text" not in chat  # no content without serve.log_content
    logged = caplog.text
    assert KEY not in logged and "second-key" not in logged
    content = answer.choices[0].message.content
    assert len(content) < 4 or content not in logged


def test_log_content_puts_the_text_in_the_access_log_and_auth_off_lets_anyone_in(run_dir, caplog):
    cfg = run_config(run_dir, log_content=True)
    caplog.set_level(logging.INFO)
    with live(cfg, run_dir) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 200
        reply = httpx.post(f"{url}/v1/chat/completions", headers={"X-Request-Id": "client-id-7"},
                           json=chat_body("tiny-base", data_url(IMAGES[1].read_bytes()), max_tokens=8), timeout=60)
    assert reply.status_code == 200 and reply.headers["x-request-id"] == "client-id-7"
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "deepsynth_ocr.serving.access"]
    chat = next(a for a in access if a["request_id"] == "client-id-7")
    assert chat["text"] == reply.json()["choices"][0]["message"]["content"]


# The next three hold requests in the queue on purpose: a batch waits up to max_wait_ms to fill, longer
# than the test takes to send them, so what is queued does not depend on how fast this machine generates.

def test_a_full_queue_answers_503_with_retry_after_and_every_queued_request_is_answered(run_dir):
    cfg = run_config(run_dir, max_batch_size=8, max_wait_ms=2000, max_queue=4)
    with live(cfg, run_dir) as url:
        replies = post_all(url, [chat_body("tiny-base", data_url(IMAGES[0].read_bytes()))] * 12)
        statuses = [r.status_code for r in replies]
        assert sorted(statuses) == [200] * 4 + [503] * 8, statuses
        busy = next(r for r in replies if r.status_code == 503)
        assert int(busy.headers["retry-after"]) >= 1 and busy.json()["error"]["code"] == "queue_full"
        assert httpx.get(f"{url}/health").status_code == 200


def test_a_request_past_its_timeout_is_a_504_and_its_work_is_dropped(run_dir):
    cfg = run_config(run_dir, max_batch_size=8, max_wait_ms=1500, request_timeout_s=0.3)
    with live(cfg, run_dir) as url:
        replies = post_all(url, [chat_body("tiny-base", data_url(IMAGES[0].read_bytes()))] * 4)
        assert [r.status_code for r in replies] == [504] * 4
        assert replies[0].json()["error"]["code"] == "timeout"
        time.sleep(2)  # past the batch's wait: the worker finds only abandoned work
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "deepsynth_ocr_batch_size_count") == 0, "timed-out requests were generated anyway"
        assert metric(text, "deepsynth_ocr_queue_depth") == 0


def test_a_client_that_disconnects_has_its_queued_work_dropped(run_dir):
    cfg = run_config(run_dir, max_batch_size=8, max_wait_ms=1500)
    with live(cfg, run_dir) as url:
        async def impatient():
            async with httpx.AsyncClient(timeout=0.3) as client:
                body = chat_body("tiny-base", data_url(IMAGES[0].read_bytes()))
                return await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json=body) for _ in range(4)),
                                            return_exceptions=True)

        replies = asyncio.run(impatient())
        assert all(isinstance(r, httpx.TimeoutException) for r in replies), replies
        time.sleep(2)
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "deepsynth_ocr_errors_total", kind="client_disconnected") == 4
        assert metric(text, "deepsynth_ocr_batch_size_count") == 0, "abandoned requests were generated anyway"
        assert metric(text, "deepsynth_ocr_queue_depth") == 0
        assert httpx.get(f"{url}/health").status_code == 200


def _serve_process(run_dir: Path, port: int, log: Path, *extra: str) -> subprocess.Popen:
    """``deepsynth-ocr serve`` in its own process; its log goes to a file (a pipe nobody reads would fill
    up with access-log lines and block the server)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEEPSYNTH_OCR_API_KEYS": ""}
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "deepsynth_ocr.cli", "serve", "--run", str(run_dir),
                                 "--port", str(port), *extra], cwd=ROOT, env=env, stdout=err, stderr=err)


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    pytest.fail("the server was not ready within 120 s")


@pytest.mark.slow
def test_sigterm_answers_every_request_in_flight_then_exits_0(run_dir, tmp_path):
    """The requests wait in the queue (a batch waits up to 3 s to fill) when SIGTERM arrives, so all of
    them are still unanswered then; they are generated during the shutdown and every one gets its text."""
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = _serve_process(run_dir, port, log, "--max-batch-size", "8", "--max-wait-ms", "3000")
    try:
        _wait_ready(url, proc, log)
        (generation,) = generation_processes(proc.pid)  # serve.generation_process: the model's own process
        n = 6
        results: list = [None] * n

        def one(i):
            body = chat_body(run_dir.name, data_url(IMAGES[i % len(IMAGES)].read_bytes()), max_tokens=64)
            results[i] = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while metric(httpx.get(f"{url}/metrics", timeout=10).text, "deepsynth_ocr_queue_depth") < n:
            assert time.time() < deadline, "the requests never were queued together"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert [r.status_code for r in results] == [200] * n, [r.text[:200] for r in results]
    assert all(isinstance(r.json()["choices"][0]["message"]["content"], str) for r in results)
    assert proc.returncode == 0, err[-3000:]
    assert "serve: stopped" in err
    assert not generation.is_running() or generation.status() == psutil.STATUS_ZOMBIE  # it did not outlive the server
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def command(script: Path) -> list[str]:
    """The arguments the written script runs."""
    text = script.read_text()
    return shlex.split(text[text.index("\nexec ") + 6:].replace("\\\n", " "))


def test_the_vllm_command_uses_the_recipe_for_the_adapter_and_for_merged_weights(run_dir, tmp_path, capsys):
    from deepsynth_ocr.cli import main

    script = tmp_path / "vllm_serve.sh"
    base = str(tmp_path / "base-checkpoint")
    argv = ["serve", "--run", str(run_dir), "--backend", "vllm", "--dry-run", "--vllm-script", str(script),
            "--port", "9000", "-s", f"model.name_or_path={base}"]
    assert main(argv) == 0
    args = command(script)
    assert args[:3] == ["vllm", "serve", base]
    for flag, value in [("--served-model-name", base), ("--port", "9000"), ("--mm-processor-cache-gb", "0"),
                        ("--max-lora-rank", "16"), ("--lora-modules", f"{run_dir.name}={(run_dir / 'adapter').resolve()}"),
                        ("--logits-processors", "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor")]:
        assert args[args.index(flag) + 1] == value, flag
    assert "--no-enable-prefix-caching" in args and "--enable-lora" in args
    assert os.access(script, os.X_OK)
    merged = run_dir / "export" / "merged"
    merged.mkdir(parents=True)
    try:
        assert main(argv) == 0
        args = command(script)
        assert args[:3] == ["vllm", "serve", str(merged.resolve())]
        assert args[args.index("--served-model-name") + 1] == run_dir.name
        assert "--enable-lora" not in args and "--no-enable-prefix-caching" in args
    finally:
        merged.rmdir()


def test_the_vllm_backend_refuses_an_adapter_on_experts_and_the_tiny_base(run_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    from deepsynth_ocr.errors import UserError
    from deepsynth_ocr.jobs.serve import serve

    expert = tmp_path / "expert-adapter"
    expert.mkdir()
    save_file({"base_model.model.model.layers.1.mlp.experts.3.down_proj.lora_A.weight": torch.zeros(4, 8)},
              str(expert / "adapter_model.safetensors"))
    (expert / "adapter_config.json").write_text(json.dumps({"r": 4}))
    cfg = run_config(run_dir, backend="vllm", adapters=[f"moe={expert}"])
    cfg.model.name_or_path = str(tmp_path / "base-checkpoint")
    with pytest.raises(UserError, match="moe.*experts.3.*export"):
        serve(cfg, str(run_dir), str(tmp_path / "v.sh"), dry_run=True)
    cfg = run_config(run_dir, backend="vllm")
    with pytest.raises(UserError, match="vllm needs model.name_or_path"):
        serve(cfg, str(run_dir), str(tmp_path / "v.sh"), dry_run=True)


def test_a_port_in_use_is_a_clear_error_before_the_model_loads(run_dir, monkeypatch):
    from deepsynth_ocr.errors import UserError
    from deepsynth_ocr.jobs import serve as serve_job

    monkeypatch.setattr(serve_job, "load_base", lambda cfg: pytest.fail("the model loaded before the port was checked"))
    cfg = run_config(run_dir)
    with socket.socket() as taken:
        taken.bind((cfg.serve.host, cfg.serve.port))
        taken.listen()
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{cfg.serve.port}.*--port"):
            serve_job.serve(cfg, str(run_dir))


def test_a_generation_process_that_dies_fails_its_requests_and_the_server_says_not_ready(run_dir):
    cfg = run_config(run_dir, generation_process=True)
    others = {p.pid for p in generation_processes(os.getpid())}  # the module's other server has one too
    with live(cfg, run_dir) as url:
        body = chat_body(run_dir.name, data_url(IMAGES[0].read_bytes()), max_tokens=8)
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200
        (child,) = [p for p in generation_processes(os.getpid()) if p.pid not in others]
        child.kill()
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 500 and "generation process died" in reply.json()["error"]["message"]
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 503
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # the HTTP side itself still answers


@pytest.mark.parametrize("redact", [False, True])
def test_with_samples_redact_no_image_and_no_text_of_a_request_reaches_the_sample_store(run_dir, tmp_path, redact):
    """docs/observability.md's privacy table: ``serve.samples_redact`` keeps each text as its length and hash and
    writes no thumbnail. The unredacted store is scanned the same way, so a scan that cannot see them fails."""
    store = tmp_path / "samples"
    cfg = run_config(run_dir, samples_dir=str(store), samples_rate=1.0, samples_redact=redact)
    with live(cfg, run_dir) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        texts = [client.chat.completions.create(
            model=run_dir.name, max_tokens=cfg.infer.max_new_tokens,
            messages=chat_body("x", data_url(image.read_bytes()))["messages"]).choices[0].message.content for image in IMAGES]
        deadline = time.time() + 30
        while len(list(store.rglob("*.json"))) < len(IMAGES) and time.time() < deadline:
            time.sleep(0.05)
    kept = [p for p in store.rglob("*") if p.is_file()]
    assert len([p for p in kept if p.suffix == ".json"]) == len(IMAGES)
    readable = [t for t in texts if len(t) >= 4]  # long enough not to occur in a record by chance
    assert readable, texts
    found = {t for t in readable if any(t.encode() in p.read_bytes() for p in kept)}
    thumbnails = [p for p in kept if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")]
    if redact:
        assert thumbnails == [] and found == set()
    else:
        assert len(thumbnails) == len(IMAGES) and found == set(readable)
