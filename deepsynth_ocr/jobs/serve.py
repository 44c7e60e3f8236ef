"""The serve job: a finished run (or a model plus adapters) behind the OpenAI-compatible OCR server.

``hf``: loads the base once, attaches each adapter under its served name (a run's adapter is named
after its run directory) and runs ``serving.app`` under uvicorn. SIGTERM stops accepting
connections, answers every request already received (queued or generating), then exits 0.
``vllm``: writes the recipe's ``vllm serve`` command (``serving.vllm``) as a script and runs it
when vLLM is installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from deepsynth_ocr import logs, telemetry
from deepsynth_ocr.addresses import check_address_free, is_loopback
from deepsynth_ocr.config import RunConfig, ServeConfig
from deepsynth_ocr.errors import MissingFileError, UserError
from deepsynth_ocr.models.backends import load_base
from deepsynth_ocr.models.families import get_family
from deepsynth_ocr.runs import open_finished
from deepsynth_ocr.serving.app import create_app
from deepsynth_ocr.serving.engine import OcrEngine, parse_adapter_specs
from deepsynth_ocr.serving.worker import EngineProcess

log = logging.getLogger(__name__)


@dataclass
class ServePlan:
    """What one server answers with: the config (model section = the base) and the named adapters."""

    cfg: RunConfig
    base_name: str
    adapters: dict[str, Path]
    merged: Path | None = None  # a run's verified merged weights (for vLLM)


def plan_models(cfg: RunConfig, run_dir: str | None = None) -> ServePlan:
    """The base and adapters to serve: ``serve.adapters``, plus a run's adapter named after the run."""
    adapters: dict[str, Path] = {}
    merged = None
    if run_dir:
        paths = open_finished(run_dir, need_adapter=True)
        adapters[paths.dir.resolve().name] = paths.adapter
        merged = paths.export / "merged" if (paths.export / "merged").is_dir() else None
    for name, directory in parse_adapter_specs(cfg.serve.adapters).items():
        if name in adapters:
            raise UserError(f"adapter name {name!r} is already the run's adapter; pick another name")
        adapters[name] = directory
    path = cfg.model.name_or_path
    base_name = cfg.serve.base_name or {"": "tiny-base", "random": "tiny-random"}.get(path, path)
    return ServePlan(cfg, base_name, adapters, merged)


def api_keys(serve_cfg: ServeConfig) -> dict[str, float | None]:
    """Keys from ``serve.api_keys_env`` (comma-separated) and ``serve.api_keys_file`` (one per line, optionally
    followed by ``rate_limit_per_minute=N``), each with its own rate limit or None (``serve.rate_limit_per_minute``)."""
    keys: dict[str, float | None] = {k.strip(): None for k in os.environ.get(serve_cfg.api_keys_env, "").split(",") if k.strip()}
    if serve_cfg.api_keys_file:
        path = Path(serve_cfg.api_keys_file)
        if not path.is_file():
            raise MissingFileError(f"serve.api_keys_file: no such file: {path}")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, *options = line.split()
            rate = None
            for option in options:
                name, _, value = option.partition("=")
                try:
                    rate = float(value) if name == "rate_limit_per_minute" else None
                except ValueError:
                    rate = None
                if rate is None or rate < 0:
                    raise UserError(f"serve.api_keys_file {path}, line {number}: {option.split('=')[0]!r} is not "
                                    "`rate_limit_per_minute=N` (N >= 0); the key itself is not shown")
            keys[key] = rate
    short = [k for k in keys if len(k) < 16]
    if short:
        raise UserError(f"{len(short)} API key(s) shorter than 16 characters; use long random keys "
                        "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return dict(sorted(keys.items()))


def serve(cfg: RunConfig, run_dir: str | None = None, vllm_script: str | None = None, dry_run: bool = False) -> int:
    """Run the server until SIGTERM / Ctrl-C; returns the exit code."""
    cfg.validate()
    logs.configure(cfg.log.format)
    plan = plan_models(cfg, run_dir)
    if cfg.serve.backend == "vllm":
        return _serve_vllm(plan, run_dir, vllm_script, dry_run)
    keys = api_keys(cfg.serve)
    check_address_free(cfg.serve.host, cfg.serve.port)
    if not keys and not is_loopback(cfg.serve.host):
        log.warning("serve: listening on %s without API keys: anyone who can reach the port can use it "
                    "(set %s or serve.api_keys_file)", cfg.serve.host, cfg.serve.api_keys_env)
    log.info("serve: API keys %s", f"required ({len(keys)} configured)" if keys else "off")
    _Server(server_config(build_app(plan, keys, telemetry.tracer_from_env("deepsynth-ocr-serve")))).run()
    log.info("serve: stopped")
    return 0


def build_app(plan: ServePlan, keys: dict[str, float | None] | list[str], tracer=None):
    """The FastAPI app for ``plan``: the base loaded once, each adapter attached under its name, in a
    generation process of its own unless ``serve.generation_process`` is false."""
    if plan.cfg.serve.generation_process:
        engine = EngineProcess(plan.cfg, plan.base_name, plan.adapters)
    else:
        engine = OcrEngine(load_base(plan.cfg), plan.cfg, plan.base_name, plan.adapters)
    return create_app(engine, plan.cfg, keys, tracer)


def server_config(app) -> uvicorn.Config:
    """uvicorn settings: no access log of its own (the app writes one), and a graceful shutdown that
    waits for the longest a request may take."""
    cfg = app.state.engine.cfg
    return uvicorn.Config(app, host=cfg.serve.host, port=cfg.serve.port, access_log=False, log_config=None,
                          timeout_graceful_shutdown=int(cfg.serve.request_timeout_s) + 5)


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM that ended a graceful shutdown means exit 0.

    uvicorn re-raises the signal it caught once it has shut down, so the process would die of
    SIGTERM (exit 143) after answering everything; an orchestrator would count a clean stop as a crash.
    """

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def _serve_vllm(plan: ServePlan, run_dir: str | None, vllm_script: str | None, dry_run: bool) -> int:
    from deepsynth_ocr.serving import vllm

    cfg = plan.cfg
    base = cfg.model.name_or_path
    if not base or base == "random":
        raise UserError("serve.backend vllm needs model.name_or_path: a hub id or checkpoint directory vLLM can load "
                        "(the bundled tiny model is not one vLLM knows)")
    cmd, notes = vllm.plan(plan.merged, base, plan.base_name, plan.adapters, get_family(cfg.model.family),
                           cfg.serve.host, cfg.serve.port)
    for note in notes:
        log.warning("serve: %s", note)
    out = Path(vllm_script or (Path(run_dir) / "vllm_serve.sh" if run_dir else "vllm_serve.sh"))
    out.write_text(vllm.script(cmd, notes))
    out.chmod(0o755)
    print(f"vllm command: {out}")
    if dry_run:
        return 0
    if shutil.which("vllm") is None:
        raise UserError(f"vllm is not installed here; run {out} on a CUDA machine with vLLM (pip install vllm)")
    keys = api_keys(cfg.serve)
    env = dict(os.environ)
    if keys:
        if len(keys) > 1:
            log.warning("serve: vLLM takes one API key (VLLM_API_KEY); the first of %d is used", len(keys))
        env["VLLM_API_KEY"] = next(iter(keys))
    os.execvpe("sh", ["sh", str(out)], env)  # vLLM takes over the process: signals reach it directly
