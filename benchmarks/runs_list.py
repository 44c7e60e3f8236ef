"""How long `deepsynth-ocr runs` takes on a runs folder of 200 run directories (target: under 1 s).

Builds 200 run directories shaped like real ones (a finished training run's manifest, a 300-line
metrics.jsonl, checkpoints, a console log; a quarter of them running under a live or a dead holder,
plus sweeps), then measures, in this one run: the whole command as a user types it (a fresh Python
process, start-up included; median of 5) and ``runs.list_runs`` in-process (median of 20).

    python benchmarks/runs_list.py [--n 200] [--out benchmarks/out/runs_list]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0


def build(root: Path, n: int) -> None:
    from deepsynth_ocr.runs import update_manifest

    shutil.rmtree(root, ignore_errors=True)
    metrics = "".join(json.dumps({"step": s, "loss": 1.0 / s, "learning_rate": 4e-3, "grad_norm": 0.5}) + "\n"
                      for s in range(1, 301))
    for i in range(n):
        kind = "sweep" if i % 20 == 0 else "train"
        run_dir = root / f"run{i:03d}_20261201_{i:06d}"
        (run_dir / "checkpoints" / "checkpoint-300").mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text(metrics)
        (run_dir / "console.log").write_text("2026-12-01 10:00:00 INFO deepsynth_ocr: step\n" * 400)
        running = i % 4 == 0
        update_manifest(run_dir, name=f"run{i:03d}", kind=kind, status="running" if running else "ok",
                        created_at=f"2026-12-01T10:{i // 60:02d}:{i % 60:02d}", versions={"torch": "2.13.0"},
                        progress={"step": 300, "max_steps": 300}, trials={"wanted": 8, "done": 3},
                        metrics={"before": {"cer": 0.6}, "after": {"cer": 0.1}, "steps": 300})
        if running:  # half under this process (alive), half under a pid that is gone
            pid = os.getpid() if i % 8 == 0 else 2**22 + i
            (run_dir / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/out/runs_list")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from deepsynth_ocr.runs import list_runs

    root = Path(args.out)
    build(root, args.n)
    command = [sys.executable, "-m", "deepsynth_ocr.cli", "runs", "--root", str(root)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    walls = []
    for _ in range(5):
        start = time.perf_counter()
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - start)
    listed = len(out.stdout.splitlines()) - 1
    calls = []
    for _ in range(20):
        start = time.perf_counter()
        runs = list_runs(root)
        calls.append(time.perf_counter() - start)
    wall, call = statistics.median(walls), statistics.median(calls)
    print(f"{args.n} run directories ({sum(r.kind == 'sweep' for r in runs)} sweeps, "
          f"{sum(r.status == 'died' for r in runs)} died, {sum(r.status == 'running' for r in runs)} running)")
    print(f"`deepsynth-ocr runs`, a fresh process: {wall:.3f} s median of 5, {listed} rows "
          f"({wall / TARGET_S:.2f} of the {TARGET_S:g} s target)")
    print(f"runs.list_runs in-process: {call * 1000:.1f} ms median of 20 ({call / args.n * 1e6:.0f} us per run)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import record  # benchmarks/record.py, beside this script

    record.main("runs_list", main)
