"""One job per GPU at a time: launches beyond the free slots wait in a queue kept on disk.

The queue is ``<runs root>/.ui/queue/<number>-<run>.json`` (a job's ``Launch``, and the GPU it asks for), in the
order of the numbers (a move swaps them); each queued run directory holds a ``.launch`` record without a pid
(status ``queued``), so a restarted UI finds its queue where it left it, and the CLI's ``runs`` shows queued runs
too. Running jobs are counted from the run directories, so a run started from the CLI or a notebook takes its slot
as well.

With GPUs, a slot is a GPU: a job started here gets ``CUDA_VISIBLE_DEVICES`` of the GPU it asked for, or of the
lowest free one (recorded in ``.ui/gpus.json``); a run started elsewhere is on the GPU its process's
``CUDA_VISIBLE_DEVICES`` names (GPU 0 without one), and so is the UI's own Try-it model. The queue starts the first
job, in order, whose GPU is free.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from deepsynth_ocr.jobs.launch import Launch, start
from deepsynth_ocr.runs import LIVE, RunPaths, list_runs, update_manifest, write_launch

log = logging.getLogger(__name__)

SLOT_KINDS = ("train", "evaluate", "notebook", "sweep")  # the jobs that load a model onto the GPU


def process_gpu(pid: int) -> int | None:
    """The first GPU a process's ``CUDA_VISIBLE_DEVICES`` names (Linux ``/proc``), or None (unset or unreadable)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"CUDA_VISIBLE_DEVICES="):
            first = item.split(b"=", 1)[1].split(b",")[0].strip()
            return int(first) if first.isdigit() else None
    return None


def _number(value: str) -> float | None:
    return float(value) if value.replace(".", "", 1).isdigit() else None  # "[N/A]" on some GPUs


