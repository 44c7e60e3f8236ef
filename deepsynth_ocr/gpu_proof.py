"""``make gpu-proof``: the GPU path, run for real on a CUDA machine with no network, on the bundled tiny base.

Two cases of the smoke fine-tune (the bundled tiny DeepSeek-OCR-2 base on the smoke domain), 60
steps each, with the GPU recipes' settings:

- ``hf``: transformers + peft, 4-bit NF4, ``paged_adamw_8bit``, gradient checkpointing, bfloat16;
- ``unsloth``: the same through ``FastVisionModel`` (Unsloth's own 4-bit loading and checkpointing).

Each case runs in a process of its own (``import unsloth`` patches transformers for good, and a crash
must not lose the other case) and records CER before and after, seconds per step, peak reserved VRAM
(what the allocator holds, the paged optimizer's pages included) and the library versions. All of it
goes to one JSON file; the command exits 1 if any case failed.

The machine has no network, so what it lacks travels as wheels, built here::

    python -m deepsynth_ocr.gpu_proof wheels --dest .whl        # PyPI reachable; trims the two big wheels
    make gpu-proof WHEELS=.whl                                   # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("hf", "unsloth")

# What the proof imports that a CUDA image with torch, transformers, peft, accelerate, pandas and pyarrow
# lacks (the lent H200's image, device/KINDS.md), with the versions the kit pins or accepts.
WHEELS = (
    "bitsandbytes==0.50.2", "unsloth==2026.10.9", "unsloth-zoo==2026.10.9", "trl==1.15.0", "datasets==4.8.5",
    "dill==0.4.1", "multiprocess==0.70.19", "jiwer==4.0.0", "rapidfuzz==3.14.6",
    # Unsloth's and Unsloth Zoo's own needs
    "tyro==1.0.17", "docstring-parser==0.18.0", "shtab==1.13.0", "typeguard==4.6.1", "msgspec==0.23.0",
    "torchao==0.18.0", "cut_cross_entropy==25.1.1", "hf_transfer==0.1.9", "diffusers==0.42.1",
    "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
    "json5==0.17.3", "nest-asyncio==1.6.0", "structlog==26.1.0",
)
# One call to the GPU machine carries at most 64 MiB; these members are what the proof never loads.
TRIM = {
    # bitsandbytes ships a library per CUDA, ROCm and XPU release (about 120 MB); the machine's torch is a
    # CUDA 13.x build, and bitsandbytes picks libbitsandbytes_cuda<major><minor>.so from it.
    "bitsandbytes": re.compile(r"bitsandbytes/libbitsandbytes_(cuda(?!13\d)\d+|rocm\d+|xpu\d+)\.so$"),
    # Unsloth Studio, a web app (82 MB unpacked).
    "unsloth": re.compile(r"^studio/"),
}
PIP_PLATFORM = ["--python-version", "3.12", "--implementation", "cp"] + [
    f for tag in ("manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                  "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
    for f in ("--platform", tag)]


def trim_wheel(path: Path, drop: re.Pattern) -> int:
    """Rewrite the wheel at ``path`` without the members ``drop`` matches (and their RECORD lines); returns bytes saved."""
    before = path.stat().st_size
    tmp = path.with_suffix(".trimmed")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if drop.search(info.filename):
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if not drop.search(line.split(",", 1)[0])).encode()
            dst.writestr(info, data)
    tmp.replace(path)
    return before - path.stat().st_size


def build_wheels(dest: Path) -> list[Path]:
    """Download ``WHEELS`` for the GPU machine's Python 3.12 / x86-64 and trim the large ones."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    *PIP_PLATFORM, "--dest", str(dest), *WHEELS], check=True)
    wheels = sorted(dest.glob("*.whl"))
    for wheel in wheels:
        name = wheel.name.split("-", 1)[0].lower()
        if name in TRIM:
            print(f"{wheel.name}: trimmed {trim_wheel(wheel, TRIM[name]) / 2**20:.1f} MiB")
    print(f"{len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 2**20:.1f} MiB in {dest}")
    return wheels


