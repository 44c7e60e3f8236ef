"""The run directory: the one owner of its layout, its manifest and its lifecycle.

Every job writes into a run directory through this module, and everything that reads one (the
report, the notebook cells, the CLI, export) finds its files through ``RunPaths``: no other module
spells a run-directory file name. Layout of ``<output_root>/<name>_<YYYYmmdd_HHMMSS>/``:
``config.yaml``, ``console.log``, ``metrics.jsonl``, ``data_report.json``, ``eval/<tag>.jsonl``,
``checkpoints/``, ``adapter/`` (or ``model/`` for full fine-tuning), ``report.html``, ``wandb/``,
the executed notebook, and ``manifest.json`` (status, versions, git commit, timings, metrics).

Lifecycle: ``with Run.start(cfg) as run:`` writes the resolved config, attaches the console log and
sets ``status: running``; leaving the block sets ``ok``, or ``failed`` with the error, or
``interrupted`` on Ctrl-C; the exception is never swallowed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

import yaml

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.devices import world
from deepsynth_ocr.errors import RunStopped, UserError
from deepsynth_ocr.secrets import RedactingFilter, redact

log = logging.getLogger("deepsynth_ocr")

TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "jiwer", "bitsandbytes", "wandb", "unsloth")


class RunDirError(UserError):
    """A run directory that does not exist or lacks what the command needs."""


class RunLocked(UserError):
    """Another live process is writing this run directory."""


def _file(name: str) -> property:
    return property(lambda self: self.dir / name, doc=f"``{name}`` of the run directory")


@dataclass(frozen=True)
class RunPaths:
    """Every path of one run directory."""

    dir: Path

    config = _file("config.yaml")
    manifest = _file("manifest.json")
    console_log = _file("console.log")
    metrics = _file("metrics.jsonl")
    data_report = _file("data_report.json")
    eval_dir = _file("eval")
    checkpoints = _file("checkpoints")
    adapter = _file("adapter")
    model = _file("model")  # full fine-tuning's weights (lora.enabled: false)
    report = _file("report.html")
    wandb = _file("wandb")
    export = _file("export")
    lock = _file(".lock")  # {pid, host, started} of the process writing the directory

    def eval_file(self, tag: str) -> Path:
        """Per-sample predictions of one evaluation: ``before``, ``after``, ``baseline_<engine>``."""
        return self.eval_dir / f"{tag}.jsonl"

    def read_manifest(self) -> dict:
        return json.loads(self.manifest.read_text()) if self.manifest.is_file() else {}

    def read_jsonl(self, path: Path) -> list[dict]:
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def package_versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def new_run_path(output_root: str | Path, name: str) -> Path:
    """``<output_root>/<name>_<YYYYmmdd_HHMMSS>`` (not created)."""
    return Path(output_root) / f"{name}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"


def latest_run_dir(output_root: str | Path, name: str) -> Path | None:
    dirs = sorted(p for p in Path(output_root).glob(f"{name}_*") if RunPaths(p).manifest.is_file())
    return dirs[-1] if dirs else None


def open_finished(directory: str | Path, need_adapter: bool = False) -> RunPaths:
    """A run directory that exists (with ``adapter/`` when asked), or a one-line error naming what is missing."""
    paths = RunPaths(Path(directory))
    if not paths.dir.is_dir():
        raise RunDirError(f"run directory {paths.dir} does not exist")
    if not paths.config.is_file():
        raise RunDirError(f"{paths.dir} is not a run directory: it has no config.yaml")
    if need_adapter and not paths.adapter.is_dir():
        status = paths.read_manifest().get("status", "unknown")
        raise RunDirError(f"{paths.dir} has no adapter/ (run status: {status}); it needs a finished LoRA training run")
    return paths


def update_manifest(directory: str | Path, **fields) -> dict:
    """Merge ``fields`` into a run directory's manifest on disk (for a job that did not start the run)."""
    paths = RunPaths(Path(directory))
    manifest = paths.read_manifest() or {"created_at": datetime.now().isoformat(timespec="seconds")}
    manifest.update(fields)
    _write_manifest(paths, manifest)
    return manifest


def _write_manifest(paths: RunPaths, manifest: dict) -> None:
    """The one manifest writer: atomic (write, then rename), secrets masked."""
    paths.dir.mkdir(parents=True, exist_ok=True)
    tmp = paths.manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(redact(json.loads(json.dumps(manifest, default=str))), indent=2))
    tmp.replace(paths.manifest)


