"""Validate raw rows into a ``datasets.Dataset``; every rejected row is counted with its reason.

``read == kept + rejected`` always holds, and each rejection names its source location, so a user
can find and fix the bad row.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image, UnidentifiedImageError

from deepsynth_ocr.config import DataConfig
from deepsynth_ocr.data.sources import RawRow, read_jsonl

log = logging.getLogger(__name__)


@dataclass
class Rejection:
    location: str
    reason: str
    detail: str


@dataclass
class PrepareReport:
    source: str
    read: int = 0
    kept: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejections).items()))

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "read": self.read,
            "kept": self.kept,
            "rejected": self.rejected,
            "by_reason": self.by_reason(),
            "rejections": [vars(r) for r in self.rejections],
        }

    def summary(self) -> str:
        head = f"{self.source}: read {self.read} = kept {self.kept} + rejected {self.rejected}"
        lines = [head] + [f"  {reason}: {n}" for reason, n in self.by_reason().items()]
        lines += [f"  {r.location}: {r.reason} ({r.detail})" for r in self.rejections[:10]]
        if self.rejected > 10:
            lines.append(f"  ... {self.rejected - 10} more in report.json")
        return "\n".join(lines)


class RowError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _check_image(path: Path, cfg: DataConfig) -> None:
    if not path.is_file():
        raise RowError("missing_image", f"file not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > cfg.max_image_pixels:
                raise RowError("image_too_large", f"{w}x{h} exceeds data.max_image_pixels={cfg.max_image_pixels}")
            im.load()  # full decode: catches truncated files that open() alone accepts
    except RowError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RowError("undecodable_image", f"{path.name}: {e}") from None
    if min(w, h) < cfg.min_image_side:
        raise RowError("image_too_small", f"{w}x{h} has a side below data.min_image_side={cfg.min_image_side}")


def validate_row(row: RawRow, cfg: DataConfig, tokenizer, default_prompt: str) -> dict:
    """Return the normalised row ``{id, image, text, prompt}`` or raise ``RowError``."""
    if row.error:
        raise RowError("unparseable_row", row.error)
    image, text = row.fields.get("image"), row.fields.get("text")
    if not isinstance(image, str) or not image:
        raise RowError("missing_field", "field 'image' (a path) is missing or not a string")
    if not isinstance(text, str):
        raise RowError("missing_field", "field 'text' is missing or not a string")
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise RowError("empty_text", "field 'text' is empty or whitespace only")
    n_tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
    if n_tokens > cfg.max_target_tokens:
        raise RowError("text_too_long", f"{n_tokens} tokens > data.max_target_tokens={cfg.max_target_tokens}")
    path = (row.base_dir / image).resolve()
    _check_image(path, cfg)
    prompt = row.fields.get("prompt") or cfg.prompt or default_prompt
    if "<image>" not in prompt:
        raise RowError("bad_prompt", f"prompt {prompt!r} has no <image> placeholder")
    return {"id": str(row.fields.get("id", row.location)), "image": str(path), "text": text, "prompt": prompt}


def prepare_manifest(path: str | Path, cfg: DataConfig, tokenizer, default_prompt: str) -> tuple[datasets.Dataset, PrepareReport]:
    """Validate a JSONL manifest into a dataset whose ``image`` column decodes to PIL images."""
    report = PrepareReport(source=str(path))
    rows: list[dict] = []
    seen_ids: dict[str, str] = {}
    for raw in read_jsonl(path):
        report.read += 1
        try:
            row = validate_row(raw, cfg, tokenizer, default_prompt)
            if row["id"] in seen_ids:
                raise RowError("duplicate_id", f"id {row['id']!r} already used at {seen_ids[row['id']]}")
        except RowError as e:
            report.rejections.append(Rejection(raw.location, e.reason, e.detail))
            continue
        seen_ids[row["id"]] = raw.location
        rows.append(row)
    report.kept = len(rows)
    if not rows:
        raise ValueError(f"{path}: no usable rows\n{report.summary()}")
    columns = {k: [r[k] for r in rows] for k in ("id", "image", "text", "prompt")}
    ds = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    return ds, report


def write_report(reports: list[PrepareReport], path: Path) -> None:
    path.write_text(json.dumps([r.to_dict() for r in reports], indent=2, ensure_ascii=False))
