"""``make gpu-smoke``: 30 steps of real QLoRA on a GPU, then peak reserved VRAM and seconds per step.

Needs CUDA, the training stack (requirements-training.txt) and hub access for the weights. It
trains on rendered text lines (no dataset download), through the same ``train.run`` as everything
else, so the run directory, manifest and eval files are the usual ones. Never runs in CI.

    python -m deepsynth_ocr.gpu_smoke [--config configs/deepseek-ocr-2-qlora.yaml] [--steps 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.synthetic import random_strings, write_sample_set
from deepsynth_ocr.gpu_proof import measured_run


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
    print(describe(measured_run(cfg)))
    return 0


def describe(r: dict) -> str:
    """What ``measured_run`` found, in three lines: memory and speed, CER, the run directory."""
    gib = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    steady = "n/a (fewer steps than the warm-up)" if r["steady_s_per_step"] is None else f"{r['steady_s_per_step']:.3f}"
    lines = [f"backend {r['backend']} | {r['device']} | training peak VRAM reserved {gib(r['peak_reserved_gib'])} GiB "
             f"(allocated {gib(r['peak_allocated_gib'])}) | steady {steady} s/step, {r['s_per_step_whole_run']:.3f} "
             f"over the whole run of {r['steps']} steps"]
    if r["cer_before"] is not None and r["cer_after"] is not None:
        lines.append(f"CER before {r['cer_before']:.4f} -> after {r['cer_after']:.4f}")
    lines.append(f"run directory: {r['run_dir']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
