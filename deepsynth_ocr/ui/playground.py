"""The Try-it playground: read an uploaded image or PDF with the base, a run's fine-tune or one of its checkpoints,
with the prompt or mode and the token limit chosen, the base beside the fine-tune on the same pages; correct a
reading into a corrections dataset.

The loaded model takes a job slot (``Scheduler.hold``), so it never shares a GPU with training: it is refused while
every slot trains, a launch that needs its slot unloads it (or waits for the request being read to end), and it is
unloaded after ``ui.try_idle_minutes`` without a request. One model is loaded at a time;
the base reading beside a fine-tune comes from the same copy with its adapter switched off (``OcrEngine``).
Uploads are kept under ``<runs root>/.ui/uploads`` (by content) so that a reading can be corrected afterwards.
"""

from __future__ import annotations

import gc
import hashlib
import io
import logging
import re
import threading
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from deepsynth_ocr import corrections
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.tasks import IMAGE, TASKS
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.runs import RunPaths, list_runs, load_config
from deepsynth_ocr.secrets import redact
from deepsynth_ocr.ui.common import limited, page, ui_state
from deepsynth_ocr.ui.guard import inside

log = logging.getLogger(__name__)
router = APIRouter()
CHECKPOINT = re.compile(r"(?P<run>[^/]+)/(?P<checkpoint>checkpoint-\d+)")
MODES = {"ocr": "the model's OCR prompt", "markdown": "the document as Markdown", "question": "a question about the page",
         "custom": "your own prompt"}
MAX_TOKENS = 8192


class Playground:
    """The one model the page reads with, holding a job slot while loaded."""

    def __init__(self, scheduler, idle_s: float):
        self.scheduler, self.idle_s = scheduler, idle_s
        self.lock = threading.Lock()
        self.key: str | None = None
        self.engine = self.cfg = None
        self.last_used = 0.0
        self.busy = 0  # requests reading now: never unloaded under them
        scheduler.on_tick.append(self.release_idle)
        scheduler.on_demand.append(self.release_unless_reading)

    def acquire(self, key: str, load) -> tuple:
        """The engine for ``key`` (loading it with ``load()`` after unloading another); raises ``SlotsBusy``."""
        with self.lock:
            self.last_used, self.busy = time.monotonic(), self.busy + 1
            try:
                if self.key != key:
                    if self.key is None and not self.scheduler.hold():
                        raise SlotsBusy(self.scheduler.slots)
                    self._unload(keep_slot=True)
                    self.engine, self.cfg = load()
                    self.key = key
                    log.info("try-it: loaded %s (holds a job slot until %g min idle)", key, self.idle_s / 60)
            except BaseException:
                self.busy -= 1
                if self.key is None:
                    self.scheduler.release()
                raise
            return self.engine, self.cfg

    def done(self) -> None:
        with self.lock:
            self.busy, self.last_used = self.busy - 1, time.monotonic()

    def release_idle(self) -> None:
        with self.lock:
            if self.key is not None and not self.busy and time.monotonic() - self.last_used >= self.idle_s:
                log.info("try-it: unloaded %s after %g min idle; its job slot is free", self.key, self.idle_s / 60)
                self._unload(keep_slot=False)

    def release_unless_reading(self) -> None:
        """A launch wants the slot: give it up now unless a request is reading (then it waits for the tick)."""
        with self.lock:
            if self.key is not None and not self.busy:
                log.info("try-it: unloaded %s for a job that needs its slot", self.key)
                self._unload(keep_slot=False)

    def _unload(self, keep_slot: bool) -> None:
        if self.key is None:
            return
        self.key = self.engine = self.cfg = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if not keep_slot:
            self.scheduler.release()


class SlotsBusy(UserError):
    def __init__(self, slots: int):
        super().__init__(f"all {slots} job slot{'s' if slots != 1 else ''} are training; the playground would share "
                         "their GPU. Wait for a run to end (or stop one), then read again")


def playground(request: Request) -> Playground:
    return ui_state(request).playground


