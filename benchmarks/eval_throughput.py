"""Two ratios, measured in one run on this machine:

1. Throughput of batched evaluation (batch 16) over per-image generation, same rows, same token
   bound, same greedy decoding (the predictions must be identical). Per-image generation is measured
   two ways: the kit's evaluation at batch 1, and the plain loop of the transformers docs (one
   processor call and one ``generate()`` per image). The three run interleaved in rounds so load
   from other processes hits them alike; the best round of each is compared. Target: >= 8x.
   - First on the smoke config's own eval: the bundled tiny base reading the smoke domain's 4-character
     codes, stopping at EOS after about 5 tokens.
   - Then the same model and images with EOS suppressed (``min_new_tokens``) so every row generates
     exactly N tokens, N = 16, 32, 64: a text line is 30-80 byte tokens for this tokenizer, so this
     is the evaluation cost of line OCR, which the tiny base cannot read but whose per-token cost it
     has. The ratio depends on the output length, because batching amortises per-step overhead
     (decoding) but only packs the prompt prefill and vision arithmetic better; the sweep shows where
     the target is and is not reached.
   - ``--random-model`` repeats both on the random tiny model the tests use (smaller, ~0.4M parameters).
2. Evaluation wall time over training wall time for the smoke config (``configs/smoke.yaml``, W&B
   off): eval before + after, and the periodic eval inside training, from the run's manifest.

    python benchmarks/eval_throughput.py [--rows 32] [--rounds 3] [--lengths 16 32 64] [--random-model] [--skip-train]
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
from pathlib import Path

from deepsynth_ocr.config import EvalConfig, RunConfig
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.evaluate import generate, max_new_tokens_for, plain_generate
from deepsynth_ocr.models.backends import load_base

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


def compare(loaded, rows, bound: int, rounds: int) -> dict:
    """Best-of-``rounds`` images/s of the plain loop, the kit at batch 1 and at batch ``BATCH``,
    interleaved, on the same rows."""
    def kit(batch_size):
        return lambda: generate(loaded, rows, EvalConfig(batch_size=batch_size), bound)

    modes = {"plain": lambda: plain_generate(loaded, rows, bound), "per_image": kit(1), "batched": kit(BATCH)}
    generate(loaded, rows[:2], EvalConfig(batch_size=2), bound)  # warm-up
    best = dict.fromkeys(modes, float("inf"))
    out = {}
    for _ in range(rounds):
        for name, run in modes.items():
            start = time.perf_counter()
            out[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    batched = out["batched"]
    return {**{name: len(rows) / seconds for name, seconds in best.items()},
            "ratio": best["per_image"] / best["batched"], "vs_plain": best["plain"] / best["batched"],
            "tokens": sum(p.n_tokens for p in batched) / len(rows),
            "same": out["plain"] == [p.text for p in out["per_image"]] == [p.text for p in batched]}


def eval_ratio(cfg: RunConfig, n_rows: int, rounds: int, lengths: list[int]) -> None:
    loaded = load_base(cfg)
    model = loaded.model.eval()
    tokenizer = loaded.processor.tokenizer
    ds, _ = prepare_manifest(cfg.data.eval_path, cfg.data, tokenizer, loaded.family.default_prompt)
    rows = [ds[i % len(ds)] for i in range(n_rows)]
    natural = max_new_tokens_for([r["text"] for r in rows], tokenizer, EvalConfig())
    results = [("smoke eval (EOS on)", compare(loaded, rows, natural, rounds))]
    default = copy.deepcopy(model.generation_config)
    try:
        for n in lengths:
            model.generation_config.min_new_tokens = n  # every mode copies it: EOS cannot end a row early
            results.append((f"exactly {n} tokens", compare(loaded, rows, n, rounds)))
    finally:
        model.generation_config = default
    name = cfg.model.name_or_path or "bundled tiny base"
    print(f"\n{name}: {n_rows} rows, best of {rounds} interleaved rounds, images/s")
    print(f"  {'workload':<21}{'tokens/row':>11}{'plain loop':>11}{'kit, 1':>8}{'kit, 16':>9}"
          f"{'16 vs 1':>9}{'16 vs plain':>12}  identical")
    for workload, r in results:
        print(f"  {workload:<21}{r['tokens']:>11.1f}{r['plain']:>11.1f}{r['per_image']:>8.1f}{r['batched']:>9.1f}"
              f"{r['ratio']:>8.2f}x{r['vs_plain']:>11.2f}x  {r['same']}")
    print(f"  target: batch {BATCH} >= 8x per-image")


def train_ratio(cfg: RunConfig) -> None:
    from deepsynth_ocr.jobs.train import train as train_job
    from deepsynth_ocr.runs import RunPaths

    with tempfile.TemporaryDirectory() as tmp:
        cfg.output_root = tmp
        cfg.tracking.wandb = "disabled"
        cfg.eval.baselines = []  # baselines are not the kit's evaluation
        result = train_job(cfg)
        timings = RunPaths(result.run_dir).read_manifest()["timings"]
    train = timings["train_s"]
    periodic = timings.get("eval_periodic_s", 0.0)
    evals = timings.get("eval_before_s", 0.0) + timings.get("eval_after_s", 0.0)
    print(f"smoke config ({cfg.train.max_steps} steps): train {train:.1f} s (periodic eval inside it: {periodic:.1f} s), "
          f"eval before + after {evals:.1f} s")
    print(f"  ratio eval / train = {evals / train:.3f}; with periodic eval = {(evals + periodic) / (train - periodic):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lengths", type=int, nargs="*", default=[16, 32, 64],
                    help="forced output lengths (EOS suppressed) after the smoke eval; none to skip")
    ap.add_argument("--random-model", action="store_true", help="also measure the random tiny model")
    ap.add_argument("--skip-train", action="store_true", help="only the batched / per-image ratios")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.data.train_path = str(ROOT / cfg.data.train_path)
    cfg.data.eval_path = str(ROOT / cfg.data.eval_path)
    eval_ratio(cfg, args.rows, args.rounds, args.lengths)
    if args.random_model:
        random_cfg = copy.deepcopy(cfg)
        random_cfg.model.name_or_path = "random"
        eval_ratio(random_cfg, args.rows, args.rounds, args.lengths)
    if not args.skip_train:
        train_ratio(cfg)


if __name__ == "__main__":
    import record  # benchmarks/record.py, beside this script

    record.main("eval_throughput", main)
