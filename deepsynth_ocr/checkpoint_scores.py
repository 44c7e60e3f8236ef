"""The periodic evaluation's score kept in a checkpoint folder (``deepsynth_eval.json``): written when the checkpoint
is saved (``selection.CheckpointSelection``), read by the jobs UI to rank checkpoints. No torch here: the UI reads it."""

from __future__ import annotations

import json
from pathlib import Path

SCORE_FILE = "deepsynth_eval.json"


def write_score(folder: Path, score: dict) -> None:
    (folder / SCORE_FILE).write_text(json.dumps(score), encoding="utf-8")


def read_score(folder: Path) -> dict:
    """``{step, metric, value, rank_value, ...}``, or ``{}`` for a checkpoint saved between evaluations."""
    try:
        return json.loads((folder / SCORE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
