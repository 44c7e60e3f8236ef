"""A corrections dataset: images a model read wrong, with the text a person corrected them to, kept as a
versioned JSONL that ``data.train_path`` reads.

Layout of ``<folder>`` (under a data root, ``corrections/NAME``)::

    images/<sha256 prefix><suffix>   each image copied in once, named by its content
    v0001.jsonl, v0002.jsonl, ...    each version holds every row of the one before it plus the rows added

Nothing is overwritten: a version file is created exclusively, and an image already in the dataset is
refused as a duplicate (reported with the version and row that hold it) instead of added twice.
A row is ``image + prompt -> text``: the prompt the model was given is kept, so a corrected Q&A or summary
row trains on what was asked (and is scored by CER when evaluated from this dataset).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from deepsynth_ocr.errors import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
VERSION = re.compile(r"v(\d{4})\.jsonl")
MAX_TEXT_CHARS = 20_000


class CorrectionError(UserError):
    """A correction that cannot be added; the message says which and why."""


@dataclass
class Correction:
    image: Path | None  # the image file to copy in (None: the row has none on disk)
    text: str  # the corrected target
    prompt: str = ""  # the prompt the model was given ('' : the task's own)
    source: str = ""  # where it came from, for a person reading the dataset (run, eval file, row id)


@dataclass
class Added:
    version: Path | None  # the new version file; None when nothing was added
    added: list[str] = field(default_factory=list)  # row ids added
    refused: list[str] = field(default_factory=list)  # one line per correction refused, with the reason

    def to_dict(self) -> dict:
        return {"version": str(self.version) if self.version else None, "added": self.added, "refused": self.refused}


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise CorrectionError(f"corrections dataset name {name!r}: letters, digits, '_', '-', '.', at most 64, no '/'")
    return name


def versions(folder: Path) -> list[Path]:
    """The dataset's version files, oldest first."""
    return sorted(p for p in folder.glob("v*.jsonl") if VERSION.fullmatch(p.name)) if folder.is_dir() else []


def read_rows(version: Path) -> list[dict]:
    return [json.loads(line) for line in version.read_text(encoding="utf-8").splitlines() if line.strip()]


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def add(folder: Path, corrections: list[Correction]) -> Added:
    """Copy the images in and write the next version with the new rows; duplicates and bad rows are refused one
    by one (reported, never dropped silently). Raises when nothing could be added."""
    from filelock import FileLock

    if not corrections:
        raise CorrectionError("no corrections to add")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    with FileLock(str(folder / ".lock")):  # two browser tabs adding at once get two versions, not one lost
        history = versions(folder)
        rows = read_rows(history[-1]) if history else []
        held = {r["id"]: (history[-1].stem, r) for r in rows}
        result, new = Added(None), []
        for c in corrections:
            text = c.text.strip("\n")
            label = c.source or c.image.name
            if not text.strip():
                result.refused.append(f"{label}: the corrected text is empty")
                continue
            if len(text) > MAX_TEXT_CHARS:
                result.refused.append(f"{label}: the corrected text is longer than {MAX_TEXT_CHARS} characters")
                continue
            if c.image is None or not c.image.is_file():
                result.refused.append(f"{label}: no image file to copy (a page rendered from text, or outside the data roots)")
                continue
            digest = _digest(c.image)
            row_id = digest[:16]
            if row_id in held:
                version, row = held[row_id]
                result.refused.append(f"{label}: this image is already in {folder.name} {version} as row {row_id} "
                                      f"(text {row['text'][:60]!r}); duplicates are refused")
                continue
            image = folder / "images" / f"{row_id}{c.image.suffix.lower() or '.png'}"
            if not image.is_file():
                shutil.copyfile(c.image, image)
            row = {"id": row_id, "image": f"images/{image.name}", "text": text, "source": c.source}
            if c.prompt:
                row["prompt"] = c.prompt
            held[row_id] = ("this request", row)
            new.append(row)
            result.added.append(row_id)
        if not new:
            raise CorrectionError("nothing added: " + "; ".join(result.refused))
        number = int(VERSION.fullmatch(history[-1].name).group(1)) + 1 if history else 1
        result.version = folder / f"v{number:04d}.jsonl"
        with result.version.open("x", encoding="utf-8") as f:  # "x": an existing version is never overwritten
            for row in rows + new:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return result
