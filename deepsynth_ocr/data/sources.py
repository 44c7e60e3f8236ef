"""Readers that turn a user's files into raw rows, each tagged with where it came from.

A reader never judges a row: it yields what it found (or why it could not parse it) and leaves
validation to ``prepare``, so every row is either kept or reported there. Readers stream: at most
one batch of rows (Parquet, datasets) or one sample (tar shards) is held in memory at a time.

Tabular readers (JSONL, CSV, Parquet, datasets) map the user's column names to the kit's field
names (``image``, ``text``, ``prompt``, ``id``, ``task``, ``question``, ``answer``, ``summary``);
folder and tar readers produce ``image`` and ``text`` directly.
"""

from __future__ import annotations

import csv
import glob
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from deepsynth_ocr.errors import MissingFileError, UserError

FIELDS = ("image", "text", "prompt", "id", "task", "question", "answer", "summary")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
# WebDataset convention: a sample is every member sharing a key (the path up to the first dot of
# the file name); the rest of the name says what the member holds.
TAR_TEXT_SUFFIXES = ("gt.txt", "txt")
SOURCE_TYPES = ("jsonl", "csv", "parquet", "folder", "webdataset", "hf_disk", "beir", "hub")
BEIR_FILES = ("corpus.jsonl", "queries.jsonl")
_HUB_NAME = re.compile(r"^(hf://)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SourceError(UserError):
    """A whole source cannot be read (not found, unknown kind, unreachable hub); names the source."""


@dataclass
class RawRow:
    """One row as read.

    ``location`` says where (``file:line``, ``file.parquet:row N``, ``shard.tar:key``, an image
    path), ``default_id`` is a stable id for rows without one (``<file name>:<row>``), ``fields``
    holds the kit's field names, ``base_dir`` resolves relative image paths, and ``error`` says why
    the row could not be parsed (``error_reason`` is its reason code).
    """

    location: str
    fields: dict
    base_dir: Path
    default_id: str = ""
    error: str | None = None
    error_reason: str = "unparseable_row"


def columns_from(cfg) -> dict[str, str]:
    """``field -> source column`` from a ``DataConfig``'s ``*_column`` settings, plus the columns its preset's
    converter reads under their own names."""
    from deepsynth_ocr.data.tasks import preset_of, setting

    preset = preset_of(cfg)
    return {name: setting(cfg, f"{name}_column") for name in FIELDS} | {c: c for c in (preset.passthrough if preset else ())}


def _mapped(record: dict, columns: dict[str, str]) -> dict:
    return {name: record[col] for name, col in columns.items() if col in record}


def infer_source_type(spec: str) -> str:
    """The reader for ``spec``: by suffix for files, by content for directories, else a hub name."""
    paths = _expand(spec)
    if not paths:
        if _HUB_NAME.match(spec) and not spec.startswith((".", "/")):
            return "hub"
        raise SourceError(f"{spec}: no such file or directory (and not a hub dataset name 'owner/name')")
    first = paths[0]
    if first.is_dir():
        if any((first / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "hf_disk"
        if all((first / n).is_file() for n in BEIR_FILES):
            return "beir"
        names = [p.name for p in first.iterdir()]
        if any(n.endswith(".tar") for n in names):
            return "webdataset"
        if any(n.endswith(".parquet") for n in names):
            return "parquet"
        return "folder"
    suffix = first.name.lower()
    for kind, suffixes in (("jsonl", (".jsonl", ".ndjson", ".json")), ("csv", (".csv", ".tsv")),
                           ("parquet", (".parquet", ".pq")), ("webdataset", (".tar",))):
        if suffix.endswith(suffixes):
            return kind
    raise SourceError(f"{spec}: cannot tell the source type from the name; set data.source_type to one of {list(SOURCE_TYPES)}")


def _expand(spec: str) -> list[Path]:
    """A path or a glob (``shards/train-*.tar``) as the sorted existing paths it names."""
    if any(c in spec for c in "*?["):
        return [Path(p) for p in sorted(glob.glob(spec))]
    path = Path(spec)
    return [path] if path.exists() else []


def _files(spec: str, suffixes: tuple[str, ...]) -> list[Path]:
    paths = _expand(spec)
    if not paths:
        raise SourceError(f"{spec}: no such file or directory")
    out: list[Path] = []
    for p in paths:
        out += sorted(q for q in p.rglob("*") if q.name.lower().endswith(suffixes)) if p.is_dir() else [p]
    if not out:
        raise SourceError(f"{spec}: no {'/'.join(suffixes)} files found")
    return out


def read_jsonl(path: str | Path, columns: dict[str, str] | None = None) -> Iterator[RawRow]:
    """Rows of a JSONL manifest ``{image, text, prompt?, id?}``; image paths relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"manifest not found: {path}")
    columns = columns or {n: n for n in FIELDS}
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            location, default_id = f"{path}:{lineno}", f"{path.name}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield RawRow(location, {}, path.parent, default_id, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(record, dict):
                yield RawRow(location, {}, path.parent, default_id, f"expected a JSON object, got {type(record).__name__}")
                continue
            yield RawRow(location, _mapped(record, columns), path.parent, default_id)


def read_csv(path: str | Path, columns: dict[str, str]) -> Iterator[RawRow]:
    """Rows of a CSV (or ``.tsv``) file with a header line; empty cells count as absent."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"manifest not found: {path}")
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        header = next(reader, None)
        if not header:
            return
        for record in reader:
            lineno = reader.line_num  # the last physical line of the record (quoted cells can span lines)
            location, default_id = f"{path}:{lineno}", f"{path.name}:{lineno}"
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                yield RawRow(location, {}, path.parent, default_id,
                             f"{len(record)} cells but the header has {len(header)}")
                continue
            cells = {k: v for k, v in zip(header, record, strict=True) if v != ""}
            yield RawRow(location, _mapped(cells, columns), path.parent, default_id)


def read_parquet(spec: str, columns: dict[str, str], batch_size: int = 64) -> Iterator[RawRow]:
    """Rows of Parquet files (a file, a directory or a glob), streamed in small record batches.

    The image column may hold bytes, a path relative to the file, or a ``{bytes, path}`` struct
    (the layout ``datasets`` writes). Only the mapped columns are read.
    """
    import pyarrow.parquet as pq

    for path in _files(spec, (".parquet", ".pq")):
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for a corrupt footer
            yield RawRow(str(path), {}, path.parent, path.name, f"cannot read Parquet file: {e}", "unreadable_file")
            continue
        wanted = [c for c in columns.values() if c in pf.schema_arrow.names]
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=batch_size, columns=sorted(set(wanted))):
                for record in batch.to_pylist():
                    record = {k: v for k, v in record.items() if v is not None}
                    yield RawRow(f"{path}:row {row}", _mapped(record, columns), path.parent, f"{path.name}:{row}")
                    row += 1
        except (OSError, ValueError) as e:  # pyarrow's ArrowIOError / ArrowInvalid on a damaged page
            yield RawRow(f"{path}:row {row}", {}, path.parent, f"{path.name}:{row}",
                         f"cannot read the rest of the file: {e}", "unreadable_file")


def read_folder(spec: str) -> Iterator[RawRow]:
    """Images in a folder tree, each with a sidecar ``<stem>.gt.txt`` or ``<stem>.txt`` transcription.

    An image without a sidecar, and a sidecar without an image, are both reported.
    """
    root = Path(spec)
    if not root.is_dir():
        raise SourceError(f"{spec}: not a directory")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    image_stems = {p.with_suffix("") for p in images}
    used: set[Path] = set()
    for image in images:
        rel = image.relative_to(root).as_posix()
        sidecars = [image.with_name(image.stem + s) for s in (".gt.txt", ".txt")]
        sidecar = next((s for s in sidecars if s.is_file()), None)
        if sidecar is None:
            yield RawRow(str(image), {"image": image.name}, image.parent, rel,
                         f"no transcription: expected {sidecars[0].name} or {sidecars[1].name}", "missing_text")
            continue
        used.add(sidecar)
        yield RawRow(str(image), {"image": image.name, "text": sidecar.read_bytes()}, image.parent, rel)
    for sidecar in sorted(root.rglob("*.txt")):
        stem = sidecar.name[: -len(".gt.txt")] if sidecar.name.endswith(".gt.txt") else sidecar.stem
        if sidecar not in used and sidecar.with_name(stem) not in image_stems:
            yield RawRow(str(sidecar), {}, sidecar.parent, sidecar.relative_to(root).as_posix(),
                         f"transcription without an image ({stem}.png/.jpg/... not found)", "missing_image")


def _tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes], str | None]]:
    """``(key, {extension: bytes}, error)`` per sample, streaming the tar in member order."""
    key, members = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, _, name = member.name.rpartition("/")
                stem, _, ext = name.partition(".")
                member_key = f"{directory}/{stem}" if directory else stem
                if member_key != key and key is not None:
                    yield key, members, None
                    members = {}
                key = member_key
                members[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        yield key or "", {}, f"the shard is damaged or cut short inside this sample: {e}"
        return
    if key is not None:
        yield key, members, None
    # tarfile takes a file cut at a 512-byte block boundary for a complete archive; a real one
    # ends in zero blocks, so anything else means samples were lost after the last one read.
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 512))
        if f.read().strip(b"\0"):
            yield "end", {}, "the shard has no end-of-archive marker: it was cut short after the last sample read"


