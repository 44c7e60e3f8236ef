"""The UI's Data and Try-it pages: run ``prepare`` on a source and read its report and samples; read an
uploaded image or PDF with a run's fine-tune (or the base) through the server's batched generation.

Sources are read only under the UI's data roots; an upload is size-limited and decoded with the kit's
image limits (``serving.inputs``: the checks ``prepare`` applies).
"""

from __future__ import annotations

import functools
import io
import json
import threading
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.jobs.launch import prepare_launch
from deepsynth_ocr.runs import RunPaths, list_runs, load_config
from deepsynth_ocr.secrets import redact
from deepsynth_ocr.ui import details
from deepsynth_ocr.ui.common import page, ui_state
from deepsynth_ocr.ui.forms import allowed_data_path
from deepsynth_ocr.ui.guard import inside

router = APIRouter()
_engines_lock = threading.Lock()


def _prepared_root(request: Request) -> Path:
    return ui_state(request).data_roots[0] / "prepared"


def _prepared(request: Request, name: str) -> Path:
    path = inside(_prepared_root(request), name)
    if path is None or path.parent != _prepared_root(request).resolve():
        raise HTTPException(404, f"no prepared dataset {name!r}")
    return path


def _log_dir(request: Request, name: str) -> Path:
    return ui_state(request).root / ".ui" / "prepare" / name


@router.get("/data", response_class=HTMLResponse)
def data_page(request: Request):
    root = _prepared_root(request)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.endswith(".partial")) if root.is_dir() else []
    return page(request, "data.html", datasets=names, data_roots=[str(r) for r in ui_state(request).data_roots])


@router.post("/api/prepare")
async def api_prepare(request: Request):
    ui = ui_state(request)
    body = await request.json()
    source, name = str(body.get("source", "")).strip(), str(body.get("name", "")).strip()
    if not name or "/" in name or name.startswith("."):
        return JSONResponse({"errors": {"name": "name: a folder name without '/'"}}, status_code=400)
    if not source or not Path(source).exists() or not allowed_data_path(source, ui.data_roots):
        return JSONResponse({"errors": {"source": f"source: {source or '(empty)'} is not a file or folder under the "
                                                  f"UI's data roots ({', '.join(map(str, ui.data_roots))})"}}, status_code=400)
    if ui.launch_limit is not None and not ui.launch_limit.allow():
        raise HTTPException(429, "too many launches in a minute; wait a little")
    launch = prepare_launch([source], _prepared_root(request) / name)
    launch.run_dir = _log_dir(request, name)  # its console log beside, not inside, the output it creates
    ui.scheduler.submit(launch, takes_slot=False)
    return {"name": name}


@router.get("/data/{name}", response_class=HTMLResponse)
def dataset_page(request: Request, name: str):
    out = _prepared(request, name) if (_prepared_root(request) / name).exists() else None
    report = json.loads((out / "report.json").read_text()) if out and (out / "report.json").is_file() else None
    log, _ = details.read_log(RunPaths(_log_dir(request, name)).console_log, None)
    rows = _rows(out) if report else []
    return page(request, "dataset.html", name=name, report=redact(report), log=log, rows=rows)


@functools.lru_cache(maxsize=8)
def _train_split(path: str, written: float):
    import datasets

    return datasets.load_from_disk(path)["train"]


def _split(out: Path):
    """The prepared dataset's train split, opened once per version (a page's thumbnails share it)."""
    return _train_split(str(out), (out / "report.json").stat().st_mtime)


def _rows(out: Path, n: int = 12) -> list[dict]:
    split = _split(out)
    return [redact({"index": i, "id": r["id"], "text": r["text"], "prompt": r.get("prompt")})
            for i, r in enumerate(split.select(range(min(n, len(split)))).remove_columns("image"))]


@router.get("/data/{name}/image/{index}")
def dataset_image(request: Request, name: str, index: int):
    out = _prepared(request, name)
    split = _split(out) if (out / "report.json").is_file() else []
    if not 0 <= index < len(split):
        raise HTTPException(404, "no such row")
    buf = io.BytesIO()
    split[index]["image"].convert("RGB").save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png")


# --- try it -------------------------------------------------------------------------------------------

def _models(request: Request) -> list[str]:
    return ["base"] + [i.dir.name for i in list_runs(ui_state(request).root) if RunPaths(i.dir).adapter.is_dir()]


@router.get("/try", response_class=HTMLResponse)
def try_page(request: Request):
    return page(request, "try.html", models=_models(request), max_mb=ui_state(request).cfg.ui.max_upload_mb)


def _engine(request: Request, model: str):
    """An ``OcrEngine`` (the server's) for the base or a run's fine-tune, loaded once per UI process."""
    from deepsynth_ocr.jobs.serve import plan_models
    from deepsynth_ocr.models.backends import load_base
    from deepsynth_ocr.serving.engine import OcrEngine

    ui = ui_state(request)
    with _engines_lock:
        if model not in ui.try_engines:
            run_dir = None if model == "base" else ui.root / model
            cfg = load_config(run_dir, None) if run_dir else RunConfig.from_dict(ui.cfg.to_dict())
            plan = plan_models(cfg, str(run_dir) if run_dir else None)
            ui.try_engines[model] = (OcrEngine(load_base(cfg), cfg, plan.base_name, plan.adapters), cfg)
        return ui.try_engines[model]


@router.post("/api/try")
async def api_try(request: Request):
    from starlette.concurrency import run_in_threadpool

    from deepsynth_ocr.serving.inputs import ApiError, parse_upload

    ui = ui_state(request)
    limit = int(ui.cfg.ui.max_upload_mb * 2**20)
    if int(request.headers.get("content-length") or 0) > limit + 4096:
        return JSONResponse({"error": f"the upload is larger than ui.max_upload_mb={ui.cfg.ui.max_upload_mb:g} MiB"}, status_code=413)
    if ui.upload_limit is not None and not ui.upload_limit.allow():
        raise HTTPException(429, "too many uploads in a minute; wait a little")
    form = await request.form(max_files=1, max_fields=4)
    upload, model = form.get("file"), str(form.get("model") or "base")
    if upload is None or isinstance(upload, str):
        return JSONResponse({"error": "choose an image or a PDF"}, status_code=400)
    if model not in _models(request):
        return JSONResponse({"error": f"no model {model!r}: the base or a run with an adapter"}, status_code=400)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        return JSONResponse({"error": f"the upload is larger than ui.max_upload_mb={ui.cfg.ui.max_upload_mb:g} MiB"}, status_code=413)
    try:
        engine, cfg = await run_in_threadpool(_engine, request, model)
        images, pages = parse_upload(data, upload.filename or "", cfg.serve, cfg.data, cfg.infer.pdf_dpi)
    except ApiError as e:
        return JSONResponse({"error": e.body()["error"]["message"]}, status_code=e.status)
    except UserError as e:
        return JSONResponse({"error": redact(str(e))}, status_code=400)
    name = engine.adapters[0] if engine.adapters else engine.base_name
    rows = [{"image": image, "prompt": engine.default_prompt} for image in images]
    preds = await run_in_threadpool(engine.run_batch, name, rows, [cfg.infer.max_new_tokens] * len(rows))
    return {"model": model, "pages": [{"page": p, "text": redact(pred.text), "tokens": pred.n_tokens,
                                       "repetition_stopped": pred.looped} for p, pred in zip(pages, preds, strict=True)]}
