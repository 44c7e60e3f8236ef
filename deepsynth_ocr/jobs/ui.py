"""The jobs UI job (``deepsynth-ocr ui``): the web app over the runs root, under uvicorn, with its queue.

Binds 127.0.0.1 by default. Any other address needs an access token in ``ui.token_env`` (at least 16
characters): without one it refuses to start, since the UI launches processes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from deepsynth_ocr import logs
from deepsynth_ocr.addresses import check_address_free, is_loopback
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.errors import UserError

log = logging.getLogger(__name__)


def ui_token(cfg: RunConfig) -> str:
    """The access token (may be empty on a loopback address); a one-line error where it is needed or weak."""
    token = os.environ.get(cfg.ui.token_env, "").strip() if cfg.ui.token_env else ""
    if not token and not is_loopback(cfg.ui.host):
        raise UserError(f"ui.host={cfg.ui.host} is reachable from other machines and this UI starts processes: set an "
                        f"access token in ${cfg.ui.token_env} (e.g. `export {cfg.ui.token_env}=$(python -c 'import secrets; "
                        "print(secrets.token_urlsafe(32))')`), or keep the default 127.0.0.1")
    if token and len(token) < 16:
        raise UserError(f"${cfg.ui.token_env} is shorter than 16 characters; use a long random token")
    return token


def ui(cfg: RunConfig) -> int:
    """Serve the UI until SIGTERM / Ctrl-C; returns the exit code."""
    import uvicorn

    from deepsynth_ocr.ui.app import create_ui_app

    cfg.validate()
    token = ui_token(cfg)
    check_address_free(cfg.ui.host, cfg.ui.port)
    logs.configure(cfg.log.format, text="%(asctime)s %(levelname)s %(message)s")
    app = create_ui_app(cfg, token, cwd=Path.cwd())
    scheduler = app.state.ui.scheduler
    scheduler.run_in_background()
    host = f"[{cfg.ui.host}]" if ":" in cfg.ui.host else cfg.ui.host
    log.info("jobs UI on http://%s:%d/%s over %s (%d job slot%s)", host, cfg.ui.port, "?token=..." if token else "",
             Path(cfg.output_root).resolve(), scheduler.slots, "" if scheduler.slots == 1 else "s")
    try:
        uvicorn.run(app, host=cfg.ui.host, port=cfg.ui.port, log_level="warning", timeout_graceful_shutdown=2)
    finally:
        scheduler.close()
    return 0
