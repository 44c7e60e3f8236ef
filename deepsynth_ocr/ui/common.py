"""What every page of the jobs UI shares: the app's state and the template renderer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.ui.guard import RateLimit
from deepsynth_ocr.ui.scheduler import Scheduler

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
    try_engines: dict = field(default_factory=dict)  # the Try-it page's loaded models, by run name


def ui_state(request: Request) -> UiState:
    return request.app.state.ui


def page(request: Request, template: str, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, template, {"csrf": ui_state(request).csrf, **context})
