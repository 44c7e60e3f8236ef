"""The OpenAI-compatible OCR server: endpoints, API keys, body limit, access log and metrics.

``create_app(engine, cfg, api_keys)`` returns a FastAPI app; ``jobs.serve`` loads the models and runs
it under uvicorn. Endpoints: ``POST /v1/chat/completions`` (OpenAI's schema with one ``image_url``
part), ``GET /v1/models``, ``POST /v1/ocr`` (multipart image or PDF, one result per page),
``GET /health``, ``GET /ready`` and ``GET /metrics`` (Prometheus text).

Every refusal is a 4xx with OpenAI's error body (``{"error": {"message", "type", "param", "code"}}``).
The gate in front of the app checks the API key (constant-time, against every key), refuses bodies
over ``serve.max_body_mb`` (declared or streamed), gives each request an id (``X-Request-Id``) and
writes one JSON access-log line per request: ids, status, timings, sizes, never the key, the image
or (unless ``serve.log_content``) the text.

Where the time goes: each stage (``metrics.STAGES``) goes into the ``deepsynth_ocr_stage_seconds``
histogram, the access-log line and, with a tracer (``telemetry``), a child span of the request's span.
Decoding runs in a worker thread and a batch's preprocessing with its generation (in the generation
process, ``serving.worker``), so the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import re
import time
import uuid

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepsynth_ocr import telemetry
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.serving.engine import OcrEngine
from deepsynth_ocr.serving.inputs import (
    ApiError,
    OcrRequest,
    check_max_tokens,
    check_model,
    parse_chat,
    parse_upload,
    with_image_placeholder,
)
from deepsynth_ocr.serving.limits import RateLimits, client_id
from deepsynth_ocr.serving.metrics import ServerMetrics
from deepsynth_ocr.serving.queue import BatchQueue, BatchStats, GenerationFailed, QueueFull
from deepsynth_ocr.serving.samples import SampleKeeper

access_log = logging.getLogger("deepsynth_ocr.serving.access")
log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a client's own id is kept only when it cannot forge log lines
PROTECTED = ("/v1/", "/metrics")
CLIENT_GONE = 499  # nginx's code for "client closed request": logged and counted, never sent


class _Gate:
    """ASGI middleware: request id, API key, per-client rate limit, body limit, access log and request metrics."""

    def __init__(self, app, api_keys: dict[str, float | None], max_body: int, metrics: ServerMetrics, limits: RateLimits,
                 tracer=None):
        self.app, self.metrics, self.max_body, self.tracer, self.limits = app, metrics, max_body, tracer, limits
        self.keys = [(k.encode(), rate) for k, rate in api_keys.items()]

    def _matching_key(self, headers: dict[bytes, bytes]) -> tuple[bytes, float | None] | None:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        found = None
        for key, rate in self.keys:  # every key is compared: the time taken does not tell which one matched
            if hmac.compare_digest(key, token.strip()) and found is None:
                found = (key, rate)
        return found if scheme.lower() == b"bearer" else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope["headers"])
        given_id = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given_id if REQUEST_ID.match(given_id) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = [500]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _too_large(self.max_body)
            return message

        path = scope["path"]
        endpoint = self.metrics.endpoint(path)
        self.metrics.in_flight.inc()
        traced = self.tracer if path.startswith("/v1/") else None
        with telemetry.span(traced, f"{scope['method']} {endpoint}", {"request_id": request_id}, kind="SERVER") as span:
            state["span"] = span
            try:
                refusal = None
                matched = self._matching_key(headers) if self.keys and path.startswith(PROTECTED) else None
                wait = 0
                if path.startswith("/v1/") and (matched or not self.keys):
                    client = client_id(matched[0] if matched else None, (scope.get("client") or (None,))[0])
                    wait = self.limits.wait_s(client, matched[1] if matched else None)
                    if wait:
                        self.metrics.rate_limited.labels(client).inc()
                if self.keys and path.startswith(PROTECTED) and matched is None:
                    refusal = ApiError(401, "invalid_api_key", "missing or invalid API key: send the header "
                                       "'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})
                elif wait:
                    refusal = ApiError(429, "rate_limited", f"this client's request rate is over its limit "
                                       f"(serve.rate_limit_per_minute); retry after {wait} s",
                                       headers={"Retry-After": str(wait)})
                elif int(headers.get(b"content-length", b"0") or 0) > self.max_body:
                    refusal = _too_large(self.max_body)
                if refusal is not None:
                    state["error"] = refusal.code
                    await _error_response(refusal)(scope, receive, send_with_id)
                else:
                    await self.app(scope, counting_receive, send_with_id)
            finally:
                self.metrics.in_flight.dec()
                seconds = time.perf_counter() - started
                self.metrics.latency.labels(endpoint).observe(seconds)
                self.metrics.requests.labels(endpoint, str(status[0])).inc()
                if status[0] >= 400 or state.get("error"):
                    self.metrics.errors.labels(state.get("error") or f"http_{status[0]}").inc()
                record = {"ts": round(time.time(), 3), "request_id": request_id, "method": scope["method"], "path": path,
                          "status": status[0], "ms": round(seconds * 1000, 1), "bytes_in": received}
                record |= {k: v for k, v in state.items() if k not in ("request_id", "text", "span")}
                if span is not None:
                    span.set_attributes({"http.status_code": status[0],
                                         **{k: v for k, v in record.items() if k.endswith("_ms") or k in ("model", "batch_size", "error")}})
                if "text" in state:
                    record["text"] = state["text"]
                access_log.info(json.dumps(record, ensure_ascii=False), extra={"fields": record})


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body exceeds serve.max_body_mb ({limit / 2**20:g} MiB); "
                    "send a smaller image")


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _client_gone(request: Request) -> None:
    # After the body, the server's receive() returns only when the client disconnects (or the response is
    # complete): one wait per request instead of polling is_disconnected() 20 times a second.
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- the endpoints: module-level routes; the app's state (engine, queue, metrics, cfg) set by create_app ---
router = APIRouter()


async def api_error(request: Request, e: ApiError):
    request.state.error = e.code
    return _error_response(e)


async def http_error(request: Request, e: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "bad_request")
    request.state.error = code
    return _error_response(ApiError(e.status_code, code, f"{request.method} {request.url.path}: {e.detail}"))


def observe(request: Request, stage: str, seconds: float, end_ns: int | None = None) -> None:
    """One stage of a request (ending now, or at ``end_ns``): into its Prometheus histogram, the request's
    access-log line and, when tracing, a child span of the request's span."""
    request.app.state.metrics.stage_seconds.labels(stage).observe(seconds)
    setattr(request.state, f"{stage}_ms", round(seconds * 1000, 2))
    span = request.scope["state"].get("span")
    if span is not None:
        end_ns = end_ns or telemetry.now_ns()
        telemetry.record(request.app.state.tracer, stage, span, end_ns - int(seconds * 1e9), end_ns)


