"""Classical OCR engines scored on the same eval set, so a user sees whether fine-tuning beat them.

Both are optional and detected at run time; a missing one is skipped with a logged notice:
- ``tesseract``: Debian's ``tesseract-ocr`` (+ ``tesseract-ocr-<lang>``), run as a subprocess in
  single-line mode (``--psm 7``). The tesserocr wheel bundles another Tesseract build that reads
  Persian much worse, so the kit calls the system binary.
- ``rapidocr``: PP-OCR models shipped inside the ``rapidocr`` wheel (+ ``onnxruntime``), run offline
  with recognition only: the eval rows are line images, and detection would cost speed and accuracy.
  Only its bundled (Chinese/English) recogniser is used; other languages would need a download.

Both are deterministic, so their readings are kept by image content, engine version and settings under the kit's
cache (``eval.baseline_cache``): a sweep's trials and repeated fine-tunes on one eval set run each engine once.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from deepsynth_ocr.cache import cache_root
from deepsynth_ocr.config import EvalConfig
from deepsynth_ocr.evaluate import Prediction, eval_rows, score_and_write

log = logging.getLogger(__name__)


@dataclass
class Engine:
    name: str
    recognize: Callable  # PIL image -> text
    identity: str  # what a reading depends on besides the pixels (version, settings): the cache's key


def _tesseract(cfg: EvalConfig) -> Engine | str:
    binary = shutil.which("tesseract")
    if binary is None:
        return "the tesseract binary is not installed (Debian: apt-get install tesseract-ocr; `make setup` does it)"
    listed = subprocess.run([binary, "--list-langs"], capture_output=True, text=True).stdout.split()
    missing = [lang for lang in cfg.tesseract_lang.split("+") if lang not in listed]
    if missing:
        return f"tesseract has no language data for {missing} (Debian: tesseract-ocr-{missing[0]})"

    def recognize(image) -> str:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        out = subprocess.run([binary, "stdin", "stdout", "--psm", "7", "-l", cfg.tesseract_lang],
                             input=buf.getvalue(), capture_output=True, check=True)
        return out.stdout.decode("utf-8").strip()

    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return Engine("tesseract", recognize, f"{version} --psm 7 -l {cfg.tesseract_lang}")


def _rapidocr(cfg: EvalConfig) -> Engine | str:
    for module in ("rapidocr", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            return f"the {module} package is not installed (pip install rapidocr onnxruntime)"
    # onnxruntime otherwise writes a telemetry device id under ~/.cache/Microsoft.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import numpy as np
    from rapidocr import RapidOCR

    engine = RapidOCR()

    def recognize(image) -> str:
        out = engine(np.asarray(image.convert("RGB")), use_det=False, use_cls=False, use_rec=True)
        return " ".join(out.txts or ())

    versions = {m: importlib.metadata.version(m) for m in ("rapidocr", "onnxruntime")}
    return Engine("rapidocr", recognize, f"{versions} recognition only")


ENGINES = {"tesseract": _tesseract, "rapidocr": _rapidocr}


def available_engines(cfg: EvalConfig) -> list[Engine]:
    """The engines in ``eval.baselines`` that can run here; each missing one is logged with how to get it."""
    out = []
    for name in cfg.baselines:
        found = ENGINES[name](cfg)
        if isinstance(found, str):
            log.warning("baseline %s skipped: %s", name, found)
        else:
            out.append(found)
    return out


class Readings:
    """An engine's earlier readings by image content: a JSONL file under ``<cache>/baselines/``, one file per engine
    identity. Each new reading is appended as one whole line in one write, so runs in parallel may share the file;
    a line cut short (a killed writer) is skipped. A cache that cannot be written is reported once and bypassed."""

    def __init__(self, engine: Engine):
        key = hashlib.sha256(engine.identity.encode()).hexdigest()[:16]
        self.path = cache_root() / "baselines" / f"{engine.name}-{key}.jsonl"
        self.known: dict[str, str] = {}
        self.hits, self.writable = 0, True
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    self.known[record["image"]] = record["text"]
                except (ValueError, KeyError, TypeError):
                    continue

    def read(self, image, recognize: Callable) -> str:
        digest = hashlib.sha256(f"{image.mode} {image.size}".encode() + image.tobytes()).hexdigest()
        if digest in self.known:
            self.hits += 1
            return self.known[digest]
        text = self.known[digest] = recognize(image)
        if self.writable:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"image": digest, "text": text}, ensure_ascii=False) + "\n")
            except OSError as e:
                log.warning("baseline cache %s not written (%s): readings are not kept for later runs", self.path, e)
                self.writable = False
        return text


def run_baselines(dataset, cfg: EvalConfig, eval_dir: Path) -> dict[str, dict]:
    """Score each available engine on ``dataset``; per-sample rows in ``eval_dir/baseline_<name>.jsonl``."""
    engines = available_engines(cfg)
    if not engines:
        return {}
    rows = eval_rows(dataset, cfg)
    summaries = {}
    for engine in engines:
        readings = Readings(engine) if cfg.baseline_cache else None
        preds = []
        for row in tqdm(rows, desc=f"baseline {engine.name}", leave=False):
            try:
                text = readings.read(row["image"], engine.recognize) if readings else engine.recognize(row["image"])
            except Exception as e:  # one unreadable image must not hide the engine's other scores
                log.warning("baseline %s failed on %s: %s", engine.name, row["id"], e)
                text = ""
            preds.append(Prediction(text, stopped=True))
        summaries[engine.name] = score_and_write(rows, preds, cfg, eval_dir / f"baseline_{engine.name}.jsonl")
        cached = f", {readings.hits} read from {readings.path.parent}" if readings and readings.hits else ""
        log.info("baseline %s: CER %.4f (n=%d%s)", engine.name, summaries[engine.name]["cer"] or 0.0, len(rows), cached)
    return summaries
