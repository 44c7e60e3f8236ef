"""``make gpu-smoke``: 30 steps of real QLoRA on a GPU, then peak VRAM and seconds per step.

Needs CUDA, the training stack (requirements-training.txt) and hub access for the weights. It
trains on rendered text lines (no dataset download), through the same ``train.run`` as everything
else, so the run directory, manifest and eval files are the usual ones. Never runs in CI.

    python -m deepsynth_ocr.gpu_smoke [--config configs/deepseek-ocr-2-qlora.yaml] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.synthetic import random_strings, write_sample_set
from deepsynth_ocr.train import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepsynth_ocr.gpu_smoke", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/deepseek-ocr-2-qlora.yaml", help="GPU recipe to run")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps")
    ap.add_argument("--rows", type=int, default=128, help="rendered training rows (plus 16 for evaluation)")
    ap.add_argument("--output-root", default="runs", help="where the run directory goes")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-smoke: no CUDA device; this target needs an NVIDIA GPU (it never runs in CI)", file=sys.stderr)
        return 2
    cfg = RunConfig.from_yaml(args.config)
    data_dir = Path(args.output_root) / "gpu-smoke-data"
    manifests = write_sample_set(data_dir, {"train": random_strings(args.rows, seed=1, min_len=4, max_len=24),
                                            "eval": random_strings(16, seed=2, min_len=4, max_len=24)})
    cfg.name, cfg.output_root = f"gpu-smoke-{cfg.name}", args.output_root
    cfg.data.train_path, cfg.data.eval_path = str(manifests["train"]), str(manifests["eval"])
    cfg.train.max_steps, cfg.train.save_steps, cfg.train.logging_steps = args.steps, 0, 1
    cfg.validate()
    torch.cuda.reset_peak_memory_stats()
    result = run(cfg)
    timings = json.loads((result.run_dir / "manifest.json").read_text())["timings"]
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"backend {result.loaded.backend} | {torch.cuda.get_device_name()} | peak VRAM {peak:.2f} GiB | "
          f"{timings['train_s'] / args.steps:.2f} s/step over {args.steps} steps")
    if result.before and result.after:
        print(f"CER before {result.before.get('cer', float('nan')):.4f} -> after {result.after.get('cer', float('nan')):.4f}")
    print(f"run directory: {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
