"""Two ratios, measured in one run on this machine:

1. Throughput of batched evaluation (batch 16) over per-image generation (batch 1), on the smoke
   config's model (the bundled tiny base) and eval rows (the smoke domain), same rows, same token
   bound, same greedy decoding (the predictions must be identical).
   The two modes run interleaved in rounds so load from other processes hits both alike; the best
   round of each is compared. Target: >= 8x.
2. Evaluation wall time over training wall time for the smoke config (``configs/smoke.yaml``, W&B
   off): eval before + after, and the periodic eval inside training, from the run's manifest.

    python benchmarks/eval_throughput.py [--rows 32] [--rounds 2] [--skip-train]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from deepsynth_ocr.config import EvalConfig, RunConfig
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.evaluate import generate, max_new_tokens_for
from deepsynth_ocr.models.backends import load_base

ROOT = Path(__file__).resolve().parents[1]


def eval_ratio(cfg: RunConfig, n_rows: int, rounds: int) -> None:
    model, processor, family = load_base(cfg)
    model.eval()
    ds, _ = prepare_manifest(cfg.data.eval_path, cfg.data, processor.tokenizer, family.default_prompt)
    rows = [ds[i % len(ds)] for i in range(n_rows)]
    bound = max_new_tokens_for([r["text"] for r in rows], processor.tokenizer, EvalConfig())
    generate(model, processor, family, rows[:2], EvalConfig(batch_size=2), bound)  # warm-up
    best = {1: float("inf"), 16: float("inf")}
    texts = {}
    for _ in range(rounds):
        for batch_size in (1, 16):
            start = time.perf_counter()
            preds = generate(model, processor, family, rows, EvalConfig(batch_size=batch_size), bound)
            best[batch_size] = min(best[batch_size], time.perf_counter() - start)
            texts[batch_size] = [p.text for p in preds]
    same = texts[1] == texts[16]
    print(f"eval throughput ({n_rows} rows, {bound} new tokens max, best of {rounds} rounds):")
    print(f"  per-image : {n_rows / best[1]:7.2f} images/s")
    print(f"  batch 16  : {n_rows / best[16]:7.2f} images/s")
    print(f"  ratio batched / per-image = {best[1] / best[16]:.2f}x (target >= 8x); identical predictions: {same}")


def train_ratio(cfg: RunConfig) -> None:
    from deepsynth_ocr.train import run

    with tempfile.TemporaryDirectory() as tmp:
        cfg.output_root = tmp
        cfg.tracking.wandb = "disabled"
        cfg.eval.baselines = []  # baselines are not the kit's evaluation
        result = run(cfg)
        timings = json.loads((result.run_dir / "manifest.json").read_text())["timings"]
    train = timings["train_s"]
    periodic = timings.get("eval_periodic_s", 0.0)
    evals = timings.get("eval_before_s", 0.0) + timings.get("eval_after_s", 0.0)
    print(f"smoke config ({cfg.train.max_steps} steps): train {train:.1f} s (periodic eval inside it: {periodic:.1f} s), "
          f"eval before + after {evals:.1f} s")
    print(f"  ratio eval / train = {evals / train:.3f}; with periodic eval = {(evals + periodic) / (train - periodic):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-train", action="store_true", help="only the batched / per-image ratio")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.data.train_path = str(ROOT / cfg.data.train_path)
    cfg.data.eval_path = str(ROOT / cfg.data.eval_path)
    eval_ratio(cfg, args.rows, args.rounds)
    if not args.skip_train:
        train_ratio(cfg)


if __name__ == "__main__":
    main()
