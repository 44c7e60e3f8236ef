"""Generation in a process of its own, so the HTTP event loop and the model never share one GIL.

Measured on the tiny base (benchmarks/serve_load.py): with the model in the server's process, the
event loop (HTTP parsing, FastAPI, JSON) held the GIL about as often as generation did, and
``generate()`` — thousands of small torch calls, each re-taking the GIL — ran at half its offline
speed while a core sat idle. ``EngineProcess`` keeps the ``OcrEngine`` in a spawned child: a batch goes
over a pipe (rows with their decoded images, bounds) and its predictions and stage seconds come back.
The parent loads no model at all.

The child ignores SIGINT/SIGTERM (a Ctrl-C reaches the whole process group; the server's graceful stop
decides when generation ends) and exits when the pipe closes, so it never outlives the server.
A child that dies fails the batch in hand (its requests get 500) and makes ``/ready`` answer 503.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from pathlib import Path

from deepsynth_ocr import logs
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.timing import StageClock

log = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """The generation process is gone."""


class EngineProcess:
    """What ``OcrEngine`` offers the app (``names``, ``default_model``, ``default_prompt``, ``run_batch``),
    with the engine in a child process."""

    def __init__(self, cfg: RunConfig, base_name: str, adapters: dict[str, Path], start_timeout_s: float = 600):
        ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads is unsafe
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_batches, args=(child, cfg, base_name, adapters),
                                 name="deepsynth-ocr-generate", daemon=True)
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self._died = False
        self.cfg = cfg
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise UserError(f"the generation process did not load the model within {start_timeout_s:g} s")
        try:
            kind, info = self._conn.recv()
        except EOFError:
            raise WorkerDied(f"the generation process died while loading the model (exit code {self._proc.exitcode})") from None
        if kind == "error":
            self._proc.join(10)
            raise (UserError if info["user_error"] else RuntimeError)(info["message"])
        self.base_name, self.adapters = info["base_name"], info["adapters"]
        self.default_model, self.default_prompt = info["default_model"], info["default_prompt"]
        log.info("generation runs in process %d", self._proc.pid)
        _yield_to_generation()

    @property
    def names(self) -> list[str]:
        return [self.base_name, *self.adapters]

    @property
    def alive(self) -> bool:
        return not self._died and self._proc.is_alive()

    def run_batch(self, name: str, rows: list[dict], bounds: list[int], clock: StageClock | None = None) -> list:
        with self._lock:  # one batch on the pipe at a time (the queue's single generation thread already ensures it)
            try:
                self._conn.send((name, rows, bounds))
                reply = self._conn.recv()
            except (EOFError, BrokenPipeError, ConnectionResetError):
                self._died = True
                raise WorkerDied(f"the generation process died (exit code {self._proc.exitcode}); "
                                 "restart the server") from None
        if reply[0] == "failed":
            raise RuntimeError(reply[1])
        _, preds, preprocess_s, generate_s = reply
        if clock is not None:
            clock.add("preprocess", preprocess_s)
            clock.add("generate", generate_s)
        return preds

    def close(self) -> None:
        """Stop the child once it has finished the batch in hand."""
        if self._proc.is_alive():
            try:
                with self._lock:
                    self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()


def _yield_to_generation() -> None:
    """Put this (the HTTP) process under SCHED_BATCH: its wake-ups (a request arriving) then no longer preempt
    the generation process's threads in the middle of a parallel torch op, where one descheduled thread stalls
    the others; it still gets its fair share of CPU. Measured +5-10% requests/s at saturation on 2 cores.
    Threads started later (uvicorn's, the decode pool) inherit it."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: no change
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def _serve_batches(conn, cfg: RunConfig, base_name: str, adapters: dict[str, Path]) -> None:
    """The child: load the engine, then answer batches until the pipe closes or ``None`` arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(cfg.log.format)
    from deepsynth_ocr.models.backends import load_base
    from deepsynth_ocr.serving.engine import OcrEngine

    try:
        engine = OcrEngine(load_base(cfg), cfg, base_name, adapters)
    except Exception as e:  # the parent raises it, as if it had loaded the model itself
        conn.send(("error", {"message": str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}",
                             "user_error": isinstance(e, UserError)}))
        return
    conn.send(("ready", {"base_name": engine.base_name, "adapters": engine.adapters,
                         "default_model": engine.default_model, "default_prompt": engine.default_prompt}))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        name, rows, bounds = message
        clock = StageClock()
        try:
            preds = engine.run_batch(name, rows, bounds, clock)
        except Exception as e:
            conn.send(("failed", f"{type(e).__name__}: {e}"))
            continue
        conn.send(("ok", preds, clock.seconds("preprocess"), clock.seconds("generate")))
