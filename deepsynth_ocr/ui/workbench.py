"""The UI's Data page: run ``prepare`` on a source and read its report and samples. Sources are read only under
the UI's data roots. (Try-it is ``playground``.)
"""

from __future__ import annotations

import functools
import io
import json
import threading
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from deepsynth_ocr.jobs.launch import prepare_launch
from deepsynth_ocr.runs import RunPaths
from deepsynth_ocr.secrets import redact
from deepsynth_ocr.ui import details
from deepsynth_ocr.ui.common import limited, page, ui_state
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
    limited(ui.launch_limit, "launches")
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
