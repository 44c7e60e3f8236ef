"""Validate raw rows into a ``datasets.Dataset``; every rejected row is counted with its reason.

``read == kept + rejected`` always holds, and each rejection names its source location, so a user
can find and fix the bad row. Owns the validator (``RowValidator``), the prepared dataset's features
and the reading side of a prepared directory. Two users share the validator:

- ``jobs.prepare.prepare(cfg)``: the ``deepsynth-ocr prepare`` job, which streams any number of sources
  into a saved ``DatasetDict`` (train / validation / test by id hash) with ``report.json``.
- ``prepare_manifest(path, ...)``: what a training run uses for ``data.train_path`` /
  ``data.eval_path``: any source validated in process, or a ``prepare`` output directory loaded.

Reason codes: unparseable_row, unreadable_file, missing_field, invalid_field, missing_image,
missing_text, undecodable_image, truncated_image, decompression_bomb, image_too_small,
image_too_large, unsupported_image_mode, empty_text, invalid_text, text_too_long, unknown_task,
bad_prompt, document_too_long, duplicate_id.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from deepsynth_ocr.config import DataConfig, PrepareConfig
from deepsynth_ocr.data.documents import DocumentTooLong, PageStyle, render_document
from deepsynth_ocr.data.images import check_image
from deepsynth_ocr.data.sources import RawRow, columns_from, count_rows, read_source
from deepsynth_ocr.data.tasks import IMAGE, TASKS, first_answer, preset_of, setting, task_prompt
from deepsynth_ocr.errors import RowError, UserError

log = logging.getLogger(__name__)

__all__ = ["FEATURES", "PREPARED_KIND", "PrepareError", "PrepareReport", "Rejection", "RowError", "RowValidator",
           "is_prepared_dir", "load_prepared", "prepare_manifest", "read_rows", "write_data_report"]

PREPARED_KIND = "deepsynth-ocr-prepared"
FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "image": datasets.Image(),
    "text": datasets.Value("string"),
    "prompt": datasets.Value("string"),
    "task": datasets.Value("string"),
    "source": datasets.Value("string"),  # where the row came from, to trace a bad prediction back
})
_WHITESPACE = re.compile(r"\s+")


class PrepareError(UserError):
    """Preparation stopped: a bad row under ``data.strict``, or nothing usable; the message says where."""


@dataclass
class Rejection:
    location: str
    reason: str
    detail: str


@dataclass
class PrepareReport:
    source: str
    source_type: str = ""
    read: int = 0
    kept: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    normalised: Counter = field(default_factory=Counter)  # what was fixed in kept rows (exif_rotated, target_truncated)
    stopped_early: bool = False  # prepare.max_rows was reached before the source ended

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejections).items()))

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "source_type": self.source_type,
            "read": self.read,
            "kept": self.kept,
            "rejected": self.rejected,
            "by_reason": self.by_reason(),
            "normalised": dict(sorted(self.normalised.items())),
            "stopped_at_max_rows": self.stopped_early,
            "rejections": [vars(r) for r in self.rejections],
        }

    def summary(self) -> str:
        head = f"{self.source}: read {self.read} = kept {self.kept} + rejected {self.rejected}"
        if self.stopped_early:
            head += " (stopped at prepare.max_rows; the rest of the source was not read)"
        lines = [head] + [f"  {reason}: {n}" for reason, n in self.by_reason().items()]
        lines += [f"  {r.location}: {r.reason} ({r.detail})" for r in self.rejections[:10]]
        if self.rejected > 10:
            lines.append(f"  ... {self.rejected - 10} more in report.json")
        if self.normalised:
            lines.append("  normalised: " + ", ".join(f"{k} {v}" for k, v in sorted(self.normalised.items())))
        return "\n".join(lines)


def _text(fields: dict, name: str, column: str, collapse: bool = False) -> str:
    """Field ``name`` as clean text: UTF-8, NFC, no BOM, ``\\n`` line ends, stripped, non-empty."""
    value = fields.get(name)
    if value is None:
        raise RowError("missing_field", f"field '{name}' (column '{column}') is missing")
    if isinstance(value, (bytes, bytearray)):  # sidecar files and tar members
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RowError("invalid_text", f"'{name}' is not valid UTF-8 (byte {e.start}); re-save it as UTF-8") from None
    if not isinstance(value, str):
        raise RowError("invalid_field", f"field '{name}' must be text, got {type(value).__name__} {value!r:.40}")
    text = unicodedata.normalize("NFC", value.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")).strip()
    if collapse:
        text = _WHITESPACE.sub(" ", text)
    if not text:
        raise RowError("empty_text", f"field '{name}' is empty or whitespace only")
    bad = next((c for c in text if c == "\ufffd" or (unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t")), None)
    if bad is not None:
        raise RowError("invalid_text", f"field '{name}' holds U+{ord(bad):04X} (a decoding error or control character)")
    return text


class RowValidator:
    """Turns a ``RawRow`` into a sample ``{id, image, text, prompt, task, source}`` or raises ``RowError``.

    Keeps the ids seen so far, so duplicates are caught across every source it validates.
    """

    def __init__(self, cfg: DataConfig, tokenizer, default_prompt: str, page_style: PageStyle | None = None,
                 max_pages: int = 3, embed: bool = True):
        self.cfg, self.tokenizer, self.page_style, self.max_pages, self.embed = cfg, tokenizer, page_style or PageStyle(), max_pages, embed
        self.ocr_prompt = cfg.prompt or default_prompt
        self.default_task = setting(cfg, "task")
        self.columns = columns_from(cfg)
        self.convert = getattr(preset_of(cfg), "convert", None)
        self.seen_ids: dict[str, str] = {}
        self.changes: list[str] = []  # what was fixed in the last kept row (its image, a truncated target)

    def __call__(self, raw: RawRow) -> dict:
        if raw.error:
            raise RowError(raw.error_reason, raw.error)
        fields, cfg = raw.fields, self.cfg
        if self.convert is not None:
            fields = self.convert(fields)
        task_name = fields.get("task") or self.default_task
        task = TASKS.get(task_name) if isinstance(task_name, str) else None
        if task is None:
            raise RowError("unknown_task", f"task {task_name!r} (column '{cfg.task_column}') is not one of {list(TASKS)}")
        if task.target == "answer":
            answer = first_answer(fields.get("answer"))
            if answer is None and fields.get("answer") is not None:  # SQuAD's unanswerable rows: answers.text == []
                raise RowError("empty_text", f"field 'answer' (column '{self.columns['answer']}') holds no answer")
            fields = {**fields, "answer": answer}
        target = _text(fields, task.target, self.columns[task.target], cfg.collapse_whitespace)
        ids = self.tokenizer(target, add_special_tokens=False).input_ids
        truncated = len(ids) > cfg.max_target_tokens
        if truncated and cfg.long_targets == "reject":
            raise RowError("text_too_long", f"'{task.target}' is {len(ids)} tokens > data.max_target_tokens="
                                            f"{cfg.max_target_tokens} (data.long_targets: truncate keeps its start)")
        if truncated:
            target = _truncated(self.tokenizer, ids, cfg.max_target_tokens)
        question = _text(fields, "question", cfg.question_column) if "question" in task.needs else ""
        prompt = fields.get("prompt") or task_prompt(task, self.ocr_prompt, question, cfg.instruction)
        if not isinstance(prompt, str) or prompt.count(IMAGE) != 1:
            raise RowError("bad_prompt", f"prompt {prompt!r:.60} must hold exactly one {IMAGE} placeholder")
        image = self._image(raw, fields, task)
        row_id = fields.get("id")
        row_id = raw.default_id if row_id is None or row_id == "" else str(row_id)
        if row_id in self.seen_ids:
            raise RowError("duplicate_id", f"id {row_id!r} already used at {self.seen_ids[row_id]}")
        self.seen_ids[row_id] = raw.location
        self.changes = image.changes + (["target_truncated"] if truncated else [])
        return {"id": row_id, "image": image.stored, "text": target, "prompt": unicodedata.normalize("NFC", prompt),
                "task": task_name, "source": raw.location}

    def _image(self, raw: RawRow, fields: dict, task):
        value = fields.get("image")
        if value is None or value == "":
            if not task.renders_document:
                raise RowError("missing_field", f"field 'image' (column '{self.cfg.image_column}') is missing")
            document = _text(fields, "text", self.cfg.text_column)
            try:
                value = render_document(document, self.page_style, self.max_pages)
            except DocumentTooLong as e:
                raise RowError("document_too_long", str(e)) from None
        return check_image(value, raw.base_dir, self.cfg, embed=self.embed)

    def run(self, rows: Iterable[RawRow], report: PrepareReport, strict: bool) -> Iterator[dict]:
        """Validated samples of ``rows``; rejections go to ``report`` (or raise under ``strict``)."""
        for raw in rows:
            report.read += 1
            try:
                sample = self(raw)
            except RowError as e:
                if strict:
                    raise PrepareError(f"{raw.location}: {e.reason}: {e.detail} (data.strict stops at the first bad row)") from None
                report.rejections.append(Rejection(raw.location, e.reason, e.detail))
                continue
            report.kept += 1
            report.normalised.update(self.changes)
            yield sample


def _truncated(tokenizer, ids: list[int], limit: int) -> str:
    """The text of the first ``limit`` tokens; decoding can merge tokens differently, so it is cut until it fits."""
    keep = limit
    while True:
        text = tokenizer.decode(ids[:keep], skip_special_tokens=True).rstrip()
        if len(tokenizer(text, add_special_tokens=False).input_ids) <= limit or keep == 0:
            return text
        keep -= 1


def read_rows(spec: str, cfg: DataConfig, validator: RowValidator, report: PrepareReport, source_split: str,
          progress: bool) -> Iterator[dict]:
    kind, raw_rows = read_source(spec, cfg.source_type, columns_from(cfg), source_split)
    report.source_type = kind
    bar = tqdm(raw_rows, desc=f"prepare {Path(spec).name}", unit="row", total=count_rows(spec, kind),
               disable=not progress, mininterval=1.0)
    yield from validator.run(bar, report, cfg.strict)


# --- in-process: what a training run reads ------------------------------------------------------

def is_prepared_dir(path: str | Path) -> bool:
    """Whether ``path`` is an output directory of ``prepare``."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("kind") == PREPARED_KIND
    except (json.JSONDecodeError, AttributeError):
        return False