class Run:
    """One run directory being written: manifest, console log, metrics; a context manager for its status."""

    is_main = True

    def __init__(self, directory: Path, cfg: RunConfig):
        self.paths = RunPaths(directory)
        self.dir = directory
        self.cfg = cfg
        self.started = time.time()
        self.manifest = self.paths.read_manifest()
        if self.manifest:  # resumed run: keep its history
            self.manifest["resumed_at"] = datetime.now().isoformat(timespec="seconds")
        else:
            self.manifest = {"name": cfg.name, "created_at": datetime.now().isoformat(timespec="seconds")}
        self.manifest.update({"status": "running", "versions": package_versions(), "git_commit": git_commit(),
                              "command": sys.argv, "timings": self.manifest.get("timings", {})})
        self._lock = acquire_lock(self.paths)
        self._handler = _attach_console_log(self.paths.console_log)
        if self._lock["took_over"]:  # logged once the console log is attached, so the run's log has it
            stale = self._lock["took_over"]
            log.warning("run directory %s: taking over the stale lock of pid %s (no longer running, started %s)",
                        self.dir, stale["pid"], stale.get("started"))
        self.paths.config.write_text(yaml.safe_dump(redact(cfg.to_dict()), sort_keys=False))
        self.save()

    @classmethod
    def start(cls, cfg: RunConfig, directory: str | Path | None = None) -> Run:
        """A new run directory, or with ``train.resume`` the newest one of the same name."""
        if directory is None and cfg.train.resume:
            directory = latest_run_dir(cfg.output_root, cfg.name)
        if directory is None:
            directory = new_run_path(cfg.output_root, cfg.name)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, cfg)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if error is None:
            self.finish("ok")
        elif isinstance(error, RunStopped):
            self.update(stopped_at_step=getattr(error, "step", None))
            self.finish(error.status, error)
        elif isinstance(error, KeyboardInterrupt):
            self.finish("interrupted", error)
        else:
            self.finish("failed", error)
        return False

    def save(self) -> None:
        _write_manifest(self.paths, self.manifest)  # the in-memory manifest is the whole of it

    def update(self, **fields) -> None:
        self.manifest.update(fields)
        self.save()

    def timing(self, name: str, seconds: float) -> None:
        self.manifest["timings"][name] = round(seconds, 3)
        self.save()

    def log_metrics(self, record: dict) -> None:
        with self.paths.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def finish(self, status: str, error: BaseException | None = None) -> None:
        self.manifest["status"] = status
        self.manifest["timings"]["total_s"] = round(time.time() - self.started, 3)
        if error is not None:
            self.manifest["error"] = f"{type(error).__name__}: {error}"
            # The message of a user's mistake says what to fix; a traceback would bury it.
            if isinstance(error, (UserError, RunStopped)):
                log.error("run %s: %s", status, error)
            elif not isinstance(error, KeyboardInterrupt):
                log.error("run failed", exc_info=error)
        self.save()
        release_lock(self.paths, self._lock)
        log.info("run %s: %s (%s)", status, self.dir, self.paths.manifest)
        logging.getLogger().removeHandler(self._handler)
        self._handler.close()


class FollowerRun:
    """A data-parallel run's non-main process: the main process's run directory, nothing written."""

    is_main = False

    def __init__(self, directory: Path, cfg: RunConfig):
        self.paths, self.dir, self.cfg, self.manifest = RunPaths(directory), directory, cfg, {}

    def __enter__(self) -> FollowerRun:
        return self

    def __exit__(self, kind, error, tb) -> bool:
        return False

    def update(self, **fields) -> None:
        pass

    def timing(self, name: str, seconds: float) -> None:
        pass

    def log_metrics(self, record: dict) -> None:
        pass


def start_run(cfg: RunConfig, directory: str | Path | None = None) -> Run | FollowerRun:
    """``Run.start`` in a single process; under a launcher the main process starts the run and every other
    process follows it in the same directory (only the main process writes the manifest, logs and outputs)."""
    rank, size = world()
    if size == 1:
        return Run.start(cfg, directory)
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState()  # joins the process group the launcher set up (gloo on CPUs, nccl on GPUs)
    shared: list = [None]
    run = None
    if rank == 0:
        try:
            run = Run.start(cfg, directory)
            shared[0] = str(run.dir)
        finally:
            dist.broadcast_object_list(shared, src=0)  # None tells the others the start failed
        return run
    dist.broadcast_object_list(shared, src=0)
    if shared[0] is None:
        raise RunDirError("the main process could not start the run (its error is in its own output)")
    logging.getLogger("deepsynth_ocr").setLevel(logging.WARNING)  # one copy of the log: the main process's
    return FollowerRun(Path(shared[0]), cfg)


@contextlib.contextmanager
def signal_handlers(handler, signals=(signal.SIGTERM, signal.SIGINT)):
    """``handler`` for ``signals`` while the block runs, the previous handlers restored after it. Python
    delivers signals to the main thread only, so elsewhere (a notebook's worker thread) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def holder_gone(holder: dict) -> bool:
    """Whether the process a lock or a sweep trial names (``{pid, host}``) is gone. Known only for this
    host: a process on another host is never presumed dead."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def acquire_lock(paths: RunPaths) -> dict:
    """Take the run directory's lock, or refuse in one line naming its holder; a dead holder on this host
    (a killed run) is taken over with a warning. Creation is atomic (O_EXCL), so two starts cannot both win."""
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds")}
    took_over = None
    for _ in range(2):
        try:
            fd = os.open(paths.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(paths.lock.read_text())
            except (OSError, json.JSONDecodeError):
                holder = {}
            if holder_gone(holder):
                took_over = holder
                paths.lock.unlink(missing_ok=True)
                continue
            raise RunLocked(f"run directory {paths.dir} is being written by pid {holder.get('pid')} on host "
                            f"{holder.get('host')} since {holder.get('started')}; wait for it to finish or stop it "
                            f"(a holder on another host that is gone: delete {paths.lock})") from None
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        return {**mine, "took_over": took_over}
    raise RunLocked(f"run directory {paths.dir}: could not take its lock {paths.lock}")


def release_lock(paths: RunPaths, mine: dict) -> None:
    try:
        if json.loads(paths.lock.read_text()).get("pid") == mine["pid"]:
            paths.lock.unlink()
    except (OSError, json.JSONDecodeError):
        pass


class _Console(logging.StreamHandler):
    """Logs to whatever ``sys.stdout`` is at the time (a notebook or a test may replace it after the first run)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _attach_console_log(path: Path) -> logging.Handler:
    """Timestamped log of the kit (and Python warnings) to ``path``, plus the console."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(fmt)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    kit = logging.getLogger("deepsynth_ocr")
    kit.setLevel(logging.INFO)
    if not any(getattr(h, "_deepsynth_console", False) for h in root.handlers):
        console = _Console()
        console.setFormatter(fmt)
        console.addFilter(RedactingFilter())
        console.setLevel(logging.INFO)
        console._deepsynth_console = True
        root.addHandler(console)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler
