"""Sample persistence for the server: a sampled share of requests kept on disk, with retention and redaction.

Off unless ``serve.samples_dir`` is set. Each kept request is ``<dir>/<YYYY-MM-DD>/<request id>.json``
(request id, time, model, per-stage ms, per image: its size and the text) plus a JPEG thumbnail per
image (``<request id>-<n>.jpg``, longest side 256 px). With ``serve.samples_redact`` a page's text is kept
only as its length and SHA-256, and no thumbnail is written (a picture of a document is its text).
Retention: files older than ``serve.samples_max_age_days`` go first, then the oldest until the folder
is under ``serve.samples_max_mb``; checked at start-up and every ``CHECK_EVERY`` kept requests.

Writing happens off the event loop (the app hands ``keep`` to a worker thread); a failure to write is
logged and counted, never a failed request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from pathlib import Path

from deepsynth_ocr.config import ServeConfig

log = logging.getLogger(__name__)

THUMBNAIL_PX = 256
CHECK_EVERY = 50


class SampleKeeper:
    def __init__(self, cfg: ServeConfig, seed: int | None = None):
        self.dir = Path(cfg.samples_dir)
        self.rate, self.redact = cfg.samples_rate, cfg.samples_redact
        self.max_bytes, self.max_age_s = cfg.samples_max_mb * 2**20, cfg.samples_max_age_days * 86400
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._kept = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self.enforce_retention()
        log.info("serve: keeping %g%% of requests under %s (%s; at most %g MiB, %g days)", 100 * self.rate, self.dir,
                 "text redacted to length and hash, no thumbnails" if self.redact else "thumbnails and text",
                 cfg.samples_max_mb, cfg.samples_max_age_days)

    def chosen(self) -> bool:
        """Whether this request is one of the sampled share."""
        return self.rate >= 1 or self._random.random() < self.rate

    def keep(self, request_id: str, model: str, images: list, texts: list[str], stages_ms: dict) -> Path | None:
        """Write one request's record (and thumbnails); returns the record's path, None when writing failed."""
        try:
            day = self.dir / time.strftime("%Y-%m-%d")
            day.mkdir(exist_ok=True)
            pages = []
            for n, (image, text) in enumerate(zip(images, texts, strict=True)):
                page = {"width": image.width, "height": image.height}
                if self.redact:
                    page |= {"text_chars": len(text), "text_sha256": hashlib.sha256(text.encode()).hexdigest()}
                else:
                    thumb = image.convert("RGB")
                    thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
                    name = f"{request_id}-{n}.jpg"
                    thumb.save(day / name, quality=85)
                    page |= {"text": text, "thumbnail": name}
                pages.append(page)
            record = {"request_id": request_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model,
                      "redacted": self.redact, "stages_ms": stages_ms, "pages": pages}
            path = day / f"{request_id}.json"
            path.write_text(json.dumps(record, ensure_ascii=False, indent=1), encoding="utf-8")
        except OSError as e:
            log.error("serve: could not keep the sample of request %s: %s", request_id, e)
            return None
        with self._lock:
            self._kept += 1
            due = self._kept % CHECK_EVERY == 0
        if due:
            self.enforce_retention()
        return path

    def enforce_retention(self) -> list[Path]:
        """Remove what is past the age limit, then the oldest files until under the size limit; returns them."""
        with self._lock:
            files = sorted(((p.stat(), p) for p in self.dir.rglob("*") if p.is_file()), key=lambda sp: sp[0].st_mtime)
            now, removed = time.time(), []
            total = sum(st.st_size for st, _ in files)
            for st, p in files:  # oldest first
                if now - st.st_mtime > self.max_age_s or total > self.max_bytes:
                    p.unlink(missing_ok=True)
                    total -= st.st_size
                    removed.append(p)
            for day in self.dir.iterdir():
                if day.is_dir() and not any(day.iterdir()):
                    day.rmdir()
        if removed:
            log.info("serve: sample retention removed %d file(s) from %s", len(removed), self.dir)
        return removed
