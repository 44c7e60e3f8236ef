"""The run directory: resolved config, timestamped console log, metrics, manifest.

Layout: ``<output_root>/<name>_<YYYYmmdd_HHMMSS>/`` with ``config.yaml``, ``console.log``,
``metrics.jsonl``, ``eval/``, ``checkpoints/``, ``adapter/``, ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path

from deepsynth_ocr.config import RunConfig

log = logging.getLogger("deepsynth_ocr")

TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "jiwer", "bitsandbytes", "wandb", "unsloth")


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
    dirs = sorted(p for p in Path(output_root).glob(f"{name}_*") if (p / "manifest.json").is_file())
    return dirs[-1] if dirs else None


class Run:
    """One run directory and its manifest; ``finish`` records the final status."""

    def __init__(self, directory: Path, cfg: RunConfig):
        self.dir = directory
        self.cfg = cfg
        self.started = time.time()
        self.manifest_path = directory / "manifest.json"
        if self.manifest_path.is_file():  # resumed run: keep its history
            self.manifest = json.loads(self.manifest_path.read_text())
            self.manifest["resumed_at"] = datetime.now().isoformat(timespec="seconds")
        else:
            self.manifest = {"name": cfg.name, "created_at": datetime.now().isoformat(timespec="seconds")}
        self.manifest.update({"status": "running", "versions": package_versions(), "git_commit": git_commit(),
                              "command": sys.argv, "timings": self.manifest.get("timings", {})})
        self._handler = _attach_console_log(directory / "console.log")
        cfg.to_yaml(directory / "config.yaml")
        self.save()

    @classmethod
    def create(cls, cfg: RunConfig, directory: str | Path | None = None) -> Run:
        """A new run directory, or with ``train.resume`` the newest one of the same name."""
        if directory is None and cfg.train.resume:
            directory = latest_run_dir(cfg.output_root, cfg.name)
        if directory is None:
            directory = new_run_path(cfg.output_root, cfg.name)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, cfg)

    def save(self) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2, default=str))
        tmp.replace(self.manifest_path)

    def update(self, **fields) -> None:
        self.manifest.update(fields)
        self.save()

    def timing(self, name: str, seconds: float) -> None:
        self.manifest["timings"][name] = round(seconds, 3)
        self.save()

    def log_metrics(self, record: dict) -> None:
        with (self.dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def finish(self, status: str, error: BaseException | None = None) -> None:
        self.manifest["status"] = status
        self.manifest["timings"]["total_s"] = round(time.time() - self.started, 3)
        if error is not None:
            self.manifest["error"] = f"{type(error).__name__}: {error}"
        self.save()
        log.info("run %s: %s (%s)", status, self.dir, self.manifest_path)
        logging.getLogger().removeHandler(self._handler)
        self._handler.close()


def _attach_console_log(path: Path) -> logging.Handler:
    """Timestamped log of the kit (and Python warnings) to ``path``, plus the console."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    kit = logging.getLogger("deepsynth_ocr")
    kit.setLevel(logging.INFO)
    if not any(getattr(h, "_deepsynth_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(fmt)
        console.setLevel(logging.INFO)
        console._deepsynth_console = True
        root.addHandler(console)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler
