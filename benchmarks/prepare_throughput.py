"""Prepare throughput and memory on a Parquet source of rendered text lines.

Renders N line images (default 20,000) into a Parquet file of image bytes, then runs
``deepsynth_ocr.data.prepare.prepare`` on it in a fresh process and prints, measured in that one
run: samples per second, peak RSS (``getrusage``), and the ratio of peak RSS to the 2 GB budget.

    python benchmarks/prepare_throughput.py [--n 20000] [--out benchmarks/out/prepare]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import time
from pathlib import Path

BUDGET_MB = 2048
WORDS = ("invoice total amount date paid order number customer address street city account balance "
         "تاریخ مبلغ شماره حساب نشانی").split()

CHILD = r"""
import json, resource, sys, time
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.jobs.prepare import load_tokenizer, prepare

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

cfg = RunConfig()
cfg.prepare.sources = [sys.argv[1]]
cfg.prepare.output_dir = sys.argv[2]
cfg.prepare.validation_size = 0.05
start = time.perf_counter()
load_tokenizer(cfg)  # one-time import of the model libraries (about 10 s here), kept out of the rate
imports = time.perf_counter() - start
before = rss_mb()
start = time.perf_counter()
result = prepare(cfg, progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "import_seconds": imports, "read": result.read, "kept": result.kept, "splits": result.splits,
                  "rss_after_imports_mb": before,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_parquet(path: Path, n: int, seed: int = 0) -> float:
    """Render ``n`` line images into ``path`` (row groups of 500); returns samples per second."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepsynth_ocr.data.documents import PageStyle, render_block

    rng = random.Random(seed)
    style = PageStyle(dpi=100)
    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("text", pa.string())])
    start = time.perf_counter()
    with pq.ParquetWriter(path, schema) as writer:
        for group in range(0, n, 500):
            ids, images, texts = [], [], []
            for i in range(group, min(n, group + 500)):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
                buf = io.BytesIO()
                render_block(text, style).save(buf, format="PNG")
                ids.append(f"line{i:06d}")
                images.append(buf.getvalue())
                texts.append(text)
            writer.write_table(pa.table({"id": ids, "image": images, "text": texts}, schema=schema))
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--out", default="benchmarks/out/prepare")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = out / f"lines_{args.n}.parquet"
    if not source.is_file():
        rate = write_parquet(source, args.n)
        print(f"rendered {args.n} line images into {source} ({source.stat().st_size / 1e6:.1f} MB): {rate:.0f} samples/s")
    child = subprocess.run([sys.executable, "-c", CHILD, str(source), str(out / "prepared")],
                           capture_output=True, text=True)
    if child.returncode:
        sys.exit(f"prepare failed:\n{child.stderr[-3000:]}")
    m = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"prepare: {m['kept']} of {m['read']} rows kept in {m['seconds']:.1f} s = {m['kept'] / m['seconds']:.0f} samples/s "
          f"(plus {m['import_seconds']:.1f} s one-time library import); splits {m['splits']}")
    print(f"peak RSS {m['peak_rss_mb']:.0f} MB (after imports {m['rss_after_imports_mb']:.0f} MB); "
          f"peak / {BUDGET_MB} MB budget = {m['peak_rss_mb'] / BUDGET_MB:.2f} -> {'OK' if m['peak_rss_mb'] < BUDGET_MB else 'OVER BUDGET'}")


if __name__ == "__main__":
    import record  # benchmarks/record.py, beside this script

    record.main("prepare_throughput", main)
