"""Weights & Biases logging (online or offline), always inside the run directory.

With no API key an ``online`` request falls back to offline mode, so a run never blocks on a
login prompt or a network. All of W&B's directories are pointed into the run directory so nothing
is written in the home directory. The per-sample rows are also on disk (``eval/*.jsonl``) because
wandb has no public reader for offline runs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from deepsynth_ocr.config import TrackingConfig
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.secrets import redact

log = logging.getLogger(__name__)


def resolve_mode(requested: str) -> str:
    if requested == "online" and not os.environ.get("WANDB_API_KEY"):
        log.warning("tracking.wandb is 'online' but WANDB_API_KEY is not set: logging offline instead")
        return "offline"
    return requested


class Tracker:
    def __init__(self, wandb_dir: Path, cfg: TrackingConfig, run_name: str, config: dict, tensorboard_dir: Path | None = None):
        self.cfg = cfg
        self.mode = resolve_mode(cfg.wandb)
        self.run = None
        self.board = _tensorboard_writer(tensorboard_dir) if cfg.tensorboard and tensorboard_dir is not None else None
        if self.mode == "disabled":
            return
        import wandb

        wandb_dir.mkdir(parents=True, exist_ok=True)
        for var, sub in (("WANDB_DIR", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
            os.environ[var] = str(wandb_dir / sub)
        # wandb.init puts a "wandb/" folder inside ``dir``: its parent is the run directory.
        # W&B records the command line in its run metadata; with a secret on it, that metadata is left out.
        secret_on_command_line = redact(sys.argv) != sys.argv
        settings = wandb.Settings(x_disable_meta=True) if secret_on_command_line else None
        self.run = wandb.init(project=cfg.project, name=run_name, dir=str(wandb_dir.parent), mode=self.mode,
                              config=redact(config), reinit="finish_previous", settings=settings)
        log.info("W&B %s run in %s", self.mode, wandb_dir)

    def log(self, values: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(values, step=step)
        if self.board is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.board.add_scalar(key, value, global_step=step)

    def log_samples(self, key: str, rows: list[dict], step: int | None = None) -> None:
        """Per-sample rows ``{id, image, reference, prediction, cer, wer?, failure?}``; with the privacy
        switch only the metric columns go out."""
        if self.run is None or not rows:
            return
        import wandb

        metric_columns = [c for c in ("cer", "wer", "failure") if c in rows[0]]
        if self.cfg.log_images:
            table = wandb.Table(columns=["id", "image", "reference", "prediction", *metric_columns])
            for r in rows:
                table.add_data(r.get("id"), wandb.Image(r["image"]), r["reference"], r["prediction"],
                               *(r[c] for c in metric_columns))
        else:
            table = wandb.Table(columns=metric_columns)
            for r in rows:
                table.add_data(*(r[c] for c in metric_columns))
        self.run.log({key: table}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
        if self.board is not None:
            self.board.close()
            self.board = None


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("tracking.tensorboard: the tensorboard package is not installed (pip install tensorboard), "
                        "or set tracking.tensorboard: false") from None
    return SummaryWriter(log_dir=str(folder))
