"""The library versions the GPU path was written against, and a warning when others are installed.

The pins live in the requirements files at the repository root (one source of truth):
``requirements-training.txt`` for the transformers 5 stack, ``requirements-v1.txt`` for DeepSeek-OCR
v1's transformers 4 stack. A user whose ``pip install unsloth`` brought a newer release gets a
warning naming both versions, since behaviour can change behind unchanged argument names.
"""

from __future__ import annotations

import logging
import re
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("unsloth", "unsloth-zoo", "transformers", "peft", "bitsandbytes", "trl")


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (markers ignored)."""
    out = {}
    for line in path.read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if found:
            out[found.group(1).lower()] = found.group(2)
    return out


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def pinned_file() -> Path:
    major = (installed("transformers") or "5").split(".")[0]
    return ROOT / ("requirements-v1.txt" if major == "4" else "requirements-training.txt")


def mismatches() -> list[dict]:
    """Installed packages of ``CHECKED`` whose version differs from the pin; absent packages are not listed."""
    path = pinned_file()
    if not path.is_file():  # installed without the repository (a wheel): nothing to compare with
        return []
    pinned = pins(path)
    out = []
    for name in CHECKED:
        have = installed(name)
        if have is not None and name in pinned and have != pinned[name]:
            out.append({"package": name, "installed": have, "pinned": pinned[name], "pins": path.name})
    return out


def warn_mismatches() -> list[dict]:
    found = mismatches()
    for m in found:
        log.warning("%s %s is installed, the kit is pinned to %s (%s): behaviour may differ from what was tested",
                    m["package"], m["installed"], m["pinned"], m["pins"])
    return found