def _complete(checkpoint: Path) -> bool:
    return (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()


def models(request: Request) -> list[str]:
    """What the page can read with: the base, each run's fine-tune, each run's complete checkpoints."""
    out = ["base"]
    for info in list_runs(ui_state(request).root):
        paths = RunPaths(info.dir)
        if paths.adapter.is_dir():
            out.append(info.dir.name)
        if paths.checkpoints.is_dir():
            steps = sorted((int(p.name.split("-")[1]), p.name) for p in paths.checkpoints.glob("checkpoint-*")
                           if p.name.split("-")[1].isdigit() and _complete(p))
            out += [f"{info.dir.name}/{name}" for _, name in steps]
    return out


def offered(request: Request, model: str) -> bool:
    """Whether ``model`` is one of ``models()``, checked on its own files (a request does not list every run)."""
    if model == "base":
        return True
    root = ui_state(request).root
    found = CHECKPOINT.fullmatch(model)
    run = inside(root, found["run"] if found else model)
    if run is None or run.parent != root.resolve():
        return False
    paths = RunPaths(run)
    return _complete(paths.checkpoints / found["checkpoint"]) if found else paths.adapter.is_dir()


def _load(request: Request, model: str):
    """An ``OcrEngine`` (the server's) for the base, a run's fine-tune or a checkpoint, and its config."""
    from deepsynth_ocr.jobs.serve import plan_models
    from deepsynth_ocr.models.backends import load_base
    from deepsynth_ocr.serving.engine import OcrEngine

    ui = ui_state(request)
    found = CHECKPOINT.fullmatch(model)
    run_dir = ui.root / (found["run"] if found else model) if model != "base" else None
    cfg = load_config(run_dir, None) if run_dir else RunConfig.from_dict(ui.cfg.to_dict())
    if found:
        adapters = {model: RunPaths(run_dir).checkpoints / found["checkpoint"]}
        base_name = plan_models(cfg).base_name
    else:
        plan = plan_models(cfg, str(run_dir) if run_dir else None)
        adapters, base_name = plan.adapters, plan.base_name
    return OcrEngine(load_base(cfg), cfg, base_name, adapters), cfg


def prompt_of(mode: str, text: str, default: str) -> str:
    """The prompt a mode sends: the model's own OCR prompt, DeepSeek-OCR's Markdown prompt, a question after the image,
    or the user's prompt (the image token put first when it lacks one)."""
    if mode == "markdown":
        return TASKS["markdown"].prompt
    if mode == "question":
        return TASKS["qa"].prompt.format(question=text.strip())
    if mode == "custom":
        return text if IMAGE in text else f"{IMAGE}\n{text}"
    return default


@router.get("/try", response_class=HTMLResponse)
def try_page(request: Request):
    ui = ui_state(request)
    choices = models(request)
    chosen = request.query_params.get("model") or (choices[1] if len(choices) > 1 else "base")
    return page(request, "try.html", models=choices, chosen=chosen, max_mb=ui.cfg.ui.max_upload_mb, modes=MODES,
                max_tokens=ui.cfg.infer.max_new_tokens, token_cap=MAX_TOKENS, loaded=playground(request).key,
                idle_minutes=ui.cfg.ui.try_idle_minutes)


def _field(form, name: str, default: str = "") -> str:
    value = form.get(name)
    return value if isinstance(value, str) else default


@router.post("/api/try")
async def api_try(request: Request):
    from starlette.concurrency import run_in_threadpool

    from deepsynth_ocr.serving.inputs import ApiError, parse_upload

    ui = ui_state(request)
    limit = int(ui.cfg.ui.max_upload_mb * 2**20)
    too_big = JSONResponse({"error": f"the upload is larger than ui.max_upload_mb={ui.cfg.ui.max_upload_mb:g} MiB"}, status_code=413)
    if int(request.headers.get("content-length") or 0) > limit + 4096:
        return too_big
    limited(ui.upload_limit, "uploads")
    form = await request.form(max_files=1, max_fields=8)
    upload, model = form.get("file"), _field(form, "model", "base")
    mode, text, compare = _field(form, "mode", "ocr"), _field(form, "prompt"), _field(form, "compare") in ("1", "true", "on")
    if upload is None or isinstance(upload, str):
        return JSONResponse({"error": "choose an image or a PDF"}, status_code=400)
    if not offered(request, model):
        return JSONResponse({"error": f"no model {model!r}: the base, a run with an adapter, or RUN/checkpoint-N"}, status_code=400)
    if mode not in MODES:
        return JSONResponse({"error": f"mode: one of {', '.join(MODES)}"}, status_code=400)
    if mode in ("question", "custom") and not text.strip():
        return JSONResponse({"error": f"mode {mode}: write the {'question' if mode == 'question' else 'prompt'} first"}, status_code=400)
    try:
        max_tokens = int(_field(form, "max_tokens") or ui.cfg.infer.max_new_tokens)
    except ValueError:
        max_tokens = 0
    if not 1 <= max_tokens <= MAX_TOKENS:
        return JSONResponse({"error": f"max_tokens: a whole number from 1 to {MAX_TOKENS}"}, status_code=400)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        return too_big
    lab = playground(request)
    try:
        engine, cfg = await run_in_threadpool(lab.acquire, model, lambda: _load(request, model))
    except SlotsBusy as e:
        return JSONResponse({"error": str(e)}, status_code=409)
    except UserError as e:
        return JSONResponse({"error": redact(str(e))}, status_code=400)
    try:
        try:
            images, pages = parse_upload(data, upload.filename or "", cfg.serve, cfg.data, cfg.infer.pdf_dpi)
        except ApiError as e:
            return JSONResponse({"error": e.body()["error"]["message"]}, status_code=e.status)
        prompt = prompt_of(mode, text, engine.default_prompt)
        rows = [{"image": image, "prompt": prompt} for image in images]
        names = [engine.adapters[0]] if engine.adapters else [engine.base_name]
        if compare and engine.adapters:
            names.append(engine.base_name)
        readings = {}
        for name in names:
            readings[name] = await run_in_threadpool(engine.run_batch, name, rows, [max_tokens] * len(rows))
    finally:
        lab.done()
    uploads = [_keep_upload(ui.root, image) for image in images]
    return {"model": model, "prompt": redact(prompt), "columns": ["fine-tune" if n != engine.base_name else "base" for n in names],
            "pages": [{"page": p, "upload": uploads[i], "readings": [
                {"model": n, "text": redact(readings[n][i].text), "tokens": readings[n][i].n_tokens,
                 "repetition_stopped": readings[n][i].looped} for n in names]} for i, p in enumerate(pages)]}


UPLOAD = re.compile(r"[0-9a-f]{32}")


def _uploads(root: Path) -> Path:
    return root / ".ui" / "uploads"


def _keep_upload(root: Path, image) -> str:
    """The page image as a PNG under the runs root, named by its content: what a correction of it copies."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    name = hashlib.sha256(buf.getvalue()).hexdigest()[:32]
    folder = _uploads(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if not path.is_file():
        path.write_bytes(buf.getvalue())
    return name


@router.post("/api/try/correct")
async def api_try_correct(request: Request):
    """A page read on this page, with the text a person corrected it to, into a corrections dataset."""
    from deepsynth_ocr.ui.analysis import add_corrections

    limited(ui_state(request).upload_limit, "writes")
    body = await request.json()
    upload, prompt = str(body.get("upload") or ""), str(body.get("prompt") or "")
    path = _uploads(ui_state(request).root) / f"{upload}.png"
    if not UPLOAD.fullmatch(upload) or not path.is_file():
        return JSONResponse({"error": "no such upload on this UI; read the image again"}, status_code=400)
    item = corrections.Correction(path, str(body.get("text") or ""), prompt, f"try-it upload {upload[:12]}")
    return add_corrections(request, str(body.get("dataset") or ""), [item])