def load_prepared(path: str | Path, split: str = "train") -> tuple[datasets.Dataset, PrepareReport]:
    """One split of a ``prepare`` output directory (validated when it was prepared)."""
    dd = datasets.load_from_disk(str(path))
    if split not in dd:
        raise PrepareError(f"{path}: no {split!r} split (it has {list(dd)}); prepare it with a non-zero "
                           f"prepare.{split}_size, or point data.eval_path elsewhere")
    ds = dd[split]
    return ds, PrepareReport(f"{path} [{split}]", "prepared", read=len(ds), kept=len(ds))


def prepare_manifest(path: str | Path, cfg: DataConfig, tokenizer, default_prompt: str, *, split: str = "train",
                     prepare_cfg: PrepareConfig | None = None, progress: bool = False) -> tuple[datasets.Dataset, PrepareReport]:
    """Validate one source (JSONL, CSV, Parquet, folder, tar shards, saved dataset) into a dataset whose
    ``image`` column decodes to RGB PIL images; or load ``split`` of a ``prepare`` output directory.

    Images that need no change stay references to their files; run ``deepsynth-ocr prepare`` first
    for large byte-holding sources (Parquet, tar), so they are streamed to disk once.
    """
    if is_prepared_dir(path):
        return load_prepared(path, split)
    prepare_cfg = prepare_cfg or PrepareConfig()
    validator = RowValidator(cfg, tokenizer, default_prompt, PageStyle.from_config(prepare_cfg),
                             prepare_cfg.max_pages, embed=False)
    report = PrepareReport(source=str(path))
    rows = list(read_rows(str(path), cfg, validator, report, prepare_cfg.source_split, progress))
    if not rows:
        raise PrepareError(f"{path}: no usable rows\n{report.summary()}")
    return datasets.Dataset.from_list(rows, features=FEATURES), report


def write_data_report(reports: list[PrepareReport], path: Path) -> None:
    path.write_text(json.dumps([r.to_dict() for r in reports], indent=2, ensure_ascii=False))
