"""One job per GPU at a time: launches beyond the free slots wait in a queue kept on disk.

The queue is ``<runs root>/.ui/queue/<time>-<run>.json`` (a job's ``Launch``), and each queued run
directory holds a ``.launch`` record without a pid (status ``queued``), so a restarted UI finds its
queue where it left it, and the CLI's ``runs`` shows queued runs too. Running jobs are counted from
the run directories, so a run started from the CLI or a notebook takes its slot as well.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

from deepsynth_ocr.jobs.launch import Launch, start
from deepsynth_ocr.runs import LIVE, RunPaths, list_runs, update_manifest, write_launch

log = logging.getLogger(__name__)

SLOT_KINDS = ("train", "evaluate", "notebook", "sweep")  # the jobs that load a model onto the GPU


def detect_gpus() -> list[dict]:
    """``[{name, memory_gib}]`` of the NVIDIA GPUs nvidia-smi lists (none without a driver); no torch needed."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, mib = line.rpartition(",")
        if name and mib.strip().isdigit():
            gpus.append({"name": name.strip(), "memory_gib": round(int(mib) / 1024, 1)})
    return gpus


class Scheduler:
    """Starts launches while slots are free, queues the rest, and starts them as slots free up."""

    def __init__(self, root: Path, slots: int, cwd: Path | None = None):
        self.root, self.slots, self.cwd = Path(root), max(1, slots), cwd
        self.queue_dir = self.root / ".ui" / "queue"
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.children: list[subprocess.Popen] = []
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.held = 0  # slots held inside the UI process (the Try-it playground's loaded model)
        self.on_tick: list = []  # called on every tick (the playground unloads when idle)

    def busy(self) -> int:
        return sum(1 for r in list_runs(self.root) if r.status in LIVE and r.kind in SLOT_KINDS) + self.held

    def hold(self) -> bool:
        """Take a free slot for work inside the UI process; False when every slot is busy (or runs are queued)."""
        with self.lock:
            if self.queued() or self.busy() >= self.slots:
                return False
            self.held += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.held = max(0, self.held - 1)

    def queued(self) -> list[Path]:
        return sorted(self.queue_dir.glob("*.json"))

    def submit(self, launch: Launch, takes_slot: bool = True) -> str:
        """Start ``launch`` now if a slot is free (or it needs none), else queue it: ``started`` / ``queued``."""
        with self.lock:
            if not takes_slot or (not self.queued() and self.busy() < self.slots):
                self._start(launch)
                return "started"
            launch.run_dir.mkdir(parents=True, exist_ok=True)
            entry = {"kind": launch.kind, "name": launch.name, "run_dir": str(launch.run_dir), "args": launch.args}
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

    def _start(self, launch: Launch) -> None:
        self.children.append(start(launch, cwd=self.cwd))
        log.info("started %s: deepsynth-ocr %s", launch.run_dir.name, " ".join(launch.args))

    def tick(self) -> None:
        """Collect finished children, run the tick hooks, then start the oldest queued launch when a slot is free."""
        self.children = [c for c in self.children if c.poll() is None]
        for hook in self.on_tick:
            hook()
        with self.lock:
            queued = self.queued()
            if not queued or self.busy() >= self.slots:
                return
            entry = json.loads(queued[0].read_text())
            queued[0].unlink()
            self._start(Launch(entry["kind"], entry["name"], Path(entry["run_dir"]), entry["args"]))

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
