"""The run directory: the one owner of its layout, its manifest and its lifecycle.

Every job writes into a run directory through this module, and everything that reads one (the
report, the notebook cells, the CLI, export) finds its files through ``RunPaths``: no other module
spells a run-directory file name. Layout of ``<output_root>/<name>_<YYYYmmdd_HHMMSS>/``:
``config.yaml``, ``console.log``, ``metrics.jsonl``, ``data_report.json``, ``eval/<tag>.jsonl``,
``checkpoints/``, ``adapter/`` (or ``model/`` for full fine-tuning), ``report.html``, ``wandb/``,
the executed notebook, and ``manifest.json`` (status, versions, git commit, timings, metrics).

Lifecycle: ``with Run.start(cfg) as run:`` writes the resolved config, attaches the console log and
sets ``status: running``; leaving the block sets ``ok``, or ``failed`` with the error, or
``interrupted`` on SIGTERM / SIGINT (a job with nothing to checkpoint stops at once; training installs
its own handler that checkpoints first); the exception is never swallowed.

The read and stop side (``read_run``, ``list_runs``, ``stop_run``) serves the ``runs`` / ``stop`` /
``resume`` commands and the UI. It imports no torch: listing 200 runs reads 200 small JSON files. A
run whose manifest says ``running`` while the process holding it is gone on this host reads ``died``.
Sweep directories (kind ``sweep``) are listed beside runs; their manifest names their worker processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import re
import shutil
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

from deepsynth_ocr import logs, telemetry
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.errors import Interrupted, RunStopped, UserError
from deepsynth_ocr.ranks import world
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
    tensorboard = _file("tensorboard")
    export = _file("export")
    lock = _file(".lock")  # {pid, host, started} of the process writing the directory
    launch = _file(".launch")  # {pid, host, started, kind, name, argv} of the process jobs.launch started
    study = _file("study.journal")  # a sweep's Optuna journal

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
    """A new, empty ``<output_root>/<name>_<YYYYmmdd_HHMMSS>``, created here so that two runs started in the
    same second get two directories (the second gets ``_2``)."""
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"{name}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"
    for n in range(1, 1000):
        path = base if n == 1 else base.with_name(f"{base.name}_{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"{base}: a thousand runs of this name started in one second")


RESUMABLE = ("train", "notebook", "sweep")


def latest_run_dir(output_root: str | Path, name: str) -> Path | None:
    """The newest training run of exactly ``name`` under ``output_root`` (``train.resume`` without a
    directory): never another name's run that shares the prefix, nor an evaluation's directory."""
    found = []
    for path in Path(output_root).glob(f"{name}_*"):
        manifest = RunPaths(path).read_manifest()
        if manifest.get("name") == name and run_kind(manifest, path) in ("train", "notebook") and RunPaths(path).config.is_file():
            found.append((manifest.get("created_at", ""), path.name, path))
    return max(found)[2] if found else None


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


def checkpoint_adapter(paths: RunPaths, name: str) -> Path:
    """The adapter saved in checkpoint ``name`` of a run, or a one-line error naming what is wrong."""
    folder = paths.checkpoints / name
    if not re.fullmatch(r"checkpoint-\d+", name) or not folder.is_dir():
        have = sorted(p.name for p in paths.checkpoints.glob("checkpoint-*")) if paths.checkpoints.is_dir() else []
        raise RunDirError(f"{paths.dir} has no {name!r} (checkpoints: {', '.join(have) or 'none'})")
    if not (folder / "adapter_model.safetensors").is_file():
        raise RunDirError(f"{folder} holds no adapter_model.safetensors (a full fine-tune's checkpoint, or cut short)")
    return folder


@contextlib.contextmanager
def _manifest_lock(paths: RunPaths):
    """Serialises read-modify-write of a manifest between the processes of one job (a sweep's workers)."""
    paths.dir.mkdir(parents=True, exist_ok=True)
    with (paths.dir / ".manifest.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def edit_manifest(directory: str | Path, edit) -> dict:
    """Apply ``edit(manifest)`` (in place) to a run directory's manifest on disk, for a job that does not
    hold a ``Run``; under a file lock, so concurrent job processes never lose each other's changes."""
    paths = RunPaths(Path(directory))
    with _manifest_lock(paths):
        manifest = paths.read_manifest() or {"created_at": datetime.now().isoformat(timespec="seconds")}
        edit(manifest)
        _write_manifest(paths, manifest)
    return manifest


def update_manifest(directory: str | Path, **fields) -> dict:
    """Merge ``fields`` into a run directory's manifest on disk (for a job that did not start the run)."""
    return edit_manifest(directory, lambda manifest: manifest.update(fields))


def this_process() -> dict:
    """``{pid, host, started}``: how a lock, a launch record or a manifest's ``workers`` name a process."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds")}


def join_workers(manifest: dict, me: dict) -> None:
    """Add ``me`` to the manifest's ``workers``, dropping workers whose process is gone."""
    manifest["workers"] = [w for w in manifest.get("workers") or [] if not holder_gone(w) and w.get("pid") != me["pid"]] + [me]


def leave_workers(manifest: dict, me: dict) -> list[dict]:
    """Remove ``me`` (and gone workers) from ``workers``; returns the workers still there."""
    manifest["workers"] = [w for w in manifest.get("workers") or [] if not holder_gone(w) and w.get("pid") != me["pid"]]
    return manifest["workers"]


def _write_manifest(paths: RunPaths, manifest: dict) -> None:
    """The one manifest writer: atomic (write, then rename), secrets masked."""
    paths.dir.mkdir(parents=True, exist_ok=True)
    tmp = paths.manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(redact(json.loads(json.dumps(manifest, default=str))), indent=2))
    tmp.replace(paths.manifest)


class Run:
    """One run directory being written: manifest, console log, metrics; a context manager for its status."""

    is_main = True

    def __init__(self, directory: Path, cfg: RunConfig, kind: str = "train"):
        self.paths = RunPaths(directory)
        self.dir = directory
        self.cfg = cfg
        self.started = time.time()
        now = datetime.now().isoformat(timespec="seconds")
        self.manifest = self.paths.read_manifest()
        if "versions" in self.manifest:  # a Run wrote here before: resumed; how each attempt ended is kept
            self.manifest["resumed_at"] = now
            previous = {k: self.manifest.pop(k, None) for k in ("status", "ended_at", "error", "stopped_at_step")}
            self.manifest.setdefault("attempts", []).append(previous)
        self.manifest.setdefault("created_at", now)
        self.manifest.setdefault("name", cfg.name)
        self.manifest.setdefault("kind", kind)  # a notebook run keeps "notebook" when its training cell starts
        self.manifest.pop("ended_at", None)
        self.manifest.update({"status": "running", "versions": package_versions(), "git_commit": git_commit(),
                              "command": sys.argv, "timings": self.manifest.get("timings", {})})
        self._lock = acquire_lock(self.paths)
        self._signals = contextlib.ExitStack()
        self.tracer = telemetry.tracer_from_env("deepsynth-ocr")
        self._span = None
        logs.set_run_id(directory.name)
        self._handler = _attach_console_log(self.paths.console_log, cfg.log.format)
        if self._lock["took_over"]:  # logged once the console log is attached, so the run's log has it
            stale = self._lock["took_over"]
            log.warning("run directory %s: taking over the stale lock of pid %s (no longer running, started %s)",
                        self.dir, stale["pid"], stale.get("started"))
        self.paths.config.write_text(yaml.safe_dump(redact(cfg.to_dict()), sort_keys=False))
        self.save()
        attempt = len(self.manifest.get("attempts", [])) + 1
        log.info("=== %s run %s started%s | command: %s | model: %s (%s, backend %s) | output: %s", kind, self.dir.name,
                 f" (attempt {attempt})" if attempt > 1 else "", " ".join(redact(sys.argv)), cfg.model.name_or_path
                 or "the family's default", cfg.model.family, cfg.model.backend, self.dir)
        self._sync()

    def _sync(self) -> None:
        """Flush the console log to the disk at a status change: what a crash right after it must not lose."""
        detached = _writes_to(sys.stdout, self.paths.console_log)  # `--detach`: the console is the log file
        stream = self._handler.stream if self._handler is not None else sys.stdout if detached else None
        if stream is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
                os.fsync(stream.fileno())

    @classmethod
    def start(cls, cfg: RunConfig, directory: str | Path | None = None, kind: str = "train") -> Run:
        """A run in ``directory``, else with ``train.resume`` the newest training run of the same name, else a
        new ``<output_root>/<name>_<timestamp>``."""
        if directory is None and cfg.train.resume and kind == "train":
            directory = latest_run_dir(cfg.output_root, cfg.name)
        directory = Path(directory) if directory is not None else new_run_path(cfg.output_root, cfg.name)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, cfg, kind)

    def __enter__(self) -> Run:
        # Until a job installs its own (training checkpoints first), a stop signal ends the job at once,
        # recorded as interrupted rather than leaving "running" behind.
        self._signals.enter_context(interrupt_on_signals())
        # The job's span: the parent of every stage(); it ends (with the run's status) when the run does.
        self._span = self._signals.enter_context(telemetry.span(self.tracer, f"deepsynth-ocr {self.manifest['kind']}",
                                                                {"run_id": self.dir.name, "run.name": self.cfg.name}))
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if self._span is not None:
            self._span.set_attribute("run.status", "ok" if error is None else getattr(error, "status", type(error).__name__))
        self._signals.close()
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

    @contextlib.contextmanager
    def stage(self, name: str):
        """A stage of the job (load, eval_before, train, ...): its seconds in the manifest's timings as
        ``<name>_s`` and, when tracing, a child span of the job's span."""
        start = time.time()
        with telemetry.span(self.tracer, name, {"run_id": self.dir.name}):
            yield
        self.timing(f"{name}_s", time.time() - start)

    def log_metrics(self, record: dict) -> None:
        with self.paths.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def finish(self, status: str, error: BaseException | None = None) -> None:
        self.manifest["status"] = status
        self.manifest["ended_at"] = datetime.now().isoformat(timespec="seconds")
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
        exit_code = 0 if status == "ok" else getattr(error, "exit_code", 130 if isinstance(error, KeyboardInterrupt) else 1)
        log.info("=== %s run %s ended: %s, exit code %d, %.1f s | results: %s", self.manifest.get("kind"), self.dir.name,
                 status, exit_code, self.manifest["timings"]["total_s"], results_line(self.manifest))
        self._sync()
        logs.set_run_id(None)
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()


def results_line(manifest: dict) -> str:
    """A run's results in one line for its log's footer: CER (or token F1, ROUGE-L) before and after, the steps."""
    metrics = manifest.get("metrics") or {}
    parts = []
    for key, label in (("cer", "CER"), ("qa_f1", "Q&A token F1"), ("summarize_rouge_l", "ROUGE-L")):
        values = {tag: (metrics.get(tag) or {}).get(key) for tag in ("before", "after")}
        if any(v is not None for v in values.values()):
            parts.append(f"{label} " + " -> ".join("n/a" if v is None else f"{v:.4f}" for v in values.values()))
    if metrics.get("steps") is not None:
        parts.append(f"{metrics['steps']} steps")
    return ", ".join(parts) or "none recorded"


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

    @contextlib.contextmanager
    def stage(self, name: str):  # the main process times and traces the stages
        yield

    def log_metrics(self, record: dict) -> None:
        pass


def start_run(cfg: RunConfig, directory: str | Path | None = None, kind: str = "train") -> Run | FollowerRun:
    """``Run.start`` in a single process; under a launcher the main process starts the run and every other
    process follows it in the same directory (only the main process writes the manifest, logs and outputs)."""
    rank, size = world()
    if size == 1:
        return Run.start(cfg, directory, kind)
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState()  # joins the process group the launcher set up (gloo on CPUs, nccl on GPUs)
    shared: list = [None]
    run = None
    if rank == 0:
        try:
            run = Run.start(cfg, directory, kind)
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