def gpu_use() -> list[dict]:
    """``[{index, name, utilization, memory_used_gib, memory_total_gib}]`` from nvidia-smi now (none without one)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,utilization.gpu,memory.used,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5 and parts[0].isdigit():
            used, total = _number(parts[3]), _number(parts[4])
            rows.append({"index": int(parts[0]), "name": parts[1], "utilization": _number(parts[2]),
                         "memory_used_gib": round(used / 1024, 1) if used is not None else None,
                         "memory_total_gib": round(total / 1024, 1) if total is not None else None})
    return rows


def detect_gpus() -> list[dict]:
    """``[{name, memory_gib}]`` of the NVIDIA GPUs nvidia-smi lists (none without a driver); no torch needed."""
    return [{"name": g["name"], "memory_gib": g["memory_total_gib"]} for g in gpu_use()]


class Scheduler:
    """Starts launches while slots are free, queues the rest, and starts them as slots free up."""

    def __init__(self, root: Path, slots: int, cwd: Path | None = None, gpus: int = 0):
        self.root, self.slots, self.cwd, self.gpus = Path(root), max(1, slots), cwd, gpus
        self.queue_dir = self.root / ".ui" / "queue"
        self.assigned_file = self.root / ".ui" / "gpus.json"
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.children: list[subprocess.Popen] = []
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.held = 0  # slots held inside the UI process (the Try-it playground's loaded model)
        self.on_tick: list = []  # called on every tick (the playground unloads when idle)
        self.on_demand: list = []  # called when a job wants a held slot (the playground gives it up unless reading)

    def _live(self) -> list:
        return [r for r in list_runs(self.root) if r.status in LIVE and r.kind in SLOT_KINDS]

    def busy(self) -> int:
        return len(self._live()) + self.held

    def _assigned(self) -> dict[str, int]:
        try:
            return json.loads(self.assigned_file.read_text())
        except (OSError, ValueError):
            return {}

    def gpus_in_use(self) -> dict[int, str]:
        """GPU index -> what computes on it: a live run's directory name, or ``try-it`` (the UI's own model)."""
        assigned, used = self._assigned(), {}
        for run in self._live():
            gpu = assigned.get(run.dir.name)
            if gpu is None:
                gpu = next((g for g in map(process_gpu, run.pids) if g is not None), 0)
            used.setdefault(gpu, run.dir.name)
        if self.held:
            used.setdefault(0, "try-it")
        return used

    def _free_gpu(self, wanted: int | None, used: dict[int, str] | None = None) -> int | None:
        """The GPU a job asking for ``wanted`` (None: any) can start on now, or None; ``used``: ``gpus_in_use()``
        when the caller has it already."""
        used = self.gpus_in_use() if used is None else used
        free = [g for g in range(self.gpus) if g not in used]
        if len(used) >= self.slots:
            return None
        return (wanted if wanted in free else None) if wanted is not None else (free[0] if free else None)

    def hold(self) -> bool:
        """Take a free slot for work inside the UI process (on GPU 0 where there are GPUs); False when it is busy
        or runs are queued."""
        with self.lock:
            if self.queued() or self.busy() >= self.slots or (self.gpus and self._free_gpu(0) is None):
                return False
            self.held += 1
            return True

    def _reclaim(self) -> None:
        """Ask what holds slots in the UI process to give them up: a job waits for a model being read with, never
        for an idle one (called outside ``self.lock``: the holders release through it)."""
        for hook in self.on_demand:
            hook()

    def release(self) -> None:
        with self.lock:
            self.held = max(0, self.held - 1)

    def queued(self) -> list[Path]:
        return sorted(self.queue_dir.glob("*.json"))

    def submit(self, launch: Launch, takes_slot: bool = True, gpu: int | None = None) -> str:
        """Start ``launch`` now if a slot (GPU ``gpu``, or any) is free, or it needs none; else queue it:
        ``started`` / ``queued``."""
        if takes_slot and self.held:
            self._reclaim()
        with self.lock:
            if not takes_slot:
                self._start(launch)
                return "started"
            if not self.queued() and self.busy() < self.slots:
                if not self.gpus:
                    self._start(launch)
                    return "started"
                free = self._free_gpu(gpu)
                if free is not None:
                    self._start(launch, free)
                    return "started"
            launch.run_dir.mkdir(parents=True, exist_ok=True)
            entry = {"kind": launch.kind, "name": launch.name, "run_dir": str(launch.run_dir), "args": launch.args, "gpu": gpu}
            path = self.queue_dir / f"{time.time_ns()}-{launch.run_dir.name}.json"
            path.write_text(json.dumps(entry))
            write_launch(launch.run_dir, None, launch.kind, launch.name, launch.args)
            log.info("queued %s (%d running, %d slots)", launch.run_dir.name, self.busy(), self.slots)
            return "queued"

    def cancel(self, run_dir: Path) -> bool:
        """Take a queued run out of the queue; it reads ``interrupted`` (never started). False if not queued."""
        with self.lock:
            for path in self.queued():
                entry = json.loads(path.read_text())
                if entry["run_dir"] == str(run_dir):
                    path.unlink()
                    RunPaths(run_dir).launch.unlink(missing_ok=True)
                    if not RunPaths(run_dir).manifest.is_file():
                        update_manifest(run_dir, name=entry["name"], kind=entry["kind"], status="interrupted",
                                        error="cancelled while queued")
                    return True
        return False

    def queue(self) -> list[dict]:
        """The queued jobs in the order they will start: run directory name, kind, the GPU asked for."""
        return [{"run": Path(e["run_dir"]).name, "kind": e["kind"], "gpu": e.get("gpu")}
                for e in (json.loads(p.read_text()) for p in self.queued())]

    def move(self, run_dir: Path, to: str) -> bool:
        """Move a queued job ``up``, ``down``, to the ``top`` or the ``bottom``; False if it is not queued."""
        with self.lock:
            paths = self.queued()
            names = [json.loads(p.read_text())["run_dir"] for p in paths]
            if str(run_dir) not in names:
                return False
            i = names.index(str(run_dir))
            j = {"up": max(0, i - 1), "down": min(len(paths) - 1, i + 1), "top": 0, "bottom": len(paths) - 1}[to]
            order = paths[:]
            order.insert(j, order.pop(i))
            numbers = [p.name.split("-", 1)[0] for p in paths]  # the same numbers, handed out in the new order
            staged = [p.rename(p.with_name(p.name + ".moving")) for p in order]
            for number, path in zip(numbers, staged, strict=True):
                path.rename(path.with_name(f"{number}-{path.name.split('-', 1)[1].removesuffix('.moving')}"))
            return True

    def _start(self, launch: Launch, gpu: int | None = None) -> None:
        env = None
        if gpu is not None:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
            assigned = self._assigned()
            assigned[launch.run_dir.name] = gpu
            self.assigned_file.write_text(json.dumps(assigned))
        self.children.append(start(launch, env=env, cwd=self.cwd))
        log.info("started %s%s: deepsynth-ocr %s", launch.run_dir.name, f" on GPU {gpu}" if gpu is not None else "",
                 " ".join(launch.args))

    def tick(self) -> None:
        """Collect finished children, run the tick hooks, then start the first queued launch that can start."""
        self.children = [c for c in self.children if c.poll() is None]
        for hook in self.on_tick:
            hook()
        if self.held and self.queued():
            self._reclaim()
        with self.lock:
            queued = self.queued()
            if not queued or self.busy() >= self.slots:
                return
            used = self.gpus_in_use() if self.gpus else {}  # read once: the queue's entries are weighed against it
            for path in queued:
                entry = json.loads(path.read_text())
                gpu = self._free_gpu(entry.get("gpu"), used) if self.gpus else None
                if self.gpus and gpu is None:
                    continue  # its GPU is busy: a later job may fit another one
                path.unlink()
                self._start(Launch(entry["kind"], entry["name"], Path(entry["run_dir"]), entry["args"]), gpu)
                return

    def run_in_background(self, interval: float = 0.5) -> None:
        def loop():
            while not self.stopping.wait(interval):
                try:
                    self.tick()
                except Exception:  # a bad queue entry must not stop the queue
                    log.exception("ui scheduler")

        self.thread = threading.Thread(target=loop, name="ui-scheduler", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