def case_config(case: str, steps: int, output_root: str):
    """The smoke config with the GPU recipes' training settings, for backend ``case``."""
    from deepsynth_ocr.config import RunConfig

    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.name, cfg.output_root = f"gpu-proof-{case}", output_root
    cfg.model.backend, cfg.model.dtype = case, "bfloat16"
    cfg.model.load_in_4bit = cfg.model.gradient_checkpointing = True
    cfg.train.optim, cfg.train.max_steps, cfg.train.logging_steps = "paged_adamw_8bit", steps, 10
    cfg.train.save_steps = max(1, steps // 2)  # a checkpoint mid-run: saving works on the GPU too
    cfg.eval.every_steps, cfg.eval.baselines = 0, []  # s/step measures training alone; no OCR engines there
    cfg.tracking.wandb = "disabled"
    return cfg.validate()


def measured_run(cfg) -> dict:
    """Train ``cfg`` through ``train.run``; CER before/after, s/step and peak VRAM of that run."""
    import torch

    from deepsynth_ocr.jobs.train import train
    from deepsynth_ocr.runs import RunPaths, package_versions

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(cfg)
    manifest = RunPaths(result.run_dir).read_manifest()
    return {
        "backend": manifest["backend"], "dtype": manifest["dtype"], "steps": cfg.train.max_steps,
        "cer_before": (result.before or {}).get("cer"), "cer_after": (result.after or {}).get("cer"),
        "train_loss": result.train_loss,
        "s_per_step": round(manifest["timings"]["train_s"] / cfg.train.max_steps, 4),
        # reserved, not allocated: the allocator's cache and the paged optimizer's pages count against the card
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if cuda else None,
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_cuda": torch.version.cuda,
        "parameters": manifest["parameters"],
        "versions": package_versions(),
        "run_dir": str(result.run_dir),
    }


def run_case_in_subprocess(case: str, steps: int, output_root: str, allow_cpu: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "case.json"
        cmd = [sys.executable, "-m", "deepsynth_ocr.gpu_proof", "case", case, "--steps", str(steps),
               "--output-root", output_root, "--json", str(out)] + (["--allow-cpu"] if allow_cpu else [])
        # The hf case runs on transformers as released; only the unsloth case imports Unsloth.
        env = {**os.environ, "DEEPSYNTH_SKIP_UNSLOTH": "1" if case == "hf" else "0"}
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if proc.returncode == 0 and out.is_file():
            return {"status": "ok", **json.loads(out.read_text()), "wall_s": round(time.time() - start, 1)}
        return {"status": "failed", "returncode": proc.returncode, "wall_s": round(time.time() - start, 1),
                "error": (proc.stderr or proc.stdout)[-4000:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepsynth_ocr.gpu_proof", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wheels", help="download and trim the wheels the GPU machine lacks")
    p.add_argument("--dest", default=".whl")
    p = sub.add_parser("run", help="run every case, each in its own process, into one JSON file")
    p.add_argument("--out", default="docs/gpu_proof.json")
    p.add_argument("--cases", default=",".join(CASES))
    for q in (p, case := sub.add_parser("case", help="one case in this process (what `run` calls)")):
        q.add_argument("--steps", type=int, default=60)
        q.add_argument("--output-root", default="runs")
        q.add_argument("--allow-cpu", action="store_true", help="tests only: run without CUDA")
    case.add_argument("name", choices=CASES)
    case.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    if args.command == "wheels":
        build_wheels(Path(args.dest))
        return 0
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu-proof: no CUDA device; this proof needs an NVIDIA GPU", file=sys.stderr)
        return 2
    if args.command == "case":
        Path(args.json).write_text(json.dumps(measured_run(case_config(args.name, args.steps, args.output_root))))
        return 0
    results = {name: run_case_in_subprocess(name, args.steps, args.output_root, args.allow_cpu)
               for name in args.cases.split(",")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cases": results, "steps": args.steps}, indent=2) + "\n")
    for name, r in results.items():
        if r["status"] == "ok":
            print(f"{name}: CER {r['cer_before']:.4f} -> {r['cer_after']:.4f}, {r['s_per_step']:.3f} s/step, "
                  f"peak reserved {r['peak_reserved_gib']} GiB on {r['device']}")
        else:
            print(f"{name}: FAILED ({r['returncode']}): {r['error'].strip().splitlines()[-1] if r['error'].strip() else ''}")
    print(f"results: {args.out}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