@contextlib.contextmanager
def interrupt_on_signals():
    """SIGTERM / SIGINT raise ``errors.Interrupted`` where the program is (status ``interrupted``, exit 143 or
    130), for the stretches of a job with nothing to save first."""
    def handler(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    with signal_handlers(handler):
        yield


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
    try:  # a zombie has exited; only its parent has not collected it yet (Linux; elsewhere it counts as alive)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def acquire_lock(paths: RunPaths) -> dict:
    """Take the run directory's lock, or refuse in one line naming its holder; a dead holder on this host
    (a killed run) is taken over with a warning. Creation is atomic (O_EXCL), so two starts cannot both win."""
    mine = this_process()
    took_over = None
    for _ in range(2):
        try:
            fd = os.open(paths.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
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


# --- the read and stop side ----------------------------------------------------------------------------

LIVE = ("starting", "running")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def run_kind(manifest: dict, directory: Path) -> str:
    """``train``, ``evaluate``, ``notebook`` or ``sweep``; a manifest written before kinds were recorded is a
    sweep when it has a study journal, else training."""
    if manifest.get("kind"):
        return manifest["kind"]
    return "sweep" if RunPaths(directory).study.is_file() else "train"


@dataclass
class RunInfo:
    """What ``deepsynth-ocr runs`` and the UI show of one run or sweep directory."""

    dir: Path
    name: str
    kind: str
    status: str  # the manifest's, except ``died`` (its process is gone) and ``starting`` (launched, not yet begun)
    created_at: str | None
    ended_at: str | None
    step: int | None  # optimizer steps done (trials finished, for a sweep)
    total: int | None  # train.max_steps (trials wanted, for a sweep)
    cer_before: float | None
    cer_after: float | None  # after training; a sweep's best trial
    pids: list[int]  # the live processes holding the directory (a sweep's workers)
    host: str | None
    error: str | None
    manifest: dict

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "manifest"}
        return {**out, "dir": str(self.dir)}


def _holders(paths: RunPaths, manifest: dict) -> list[dict]:
    """The processes that say they hold the directory, the one to signal first: the lock's, then the job
    processes the manifest names (a sweep's workers, a notebook's papermill process), else the launched one."""
    holders = [h for h in [_read_json(paths.lock)] if h] + list(manifest.get("workers") or [])
    if not holders:
        holders = [h for h in [_read_json(paths.launch)] if h]
    return holders


def _cer(metrics, tag: str) -> float | None:
    value = (metrics or {}).get(tag) if isinstance(metrics, dict) else None
    return value.get("cer") if isinstance(value, dict) else None


def read_run(directory: str | Path) -> RunInfo:
    """One run or sweep directory as ``RunInfo``; a one-line error when it is neither."""
    paths = RunPaths(Path(directory))
    manifest, launch = paths.read_manifest() if paths.manifest.is_file() else {}, _read_json(paths.launch)
    if not manifest and not launch:
        raise RunDirError(f"{paths.dir} is not a run directory: it has no manifest.json")
    kind = run_kind(manifest, paths.dir) if manifest else launch.get("kind", "train")
    status = manifest.get("status") or "starting"
    holders = _holders(paths, manifest)
    live = [h for h in holders if not holder_gone(h)]
    if launch.get("queued") and manifest.get("status") not in LIVE:
        status = "queued"  # waiting for a free slot of the jobs UI (a new run, or a resume)
    elif status in LIVE and not live:
        status = "died"
    elif status not in LIVE and launch and not holder_gone(launch) and launch.get("started", "") >= manifest.get("ended_at", ""):
        status = "starting"  # resumed by the launcher; the process has not opened the run yet
        live = [launch]
    progress = manifest.get("progress") or {}
    metrics = manifest.get("metrics")
    step, total = progress.get("step"), progress.get("max_steps")
    before, after = _cer(metrics, "before"), _cer(metrics, "after")
    if kind == "sweep":
        trials = manifest.get("trials") or {}
        step, total = trials.get("done"), trials.get("wanted")
        before, after = None, (manifest.get("best") or {}).get("cer")
    elif step is None and isinstance(metrics, dict):
        step = metrics.get("steps")
    return RunInfo(paths.dir, manifest.get("name") or launch.get("name") or paths.dir.name, kind, status,
                   manifest.get("created_at") or launch.get("started"), manifest.get("ended_at"), step, total,
                   before, after, [h["pid"] for h in live if isinstance(h.get("pid"), int)] if status in LIVE else [],
                   (live[0] if live else holders[0] if holders else {}).get("host"), manifest.get("error"), manifest)


def list_runs(root: str | Path, status: str | None = None, name: str | None = None) -> list[RunInfo]:
    """Every run and sweep directory directly under ``root``, newest first; ``status`` and ``name`` (a
    substring) filter. A directory that is neither (no manifest, no launch record) is left out."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if not path.is_dir() or not (RunPaths(path).manifest.is_file() or RunPaths(path).launch.is_file()):
            continue
        info = read_run(path)
        if (status is None or info.status == status) and (name is None or name in info.name):
            found.append(info)
    return sorted(found, key=lambda i: (i.created_at or "", i.dir.name), reverse=True)


def find_run(spec: str | Path, root: str | Path = "runs") -> Path:
    """A run directory from a path, or from its directory name under ``root``."""
    for path in (Path(spec), Path(root) / str(spec)):
        if path.is_dir() and (RunPaths(path).manifest.is_file() or RunPaths(path).launch.is_file()):
            return path
    raise RunDirError(f"no run directory {spec} (nor {Path(root) / str(spec)}); `deepsynth-ocr runs` lists them")


def stop_run(directory: str | Path, sig: int = signal.SIGTERM) -> list[int]:
    """Send ``sig`` to the live processes holding a run (a sweep's workers); returns their pids. Training
    saves a checkpoint at the end of its step and ends ``interrupted``; ``deepsynth-ocr resume`` continues it."""
    info = read_run(directory)
    if info.status not in LIVE:
        raise RunDirError(f"{info.dir} is not running (status {info.status}); nothing to stop")
    here = socket.gethostname()
    if info.host and info.host != here:
        raise RunDirError(f"{info.dir} is held by a process on host {info.host}; stop it there")
    # One signal per job: a notebook's kernel (the lock holder) and the notebook process (which forwards
    # signals to its kernel) must not both be signalled, or the kernel sees a second signal and dies at once.
    targets = info.pids if info.kind == "sweep" else info.pids[:1]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return targets


def wait_stopped(directory: str | Path, timeout: float) -> RunInfo:
    """``read_run`` once the directory's processes are gone (or after ``timeout`` seconds)."""
    deadline = time.time() + timeout
    while True:
        info = read_run(directory)
        if info.status not in LIVE or time.time() >= deadline:
            return info
        time.sleep(0.2)


def prune_runs(root: str | Path, keep: int | None = None, older_than_days: float | None = None,
               dry_run: bool = False) -> list[RunInfo]:
    """Remove finished run and sweep directories under ``root``: all but the ``keep`` newest finished ones, and
    (or) those started more than ``older_than_days`` ago. A running, starting or queued run is never removed.
    Returns what was (with ``dry_run``: would be) removed, newest first."""
    if keep is None and older_than_days is None:
        raise UserError("runs prune: say what to remove: --keep N (the newest N stay) and/or --older-than DAYS")
    if (keep is not None and keep < 0) or (older_than_days is not None and older_than_days < 0):
        raise UserError("runs prune: --keep and --older-than must be >= 0")
    cutoff = (datetime.now().timestamp() - older_than_days * 86400) if older_than_days is not None else None
    doomed = []
    finished = [i for i in list_runs(root) if i.status not in (*LIVE, "queued")]  # newest first
    for index, info in enumerate(finished):
        beyond_keep = keep is None or index >= keep
        started = datetime.fromisoformat(info.created_at).timestamp() if info.created_at else 0.0
        too_old = cutoff is None or started < cutoff
        if beyond_keep and too_old:
            doomed.append(info)
    if not dry_run:
        for info in doomed:
            shutil.rmtree(info.dir)
    return doomed


def write_launch(directory: Path, pid: int | None, kind: str, name: str, argv: list[str]) -> None:
    """The launcher's record of the process it started for ``directory`` (read until the run holds its lock);
    ``pid`` None: queued, not started yet."""
    record = {"pid": pid, "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds"),
              "kind": kind, "name": name, "argv": redact(list(argv)), "queued": pid is None}
    tmp = RunPaths(directory).launch.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(RunPaths(directory).launch)


def load_config(run_dir: str | Path | None, config_path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """A run directory's resolved config, else a YAML config (else the defaults), with ``section.field=value``
    overrides."""
    return RunConfig.load(open_finished(run_dir).config if run_dir else config_path, list(overrides))


def _writes_to(stream, path: Path) -> bool:
    """Whether ``stream`` is already ``path`` (a process the launcher started with its output there)."""
    try:
        return path.exists() and os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a notebook's or a test's stream)
        return False


def _attach_console_log(path: Path, log_format: str = "text") -> logging.Handler | None:
    """Timestamped log of the kit (and Python warnings) to ``path``, plus the console, as ``log_format``
    (``logs``) says. Returns the file's handler, or None when the console already is that file (each line once)."""
    fmt = logs.formatter(log_format)
    root = logging.getLogger()
    handler = None
    if not _writes_to(sys.stdout, path):
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(fmt)
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    logging.captureWarnings(True)
    kit = logging.getLogger("deepsynth_ocr")
    kit.setLevel(logging.INFO)
    console = next((h for h in root.handlers if getattr(h, "_deepsynth_console", False)), None)
    if console is None:
        console = logs.CurrentStream("stdout")  # a notebook or a test may replace stdout after the first run
        console.addFilter(RedactingFilter())
        console.setLevel(logging.INFO)
        console._deepsynth_console = True
        root.addHandler(console)
    console.setFormatter(fmt)  # a notebook's second run may ask for the other format
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler
