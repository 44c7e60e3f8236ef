"""The ``deepsynth-ocr prepare`` job: sources in, one validated, split, saved dataset out.

Owns the prepared output directory (``prepare.output_dir``, default ``data/prepared/<name>``): a
``datasets.DatasetDict`` at its top, ``report.json`` (per source: read = kept + rejected, every
rejection with its location and reason) and ``manifest.json`` (sources, counts, splits, config hash,
versions). The validation itself is the library's (``data.prepare.RowValidator``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import datasets
from transformers import AutoTokenizer

from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.data.documents import PageStyle
from deepsynth_ocr.data.prepare import (
    FEATURES,
    PREPARED_KIND,
    PrepareError,
    PrepareReport,
    RowValidator,
    is_prepared_dir,
    read_rows,
)
from deepsynth_ocr.data.sources import SourceError
from deepsynth_ocr.data.splits import assign_splits
from deepsynth_ocr.hub import check_push_credentials
from deepsynth_ocr.models.backends import checkpoint_source, resolve_revision
from deepsynth_ocr.models.families import get_family
from deepsynth_ocr.models.tiny import build_tiny_tokenizer
from deepsynth_ocr.runs import git_commit, package_versions

log = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    """What ``prepare`` wrote: ``output_dir`` (a ``DatasetDict`` + report.json + manifest.json)."""

    output_dir: Path
    reports: list[PrepareReport]
    splits: dict[str, int]
    config_hash: str

    @property
    def read(self) -> int:
        return sum(r.read for r in self.reports)

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.reports)

    @property
    def rejected(self) -> int:
        return sum(r.rejected for r in self.reports)

    def summary(self) -> str:
        lines = [r.summary() for r in self.reports]
        lines.append(f"total: read {self.read} = kept {self.kept} + rejected {self.rejected}")
        lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in self.splits.items()))
        lines.append(f"written to {self.output_dir} (report.json, manifest.json)")
        return "\n".join(lines)


def load_tokenizer(cfg: RunConfig):
    """The family's tokenizer, used to bound target lengths (``data.max_target_tokens``), at the revision the
    model loads (a remote-code family's pinned one: its tokenizer code runs too)."""
    family = get_family(cfg.model.family)
    source = checkpoint_source(cfg.model)
    if source is None:
        return build_tiny_tokenizer()

    try:
        return AutoTokenizer.from_pretrained(source, revision=resolve_revision(cfg, family),
                                             trust_remote_code=family.trust_remote_code)
    except (OSError, ValueError) as e:
        raise PrepareError(f"model.name_or_path={cfg.model.name_or_path!r}: cannot load its tokenizer, which prepare "
                           f"needs to count target tokens ({e})") from None


def config_hash(cfg: RunConfig) -> str:
    """Hash of everything that decides the prepared rows (not where they are written)."""
    prepare = {k: v for k, v in dataclasses.asdict(cfg.prepare).items() if k != "output_dir"}
    model = {k: getattr(cfg.model, k) for k in ("family", "name_or_path", "revision")}
    blob = json.dumps({"data": dataclasses.asdict(cfg.data), "prepare": prepare, "model": model}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _output_dir(cfg: RunConfig) -> Path:
    out = Path(cfg.prepare.output_dir or f"data/prepared/{cfg.name}")
    if out.exists() and any(out.iterdir()) and not is_prepared_dir(out):
        raise PrepareError(f"prepare.output_dir={out} exists and is not a prepare output; choose an empty or new directory")
    return out


def prepare(cfg: RunConfig, progress: bool = True) -> PrepareResult:
    """Read, validate, normalise and split ``cfg.prepare.sources``; write them as one dataset.

    Rows stream from each source through the validator straight to disk, so memory stays flat
    however many images there are. The output directory (``prepare.output_dir``, default
    ``data/prepared/<name>``) holds a ``datasets.DatasetDict`` (``datasets.load_from_disk`` reads
    it; ``data.train_path`` can point at it), ``report.json`` (per source: read = kept + rejected,
    every rejection with its location and reason code) and ``manifest.json`` (sources, counts,
    split sizes, config hash, versions). A previous output in the same directory is replaced
    only once the new one is complete.

    Raises ``PrepareError`` (bad row under ``data.strict``, no usable rows), ``SourceError``
    (a source cannot be read) or ``ConfigError``.
    """
    cfg.validate()
    if not cfg.prepare.sources:
        raise ConfigError("prepare.sources: give at least one source (a path, glob or hub dataset name)")
    if cfg.prepare.hub_repo_id:  # before reading a row, not after writing them all
        log.info("prepare: pushing to %s as %s", cfg.prepare.hub_repo_id,
                 check_push_credentials(cfg.prepare.hub_repo_id, "prepare.hub_repo_id"))
    out = _output_dir(cfg)
    tokenizer = load_tokenizer(cfg)
    validator = RowValidator(cfg.data, tokenizer, get_family(cfg.model.family).default_prompt,
                             PageStyle.from_config(cfg.prepare), cfg.prepare.max_pages, embed=True)
    reports = [PrepareReport(source=s) for s in cfg.prepare.sources]
    ids: list[str] = []

    def generate():
        for spec, report in zip(cfg.prepare.sources, reports, strict=True):
            for row in read_rows(spec, cfg.data, validator, report, cfg.prepare.source_split, progress):
                ids.append(row["id"])
                yield row
                if report.kept == cfg.prepare.max_rows:
                    report.stopped_early = True
                    break

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the kit's own bars say what is happening
    try:
        try:
            # A fresh cache directory and an explicit fingerprint: nothing stale is reused, and
            # datasets does not hash the validator (with its tokenizer) to name the cache.
            ds = datasets.Dataset.from_generator(generate, features=FEATURES, cache_dir=str(partial / "cache"),
                                                 fingerprint=hashlib.sha256(str(partial).encode()).hexdigest()[:16])
        except datasets.exceptions.DatasetGenerationError as e:
            if isinstance(e.__cause__, (PrepareError, SourceError, FileNotFoundError)):
                raise e.__cause__ from None
            raise
        except ValueError:
            if ids:
                raise
            ds = None  # datasets refuses an empty split; reported below with the rejections
        total = PrepareResult(out, reports, {}, config_hash(cfg))
        if not ids or ds is None:
            raise PrepareError("no usable rows\n" + total.summary())
        sizes = {"test": cfg.prepare.test_size, "validation": cfg.prepare.validation_size}
        names = assign_splits(ids, sizes, cfg.prepare.split_salt)
        wanted = ["train"] + [n for n in ("validation", "test") if sizes[n] > 0]
        for name in [n for n in wanted if n not in names]:
            if name == "train":
                raise PrepareError(f"no rows left for training: all {len(names)} went to validation/test; lower "
                                   "prepare.validation_size / prepare.test_size")
            # datasets cannot save an empty split; a small source rounds a fractional size down to 0 rows
            log.warning("prepare: the %s split is empty (%d rows, prepare.%s_size=%s): left out", name, len(names),
                        name, sizes[name])
            wanted.remove(name)
        dd = datasets.DatasetDict({n: ds.select([i for i, s in enumerate(names) if s == n]) for n in wanted})
        dd.save_to_disk(str(partial / "dataset"))
        splits = {n: len(dd[n]) for n in wanted}
        del dd, ds
        shutil.rmtree(partial / "cache")
        for item in (partial / "dataset").iterdir():  # the DatasetDict at the top of the output directory
            item.rename(partial / item.name)
        (partial / "dataset").rmdir()
        result = PrepareResult(out, reports, splits, total.config_hash)
        (partial / "report.json").write_text(json.dumps({
            "read": result.read, "kept": result.kept, "rejected": result.rejected, "splits": splits,
            "sources": [r.to_dict() for r in reports]}, indent=2, ensure_ascii=False))
        (partial / "manifest.json").write_text(json.dumps({
            "kind": PREPARED_KIND,
            "created_at": datetime.now().isoformat(timespec="seconds"),
            "sources": [{"source": r.source, "source_type": r.source_type, "read": r.read, "kept": r.kept,
                         "rejected": r.rejected} for r in reports],
            "splits": splits,
            "config_hash": result.config_hash,
            "config": {"data": dataclasses.asdict(cfg.data), "prepare": dataclasses.asdict(cfg.prepare),
                       "model": {k: getattr(cfg.model, k) for k in ("family", "name_or_path", "revision")}},
            "versions": package_versions(),
            "git_commit": git_commit(),
        }, indent=2, ensure_ascii=False))
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if bars:
            datasets.enable_progress_bars()
    for report in reports:
        (log.warning if report.rejected else log.info)("prepare %s", report.summary())
    if cfg.prepare.hub_repo_id:
        datasets.load_from_disk(str(out)).push_to_hub(cfg.prepare.hub_repo_id, private=cfg.prepare.hub_private,
                                                       commit_message=f"deepsynth-ocr prepare (config {result.config_hash})")
        log.info("prepare: pushed %s to %s (splits %s)", out, cfg.prepare.hub_repo_id, result.splits)
    return result