def read_webdataset(spec: str) -> Iterator[RawRow]:
    """Samples of WebDataset ``.tar`` shards: an image member plus a ``.txt``/``.gt.txt`` member per key."""
    for path in _files(spec, (".tar",)):
        for key, members, error in _tar_samples(path):
            location, default_id = f"{path}:{key}", f"{path.name}:{key}"
            if error:
                yield RawRow(location, {}, path.parent, default_id, error, "unreadable_file")
                continue
            image_ext = next((e for e in members if "." + e.rsplit(".", 1)[-1] in IMAGE_SUFFIXES), None)
            text_ext = next((e for e in TAR_TEXT_SUFFIXES if e in members), None)
            if image_ext is None:
                yield RawRow(location, {}, path.parent, default_id,
                             f"no image member for key {key!r} (members: {sorted(members)})", "missing_image")
            elif text_ext is None:
                yield RawRow(location, {}, path.parent, default_id,
                             f"no .txt member for key {key!r} (members: {sorted(members)})", "missing_text")
            else:
                yield RawRow(location, {"image": members[image_ext], "text": members[text_ext]}, path.parent, default_id)


def _records_of_dataset(ds, columns: dict[str, str], where: str, base_dir: Path) -> Iterator[RawRow]:
    import datasets

    image_col = columns["image"]
    # Undecoded images ({bytes, path}) keep memory flat and let prepare see truncated files itself.
    if ds.features and isinstance(ds.features.get(image_col), datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    for i, record in enumerate(ds):
        record = {k: v for k, v in record.items() if v is not None}
        yield RawRow(f"{where}:row {i}", _mapped(record, columns), base_dir, f"{Path(where).name}:{i}")


def read_hf_disk(spec: str, columns: dict[str, str], split: str = "train") -> Iterator[RawRow]:
    """Rows of a directory written by ``datasets.save_to_disk`` (a Dataset, or ``split`` of a DatasetDict)."""
    import datasets

    ds = datasets.load_from_disk(spec)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SourceError(f"{spec}: no split {split!r} (splits: {list(ds)}); set prepare.source_split")
        ds = ds[split]
    yield from _records_of_dataset(ds, columns, spec, Path(spec))


def read_hub(name: str, columns: dict[str, str], split: str = "train") -> Iterator[RawRow]:
    """Rows of a Hugging Face hub dataset, streamed; needs the network."""
    import datasets

    name = name.removeprefix("hf://")
    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:  # hub errors come in many types; the message is what the user needs
        raise SourceError(
            f"{name}: cannot load the hub dataset ({type(e).__name__}: {e}). Without network access, save it "
            "elsewhere with datasets' save_to_disk and prepare that directory."
        ) from None
    yield from _records_of_dataset(ds, columns, f"hub:{name}", Path.cwd())


def read_beir(spec: str, columns: dict[str, str], split: str = "train") -> Iterator[RawRow]:
    """One row per relevant (query, document) pair of a BEIR folder (``corpus.jsonl`` ``{_id, title, text}``,
    ``queries.jsonl`` ``{_id, text}``, ``qrels/<split>.tsv`` ``query-id corpus-id score``; FiQA is published so),
    as the record ``{id: "<query>-<document>", query, title, text}``. Pairs scored 0 are not relevant and are
    skipped; a pair naming a missing query or document is a row error that names it."""
    root = Path(spec)
    qrels = root / "qrels" / f"{split}.tsv"
    if not qrels.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise SourceError(f"{spec}: no qrels/{split}.tsv (has {have}); set prepare.source_split")
    pairs: list[tuple[int, str, str]] = []
    with qrels.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            cells = line.rstrip("\n").split("\t")
            if lineno == 1 and cells[:2] == ["query-id", "corpus-id"] or not line.strip():
                continue
            if len(cells) < 3 or not cells[2].lstrip("-").isdigit():
                pairs.append((lineno, "", f"expected 'query-id<TAB>corpus-id<TAB>score', got {line.strip()!r:.80}"))
            elif int(cells[2]) > 0:
                pairs.append((lineno, cells[0], cells[1]))

    def table(name: str, wanted: set[str]) -> dict[str, dict]:
        out = {}
        with (root / name).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    if str(record.get("_id")) in wanted:
                        out[str(record["_id"])] = record
        return out

    queries = table("queries.jsonl", {q for _, q, _ in pairs})
    corpus = table("corpus.jsonl", {d for _, q, d in pairs if q})
    for lineno, qid, did in pairs:
        location = f"{qrels}:{lineno}"
        if not qid:
            yield RawRow(location, {}, root, error=did)
        elif qid not in queries or did not in corpus:
            missing = f"query {qid!r} is not in queries.jsonl" if qid not in queries else f"document {did!r} is not in corpus.jsonl"
            yield RawRow(location, {}, root, error=missing, error_reason="missing_field")
        else:
            doc = corpus[did]
            record = {"id": f"{qid}-{did}", "query": queries[qid].get("text"), "title": doc.get("title") or "",
                      "text": doc.get("text")}
            yield RawRow(location, _mapped(record, columns), root, f"{qid}-{did}")


def read_source(spec: str, source_type: str, columns: dict[str, str], split: str = "train") -> tuple[str, Iterator[RawRow]]:
    """``(resolved type, rows)`` of one source; ``source_type`` 'auto' infers it from the path."""
    kind = infer_source_type(spec) if source_type == "auto" else source_type
    readers: dict[str, Callable[[], Iterator[RawRow]]] = {
        "jsonl": lambda: (r for p in _files(spec, (".jsonl", ".ndjson", ".json")) for r in read_jsonl(p, columns)),
        "csv": lambda: (r for p in _files(spec, (".csv", ".tsv")) for r in read_csv(p, columns)),
        "parquet": lambda: read_parquet(spec, columns),
        "folder": lambda: read_folder(spec),
        "webdataset": lambda: read_webdataset(spec),
        "hf_disk": lambda: read_hf_disk(spec, columns, split),
        "beir": lambda: read_beir(spec, columns, split),
        "hub": lambda: read_hub(spec, columns, split),
    }
    if kind not in readers:
        raise SourceError(f"{spec}: unknown source type {kind!r}; choose one of {list(SOURCE_TYPES)}")
    return kind, readers[kind]()


def count_rows(spec: str, kind: str) -> int | None:
    """Rows a source holds when that is cheap to know (Parquet metadata), for progress bars."""
    if kind != "parquet":
        return None
    import pyarrow.parquet as pq

    try:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in _files(spec, (".parquet", ".pq")))
    except Exception:  # a corrupt file is reported row-wise by the reader; the bar just has no total
        return None