@contextlib.contextmanager
def stage(request: Request, name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        observe(request, name, time.perf_counter() - start)


async def read_json(request: Request):
    with stage(request, "body_read"):
        body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None


async def answer(request: Request, req: OcrRequest) -> list:
    """Queue the request's images and wait for them, its timeout or its client leaving."""
    queue, metrics, serve_cfg = request.app.state.queue, request.app.state.metrics, request.app.state.cfg.serve
    request.state.model, request.state.images = req.model, len(req.images)
    rows = [{"image": image, "prompt": req.prompt} for image in req.images]
    try:
        futures = queue.submit(req.model, rows, [req.max_tokens] * len(rows), request.scope["state"].get("span"))
    except QueueFull as e:
        raise ApiError(503, "queue_full", f"the server is busy ({e}); retry after the Retry-After seconds",
                       headers={"Retry-After": str(e.retry_after)}) from None
    metrics.queue_depth.set(queue.depth)
    gathered = asyncio.gather(*futures)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({gathered, gone}, timeout=serve_cfg.request_timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        metrics.queue_depth.set(queue.depth)
    if gathered not in done:
        gathered.cancel()  # cancels every image's future: the worker skips those still queued
        if gone in done:
            raise ApiError(CLIENT_GONE, "client_disconnected", "the client closed the connection; its work was dropped")
        raise ApiError(504, "timeout", f"not answered within serve.request_timeout_s={serve_cfg.request_timeout_s:g} s; "
                       "its queued work was dropped")
    try:
        results = gathered.result()
    except GenerationFailed as e:
        raise ApiError(500, "generation_failed", f"generation failed for this image: {e}") from None
    last = max(results, key=lambda d: d.ended_ns)  # a PDF's pages may span batches: the request waited for the last
    batch_ns = int((last.preprocess_s + last.generate_s) * 1e9)
    observe(request, "queue_wait", max(d.queued_s for d in results), last.ended_ns - batch_ns)
    observe(request, "preprocess", last.preprocess_s, last.ended_ns - int(last.generate_s * 1e9))
    observe(request, "generate", last.generate_s, last.ended_ns)
    request.state.batch_size = max(d.batch_size for d in results)
    request.state.completion_tokens = sum(d.result.n_tokens for d in results)
    if serve_cfg.log_content:
        request.state.text = "\n".join(d.result.text for d in results)
    keeper = request.app.state.samples
    if keeper is not None and keeper.chosen():  # written by a worker thread; the reply does not wait for it
        stages = {k: v for k, v in request.scope["state"].items() if k.endswith("_ms")}
        asyncio.get_running_loop().run_in_executor(None, keeper.keep, request.state.request_id, req.model, req.images,
                                                   [d.result.text for d in results], stages)
    return [d.result for d in results]


def finish_reason(pred, bound: int) -> str:
    return "length" if not (pred.stopped or pred.looped) and pred.n_tokens >= bound else "stop"


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    engine, cfg = request.app.state.engine, request.app.state.cfg
    payload = await read_json(request)
    with stage(request, "decode"):
        req = await run_in_threadpool(parse_chat, payload, engine.names, cfg.serve, cfg.data, engine.default_prompt,
                                      cfg.infer.max_new_tokens)
    (pred,) = await answer(request, req)
    with stage(request, "respond"):
        return {
            "id": f"chatcmpl-{request.state.request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": pred.text},
                         "finish_reason": finish_reason(pred, req.max_tokens), "repetition_stopped": pred.looped}],
            "usage": {"prompt_tokens": pred.prompt_tokens, "completion_tokens": pred.n_tokens,
                      "total_tokens": pred.prompt_tokens + pred.n_tokens},
        }


@router.post("/v1/ocr")
async def ocr(request: Request):
    engine, cfg = request.app.state.engine, request.app.state.cfg
    with stage(request, "body_read"):
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        data = await upload.read() if upload is not None and not isinstance(upload, str) else b""
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "missing_file", "send the image or PDF as a multipart form field named 'file'", param="file")
    model = check_model(form.get("model") or engine.default_model, engine.names)
    raw = form.get("max_tokens") or None
    max_tokens = check_max_tokens(int(raw) if isinstance(raw, str) and raw.isdigit() else raw,
                                  cfg.infer.max_new_tokens, cfg.serve.max_tokens_limit)
    prompt = form.get("prompt")
    with stage(request, "decode"):
        images, pages = await run_in_threadpool(parse_upload, data, upload.filename or "", cfg.serve, cfg.data,
                                                cfg.infer.pdf_dpi)
    req = OcrRequest(model, images, with_image_placeholder(prompt) if prompt else engine.default_prompt, max_tokens, pages)
    preds = await answer(request, req)
    return {
        "model": model, "file": upload.filename,
        "pages": [{"page": page, "text": p.text, "finish_reason": finish_reason(p, max_tokens),
                   "repetition_stopped": p.looped, "completion_tokens": p.n_tokens} for page, p in zip(pages, preds, strict=True)],
        "usage": {"prompt_tokens": sum(p.prompt_tokens for p in preds), "completion_tokens": sum(p.n_tokens for p in preds),
                  "total_tokens": sum(p.prompt_tokens + p.n_tokens for p in preds)},
    }


@router.get("/v1/models")
async def models(request: Request):
    engine = request.app.state.engine
    created = int(time.time())
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "deepsynth-ocr",
         "parent": None if name == engine.base_name else engine.base_name} for name in engine.names]}


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request):
    queue = request.app.state.queue
    if not queue.running or not getattr(request.app.state.engine, "alive", True):
        return JSONResponse({"status": "not ready"}, status_code=503)
    return {"status": "ready", "models": request.app.state.engine.names, "queue_depth": queue.depth}


@router.get("/metrics")
async def prometheus(request: Request):
    metrics = request.app.state.metrics
    metrics.queue_depth.set(request.app.state.queue.depth)
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _count_batch(metrics: ServerMetrics, stats: BatchStats) -> None:
    metrics.batch_size.observe(stats.size)
    metrics.batch_seconds.observe(stats.seconds)
    metrics.generated_tokens.inc(stats.tokens)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    app.state.queue.start()
    yield
    await app.state.queue.close()  # uvicorn has already waited for the requests in flight; this drains the rest
    if hasattr(app.state.engine, "close"):  # a generation process
        app.state.engine.close()


def create_app(engine: OcrEngine, cfg: RunConfig, api_keys: dict[str, float | None] | list[str], tracer=None) -> FastAPI:
    """The server's app: the routes above over one engine and its batching queue; ``tracer``: OpenTelemetry
    spans per request and batch (``telemetry.tracer_from_env``), ``None`` for none."""
    metrics = ServerMetrics()
    queue = BatchQueue(engine.run_batch, cfg.serve.max_batch_size, cfg.serve.max_wait_ms, cfg.serve.max_queue,
                       functools.partial(_count_batch, metrics), tracer)
    app = FastAPI(title="DeepSynth OCR", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue, app.state.metrics, app.state.engine, app.state.cfg = queue, metrics, engine, cfg
    app.state.tracer = tracer
    app.state.samples = SampleKeeper(cfg.serve) if cfg.serve.samples_dir else None
    keys = api_keys if isinstance(api_keys, dict) else dict.fromkeys(api_keys)
    app.add_middleware(_Gate, api_keys=keys, max_body=int(cfg.serve.max_body_mb * 2**20), metrics=metrics,
                       limits=RateLimits(cfg.serve.rate_limit_per_minute, cfg.serve.rate_limit_burst), tracer=tracer)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.include_router(router)
    return app
