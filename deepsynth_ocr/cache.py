"""Where the kit keeps what it can rebuild but should not rebuild every time (written checkpoints, baseline readings).

``$DEEPSYNTH_CACHE`` when set; else ``.cache/`` in a source checkout (git-ignored, beside the bundled data); else
``~/.cache/deepsynth-ocr`` for an installed package, whose own folder may not be writable.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("DEEPSYNTH_CACHE")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepsynth-ocr"
