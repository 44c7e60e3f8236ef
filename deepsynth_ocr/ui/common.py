"""What every page of the jobs UI shares: the app's state and the template renderer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.runs import RunPaths
from deepsynth_ocr.ui.guard import RateLimit, inside
from deepsynth_ocr.ui.scheduler import Scheduler

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))  # autoescaped: values render as text


@dataclass
class UiState:
    root: Path  # the runs root (output_root)
    cfg: RunConfig
    scheduler: Scheduler
    csrf: str
    data_roots: list[Path]
    configs: Path
    gpus: list[dict] = field(default_factory=list)
    launch_limit: RateLimit | None = None
    upload_limit: RateLimit | None = None
    playground: object = None  # playground.Playground: the Try-it page's loaded model


def ui_state(request: Request) -> UiState:
    return request.app.state.ui


def limited(limit: RateLimit | None, what: str) -> None:
    """429 once ``limit`` (launches, uploads, writes per minute) is used up."""
    if limit is not None and not limit.allow():
        raise HTTPException(429, f"too many {what} in a minute; wait a little")


def run_dir_of(request: Request, name: str) -> Path:
    """A run directory directly under the runs root, by name; 404 for anything else (traversal included)."""
    root = ui_state(request).root
    path = inside(root, name)
    if path is None or path.parent != root.resolve() or not (RunPaths(path).manifest.is_file() or RunPaths(path).launch.is_file()):
        raise HTTPException(404, f"no run {name!r}")
    return path


def page(request: Request, template: str, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, template, {"csrf": ui_state(request).csrf, **context})
