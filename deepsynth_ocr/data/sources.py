"""Readers that turn a user's files into raw rows, each tagged with where it came from.

A reader never judges a row: it yields what it found (or why it could not parse it) and leaves
validation to ``prepare``, so every row is either kept or reported there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RawRow:
    """One row as read: ``location`` says where (``file:line``), ``error`` why it is unreadable."""

    location: str
    fields: dict
    base_dir: Path
    error: str | None = None


def read_jsonl(path: str | Path) -> Iterator[RawRow]:
    """Rows of a JSONL manifest ``{image, text, prompt?, id?}``; image paths relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            location = f"{path}:{lineno}"
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as e:
                yield RawRow(location, {}, path.parent, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(fields, dict):
                yield RawRow(location, {}, path.parent, f"expected a JSON object, got {type(fields).__name__}")
                continue
            yield RawRow(location, fields, path.parent)
