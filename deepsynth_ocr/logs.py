"""The kit's two log formats: ``text`` for people (the default) and ``json`` for log shippers.

``json`` writes one object per line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message``, the ``run_id`` of the run this process is writing (``set_run_id``), and the structured
fields a call site passes as ``extra={"fields": {...}}`` (the server's access log: request id, status,
per-stage milliseconds; training: the step record with its stage times; evaluation: the summary).
Secrets are masked in the message and in every field (``secrets.redact``).
"""

from __future__ import annotations

import json
import logging
import sys
import time

from deepsynth_ocr.secrets import RedactingFilter, redact

FORMATS = ("text", "json")
TEXT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"  # milliseconds: a step is often under a second
_run_id: str | None = None


def set_run_id(run_id: str | None) -> None:
    """The run every later JSON line names (``None``: no run)."""
    global _run_id
    _run_id = run_id


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if _run_id is not None:
            out["run_id"] = _run_id
        fields = getattr(record, "fields", None)
        if fields:
            out.update(redact({k: v for k, v in fields.items() if k not in out}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(fmt: str, text: str = TEXT) -> logging.Formatter:
    """The formatter for ``fmt`` (``text`` uses the ``text`` pattern)."""
    return JsonFormatter() if fmt == "json" else logging.Formatter(text, "%Y-%m-%d %H:%M:%S")


class CurrentStream(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` or ``sys.stderr`` is at the time of each record: a notebook or a test
    harness that swaps it (and closes the old one) must not leave a logger writing to a closed stream."""

    def __init__(self, which: str = "stderr"):
        super().__init__()
        self._which = which

    @property
    def stream(self):
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, value):  # StreamHandler's own assignments: the stream is looked up at each record
        pass


def configure(fmt: str = "text", level: int = logging.INFO, text: str = "%(message)s", stream=None) -> None:
    """One handler on the root logger, writing ``fmt`` to ``stream`` (default: the current stderr) with secrets
    masked; for commands that write no run directory (serve, infer, prepare, sweep, notebook, ui)."""
    handler = logging.StreamHandler(stream) if stream is not None else CurrentStream("stderr")
    handler.setFormatter(formatter(fmt, text))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
