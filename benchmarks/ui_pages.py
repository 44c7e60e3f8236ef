"""How long the jobs UI's pages take with 200 runs listed (target: every page under 1 s), and the error-analysis
page over an evaluation of 2,000 rows (target: under 1 s).

Builds the 200 run directories of ``runs_list.py`` (two of them with 2,000 eval rows each), starts ``deepsynth-ocr
ui`` over them, and measures in this one run: each page's server time over HTTP (median of 10; the error page's
first, uncached request too), and in headless Chromium the time from navigation to the runs table showing all 200
rows (median of 5).

    python benchmarks/ui_pages.py [--n 200] [--out benchmarks/out/ui_pages]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0


def main() -> None:
    import httpx
    from runs_list import build  # beside this script

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/out/ui_pages")
    ap.add_argument("--eval-rows", type=int, default=2000)
    args = ap.parse_args()
    root = Path(args.out)
    build(root, args.n)
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    for name, seed in ((names[1], 1), (names[2], 2)):
        eval_rows(root / name, args.eval_rows, seed)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "deepsynth_ocr.cli", "ui", "--root", str(root), "--port", str(port)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                httpx.get(url + "/api/runs", timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        errors = f"/runs/{names[1]}/errors"
        start = time.perf_counter()
        assert httpx.get(url + errors, timeout=30).status_code == 200
        cold = time.perf_counter() - start
        print(f"{'error analysis, first request':28s} {cold * 1000:7.1f} ms ({args.eval_rows} eval rows parsed and sorted)")
        pages = {"/": "runs list page", "/api/runs": "runs list data (200 rows)", f"/runs/{names[1]}": "a run page",
                 f"/compare?run={names[1]}&run={names[2]}": "compare two runs", "/launch": "launch form",
                 errors: f"errors, {args.eval_rows} rows", f"{errors}?kind=error&vs={names[2]}": "errors vs another run",
                 f"{errors}.csv?vs={names[2]}": "errors CSV export, all rows"}
        print(f"{args.n} run directories, one UI process, loopback")
        worst = cold
        for path, what in pages.items():
            times = []
            for _ in range(10):
                start = time.perf_counter()
                assert httpx.get(url + path, timeout=30).status_code == 200
                times.append(time.perf_counter() - start)
            worst = max(worst, statistics.median(times))
            print(f"{what:28s} {statistics.median(times) * 1000:7.1f} ms (median of 10)")
        browser = _browser_load(url, args.n)
        print(f"{'runs list in Chromium':28s} {browser * 1000:7.1f} ms from navigation to {args.n} rows shown (median of 5)")
        print(f"slowest: {max(worst, browser):.3f} s ({max(worst, browser) / TARGET_S:.2f} of the {TARGET_S:g} s target)")
    finally:
        server.terminate()
        server.wait(timeout=30)


def eval_rows(run_dir: Path, n: int, seed: int) -> None:
    """``eval/after.jsonl`` of ``n`` scored rows: references of 20-60 characters, a reading with a few edits."""
    import json
    import random

    from deepsynth_ocr.metrics import RAW, SampleScore

    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 "
    (run_dir / "eval").mkdir(exist_ok=True)
    with (run_dir / "eval" / "after.jsonl").open("w") as f:
        for i in range(n):
            ref = "".join(rng.choice(alphabet) for _ in range(rng.randint(20, 60)))
            hyp = "".join(c if rng.random() > 0.1 else rng.choice(alphabet) for c in ref)[: rng.randint(0, len(ref))]
            f.write(json.dumps({"id": f"row{i:05d}", "image": None, "task": "ocr", "reference": ref, "prediction": hyp,
                                **SampleScore.of(ref, hyp, RAW).to_dict()}) + "\n")


def _browser_load(url: str, n: int) -> float:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    times = []
    try:
        for _ in range(5):
            start = time.perf_counter()
            driver.get(url + "/")
            while driver.execute_script("return document.querySelectorAll('#runs tbody tr').length") < n:
                time.sleep(0.005)
            times.append(time.perf_counter() - start)
    finally:
        driver.quit()
    return statistics.median(times)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(ROOT))
    import record  # benchmarks/record.py, beside this script

    record.main("ui_pages", main)
