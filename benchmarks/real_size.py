"""DeepSeek-OCR-2 at its released size and image geometry, through the kit's own jobs, on this CPU.

What it runs (each training run is ``deepsynth-ocr train -c configs/deepseek-ocr-2-real-size-cpu.yaml`` in a
process of its own, on pages rendered at 200 dpi; random weights from ``deepsynth_ocr.models.published``):
1. sweep: three settings (LoRA; LoRA + gradient checkpointing; NF4 4-bit LoRA + checkpointing + paged 8-bit
   AdamW), one step on each of a 0-, a 2- and a 6-tile page, in that order; each step's peak resident memory
   (the high-water mark is reset per step) and seconds, at 12 decoder layers (as released) and at 2;
2. a bfloat16 step at 2 layers, beside the same float32 step: what bfloat16 does to activation memory;
3. kill and resume in 4 bits: a run SIGKILLed after its step-2 checkpoint and resumed against the same run
   uninterrupted; the uninterrupted one trains in this process, so its weights are compared with the checkpoint
   file (vision bit-identical, only LoRA changed) and its losses show one page being learnt;
4. generation: ``evaluate`` and ``infer`` on a 0- and a 2-tile page in one batch (8 new tokens);
5. LoRA against full fine-tuning at real width and vision, at 2 and 3 decoder layers, extrapolated per layer;
then fits the activation model that ``deepsynth_ocr/memory.py`` uses and writes it to
``deepsynth_ocr/memory_cpu.json``.

Float32 compute: this CPU kind has no bfloat16 units (a bfloat16 matmul measured 7.8x slower than float32),
and ``dtype: auto`` picks float32 on a CPU anyway. About 50 minutes on 2 cores; run it with nothing else.

    python benchmarks/real_size.py [--parts sweep,bf16,resume,generate,full] [--layers 12,2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "deepseek-ocr-2-real-size-cpu.yaml"
OUT = ROOT / "benchmarks" / "out" / "real_size"
MEASURED = ROOT / "deepsynth_ocr" / "memory_cpu.json"
SETTINGS = {
    "lora": {"model.load_in_4bit": False, "model.gradient_checkpointing": False, "train.optim": "adamw_torch"},
    "lora-ckpt": {"model.load_in_4bit": False, "model.gradient_checkpointing": True, "train.optim": "adamw_torch"},
    "nf4-lora-ckpt": {"model.load_in_4bit": True, "model.gradient_checkpointing": True, "train.optim": "paged_adamw_8bit"},
}
SWEEP_PAGES = ["label", "cheque", "a4"]  # 0, 2 and 6 tiles
PART_NAMES = ("sweep", "bf16", "resume", "generate", "full")


def sets(overrides: dict) -> list[str]:
    out = []
    for key, value in overrides.items():
        out += ["-s", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "deepsynth_ocr.cli", *args]


def run_logged(cmd: list[str], log: Path, timeout: float) -> tuple[int, float]:
    """Run ``cmd`` in its own process group with its output in ``log``; (exit code, seconds). A timeout kills the
    group and reads 124; a process the kernel killed for memory reads -9."""
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
    return rc, time.perf_counter() - started


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    manifest = run_dir / "manifest.json"
    return [r for r in records if "loss" in r], (json.loads(manifest.read_text()) if manifest.is_file() else {})


def train(name: str, overrides: dict, timeout: float = 1800) -> dict:
    run_dir = OUT / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun's records must not follow an earlier run's in metrics.jsonl
    rc, seconds = run_logged(cli("train", "-c", str(PRESET), *sets(overrides), "--run-dir", str(run_dir)),
                             OUT / f"{name}.log", timeout)
    steps, manifest = read_run(run_dir)
    return {"name": name, "rc": rc, "seconds": round(seconds, 1), "steps": steps, "manifest": manifest, "run_dir": run_dir}


def step_seconds(record: dict) -> float:
    return round(record.get("time/forward_backward_s", 0.0) + record.get("time/optimizer_s", 0.0), 1)


def pages(kinds: list[str], name: str) -> Path:
    from deepsynth_ocr.data.real_pages import write_pages

    return write_pages(OUT / "pages", kinds, seed=0, name=name)


def checkpoint(layers: int) -> Path:
    from deepsynth_ocr.models.published import write_checkpoint

    return write_checkpoint(text_layers=layers)


def base(layers: int) -> dict:
    return {"model.name_or_path": str(checkpoint(layers)), "data.train_path": str(pages(SWEEP_PAGES, "sweep")),
            "data.eval_path": str(pages(SWEEP_PAGES, "sweep"))}


def say(*args) -> None:
    """Progress goes to stderr; stdout is the report that ``record`` writes to docs/benchmarks.md."""
    print(*args, file=sys.stderr, flush=True)


def sweep_tiles() -> list[int]:
    from deepsynth_ocr.data.real_pages import render
    from deepsynth_ocr.models.families import DEEPSEEK_OCR_2_GEOMETRY as geo

    return [geo.tiles(*render(kind)[0].size) for kind in SWEEP_PAGES]


def sweep(layers: int, results: dict) -> None:
    tiles = sweep_tiles()
    results["sweep"] = [r for r in results.get("sweep", []) if r["layers"] != layers]
    results["sweep_failures"] = [r for r in results.get("sweep_failures", []) if r["layers"] != layers]
    for setting, overrides in SETTINGS.items():
        say(f"sweep: {setting} at {layers} layers")
        r = train(f"sweep-{setting}-{layers}L", {**base(layers), **overrides, "train.max_steps": len(SWEEP_PAGES)})
        load = r["manifest"].get("memory", {}).get("rss_after_load_gib")
        load_s = r["manifest"].get("timings", {}).get("load_s")
        if r["rc"] != 0 or len(r["steps"]) < len(SWEEP_PAGES):
            reason = "killed (out of memory?)" if r["rc"] in (-9, 137) else f"exit {r['rc']}"
            results["sweep_failures"].append({"setting": setting, "layers": layers, "reason": reason,
                                              "steps": len(r["steps"]), "log": f"{r['name']}.log"})
        for n, record in zip(tiles, r["steps"], strict=False):
            peak = record.get("mem/peak_rss_gib")
            act = round(peak - load, 3) if peak is not None and load is not None else None
            results["sweep"].append({"setting": setting, "layers": layers, "tiles": n, "load_s": load_s,
                                     "rss_after_load_gib": load, "step_s": step_seconds(record), "peak_rss_gib": peak,
                                     "activation_gib": act, "loss": record["loss"]})


def bf16(results: dict) -> None:
    results["bf16"] = {}
    for dtype in ("bfloat16", "float32"):
        say(f"bf16: {dtype}")
        r = train(f"bf16-{dtype}", {**base(2), **SETTINGS["lora"], "model.dtype": dtype, "train.max_steps": 1})
        load = r["manifest"].get("memory", {}).get("rss_after_load_gib")
        if r["steps"]:
            rec = r["steps"][0]
            results["bf16"][dtype] = {"activation_gib": round(rec["mem/peak_rss_gib"] - load, 3),
                                      "step_s": step_seconds(rec), "rss_after_load_gib": load,
                                      "peak_rss_gib": rec["mem/peak_rss_gib"]}


def uninterrupted(overrides: dict, run_dir: str, out: str) -> None:
    """Train the uninterrupted twin in this process (a child of the benchmark: the 4-bit model holds 13 GiB, and
    the next part's processes need that memory back): the base's bytes are fingerprinted as loaded, compared after
    training, and the comparison written to ``out``."""
    from deepsynth_ocr.config import RunConfig
    from deepsynth_ocr.jobs import train as train_job
    from deepsynth_ocr.models.adapters import base_changes, base_digests

    digests, load_model = {}, train_job.load_model

    def load_and_fingerprint(cfg):  # the base's bytes as loaded, to compare after training
        loaded = load_model(cfg)
        digests.update(base_digests(loaded.model))
        return loaded

    train_job.load_model = load_and_fingerprint
    cfg = RunConfig.load(str(PRESET), [f"{k}={v}" for k, v in overrides.items()])
    result = train_job.train(cfg, run_dir)
    Path(out).write_text(json.dumps(base_changes(digests, result.loaded.model, result.loaded.family)))


def resume(results: dict) -> None:
    overfit = pages(["label"], "overfit")
    row = json.loads(overfit.read_text())
    overfit.write_text("".join(json.dumps({**row, "id": f"{row['id']}-{i}"}) + "\n" for i in range(4)))
    overrides = {"model.name_or_path": str(checkpoint(12)), "data.train_path": str(overfit),
                 "data.eval_path": str(overfit), **SETTINGS["nf4-lora-ckpt"], "train.max_steps": 4,
                 "train.save_steps": 2, "train.learning_rate": 1e-3}
    killed_dir = OUT / "runs" / "resume-killed"
    shutil.rmtree(killed_dir, ignore_errors=True)
    shutil.rmtree(OUT / "runs" / "resume-uninterrupted", ignore_errors=True)
    started = time.perf_counter()
    with (OUT / "resume-killed.log").open("w") as f:
        proc = subprocess.Popen(cli("train", "-c", str(PRESET), *sets(overrides), "--run-dir", str(killed_dir)),
                                stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        marker = killed_dir / "checkpoints" / "checkpoint-2" / "scheduler.pt"
        while proc.poll() is None and not marker.exists():
            time.sleep(2)
        time.sleep(3)  # let the checkpoint's last files land; step 3 is minutes away
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    rc, _ = run_logged(cli("resume", str(killed_dir)), OUT / "resume-resumed.log", 1800)
    resumed, _ = read_run(killed_dir)
    killed_s = round(time.perf_counter() - started)

    uninterrupted_dir, identity_file = OUT / "runs" / "resume-uninterrupted", OUT / "resume-identity.json"
    started = time.perf_counter()
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import real_size; "
            f"real_size.uninterrupted({overrides!r}, {str(uninterrupted_dir)!r}, {str(identity_file)!r})")
    run_logged([sys.executable, "-c", code], OUT / "resume-uninterrupted.log", 1800)
    identity = json.loads(identity_file.read_text()) if identity_file.is_file() else {"error": "see resume-uninterrupted.log"}
    straight, _ = read_run(uninterrupted_dir)
    by_step = {r["step"]: r["loss"] for r in resumed}
    diffs = [abs(r["loss"] - by_step[r["step"]]) for r in straight if r["step"] in by_step]
    results["resume"] = {"uninterrupted": [r["loss"] for r in straight], "resumed": by_step, "resume_rc": rc,
                         "max_diff": max(diffs) if diffs else None, "identity": identity, "killed_and_resumed_s": killed_s,
                         "uninterrupted_s": round(time.perf_counter() - started)}


def generate(results: dict) -> None:
    gen = pages(["label", "cheque"], "generate")
    adapter = OUT / "runs" / "resume-uninterrupted" / "adapter"
    common = {"model.name_or_path": str(checkpoint(12)), **SETTINGS["nf4-lora-ckpt"], "data.eval_path": str(gen),
              "eval.enabled": True, "eval.batch_size": 2, "eval.max_new_tokens": 8, "infer.batch_size": 2,
              "infer.max_new_tokens": 8}
    extra = ["--adapter", str(adapter)] if adapter.is_dir() else []
    rc, seconds = run_logged(cli("evaluate", "-c", str(PRESET), *sets(common), *extra, "--run-dir",
                                 str(OUT / "runs" / "evaluate")), OUT / "evaluate.log", 1800)
    _, manifest = read_run(OUT / "runs" / "evaluate")
    images = [str(p) for p in sorted((OUT / "pages" / "images").glob("generate-*.png"))]
    out = OUT / "infer.jsonl"
    out.unlink(missing_ok=True)
    infer_sets = sets({**common, "infer.adapter": str(adapter)} if extra else common)
    rc2, seconds2 = run_logged(cli("infer", *images, "-o", str(out), "-c", str(PRESET), *infer_sets),
                               OUT / "infer.log", 1800)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    infer_log = (OUT / "infer.log").read_text()
    results["generate"] = {"evaluate_rc": rc, "evaluate_s": round(seconds, 1), "timings": manifest.get("timings"),
                           "adapter": bool(extra), "infer_rc": rc2, "infer_s": round(seconds2, 1),
                           "rows": [{"file": Path(str(r.get("file"))).name, "text": r.get("text"), "n_tokens": r.get("n_tokens"),
                                     "error": r.get("error")} for r in rows],
                           "infer_stages": [line for line in infer_log.splitlines() if "stage" in line.lower()][-3:]}


def full(results: dict) -> None:
    cheque = pages(["cheque"], "full")
    peaks, steps = {}, {}
    for layers in (2, 3):
        for kind, overrides in (("full fine-tune + ckpt", {"lora.enabled": False, **SETTINGS["lora-ckpt"],
                                                           "train.optim": "paged_adamw_8bit"}),
                                ("LoRA + ckpt", SETTINGS["lora-ckpt"])):
            r = train(f"full-{kind.split()[0].lower()}-{layers}L",
                      {"model.name_or_path": str(checkpoint(layers)), "data.train_path": str(cheque),
                       "data.eval_path": str(cheque), **overrides, "train.max_steps": 1})
            rec = r["steps"][0] if r["steps"] else {}
            peak = max(rec.get("mem/peak_rss_gib", 0), r["manifest"].get("memory", {}).get("rss_after_load_gib", 0))
            peaks[(kind, layers)] = peak
            steps[f"{kind}@{layers}"] = step_seconds(rec) if rec else f"exit {r['rc']}"
    lines = {}
    for kind in ("full fine-tune + ckpt", "LoRA + ckpt"):
        per_layer = peaks[(kind, 3)] - peaks[(kind, 2)]
        lines[kind] = {"per_layer_gib": round(per_layer, 3), "at_12_gib": round(peaks[(kind, 2)] + 10 * per_layer, 2)}
    ratio = lines["LoRA + ckpt"]["at_12_gib"] / lines["full fine-tune + ckpt"]["at_12_gib"]
    results["full"] = {"peaks": {f"{k}@{n}": v for (k, n), v in peaks.items()}, "step_s": steps, "per_layer": lines,
                       "ratio_12": round(ratio, 3),
                       "ratio_2": round(peaks[("LoRA + ckpt", 2)] / peaks[("full fine-tune + ckpt", 2)], 3)}


def fit(results: dict) -> dict | None:
    """Activation GiB = a0 + a1 * tiles + a2 * tiles**2 + layers * (b0 + b1 * tiles) per setting, least squares over
    the sweep (the tile term bends upward: the vision tower's transients grow faster than linearly at 6 tiles);
    None until the sweep has two depths for every setting and the bfloat16 comparison has run."""
    import numpy as np

    model = {}
    for setting in SETTINGS:
        rows = [r for r in results.get("sweep", []) if r["setting"] == setting and r["activation_gib"] is not None]
        if len({r["layers"] for r in rows}) < 2 or len(rows) < 4:
            return None
        x = np.array([[1, r["tiles"], r["tiles"] ** 2, r["layers"], r["layers"] * r["tiles"]] for r in rows], dtype=float)
        coef, *_ = np.linalg.lstsq(x, np.array([r["activation_gib"] for r in rows]), rcond=None)
        model[setting] = dict(zip(("a0", "a1", "a2", "b0", "b1"), (round(float(c), 5) for c in coef), strict=True))
    bf = results.get("bf16", {})
    if len(bf) != 2:
        return None
    return {"activation": model, "bf16_over_fp32": round(bf["bfloat16"]["activation_gib"] / bf["float32"]["activation_gib"], 3),
            "rows": results["sweep"], "note": "CPU figures (float32 compute, peak resident memory per step) from "
            "benchmarks/real_size.py; GPU allocators and kernels differ"}


def page_table() -> None:
    """Tokens per page shape: the published rule, through the kit's processor and collator."""
    from deepsynth_ocr.collate import OcrCollator
    from deepsynth_ocr.data.real_pages import KINDS, render
    from deepsynth_ocr.models.families import DEEPSEEK_OCR_2_GEOMETRY as geo
    from deepsynth_ocr.models.families import get_family
    from deepsynth_ocr.models.published import build_processor, build_tokenizer

    family = get_family("deepseek-ocr-2")
    collator = OcrCollator(build_processor(build_tokenizer()), family)
    print("\n### tokens per page shape (200 dpi; the kit's processor and collator, the published-size tokenizer)")
    print("| page | pixels | tiles | image tokens | prompt tokens | answer + EOS | training sequence |\n|---|---|---|---|---|---|---|")
    for kind in KINDS:
        image, text = render(kind)
        batch = collator([{"image": image, "text": text, "prompt": family.default_prompt}])
        tiles = int(batch["num_local_patches"][0])
        answer = int((batch["labels"][0] != -100).sum())
        total = int(batch["attention_mask"][0].sum())
        images = geo.image_tokens(tiles)
        print(f"| {kind} | {image.width} x {image.height} | {tiles} | {images} | {total - images - answer} | {answer} | {total} |")


def report(results: dict, measured: dict | None) -> None:
    page_table()
    tiles = sweep_tiles()
    for layers in sorted({r["layers"] for r in results.get("sweep", [])}, reverse=True):
        print(f"\n### three settings at {layers} decoder layers{' (as released)' if layers == 12 else ''}: one step per page, "
              f"pages of {tiles} tiles in that order, float32 compute, batch 1")
        print("| setting | load s | RSS after load GiB | tiles | step s | peak RSS GiB | activations GiB | loss |")
        print("|---|---|---|---|---|---|---|---|")
        for r in (r for r in results["sweep"] if r["layers"] == layers):
            print(f"| {r['setting']} | {r['load_s']} | {r['rss_after_load_gib']} | {r['tiles']} | {r['step_s']} | "
                  f"{r['peak_rss_gib']} | {r['activation_gib']} | {r.get('loss', float('nan')):.3f} |")
        for f in (f for f in results.get("sweep_failures", []) if f["layers"] == layers):
            print(f"| {f['setting']} | | | | {f['reason']} after {f['steps']} steps ({f['log']}) | | | |")
    if bf := results.get("bf16"):
        print("\n### bfloat16 against float32: 2 decoder layers, LoRA without checkpointing, the 0-tile page")
        print("| dtype | RSS after load GiB | step s | peak RSS GiB | activations GiB |\n|---|---|---|---|---|")
        for dtype, r in bf.items():
            print(f"| {dtype} | {r['rss_after_load_gib']} | {r['step_s']} | {r['peak_rss_gib']} | {r['activation_gib']} |")
    if r := results.get("resume"):
        print("\n### kill and resume at 12 layers, NF4 4-bit LoRA + checkpointing + paged 8-bit AdamW: one 0-tile page, "
              "4 steps at lr 1e-3, a checkpoint every 2; SIGKILL after checkpoint-2, then `deepsynth-ocr resume`")
        print("| step | uninterrupted loss | killed + resumed loss |\n|---|---|---|")
        for step, loss in enumerate(r["uninterrupted"], start=1):
            print(f"| {step} | {loss:.6f} | {r['resumed'].get(str(step), r['resumed'].get(step, float('nan'))):.6f} |")
        ident = r["identity"]
        print(f"largest loss difference {r['max_diff']} (resume exit {r['resume_rc']}; killed + resumed {r['killed_and_resumed_s']} s, "
              f"uninterrupted {r['uninterrupted_s']} s). The one page is learnt: loss {r['uninterrupted'][0]:.3f} -> "
              f"{r['uninterrupted'][-1]:.3f}.")
        print(f"Weights: {ident['error']}" if "error" in ident else
              f"After training, {ident['compared'] - ident['n_changed']} of {ident['compared']} unquantised base tensors "
              f"are bit-identical to the loaded ones ({ident['vision_identical']} of {ident['vision_tensors']} on the "
              f"vision side); {ident['lora_B_trained']} LoRA B matrices left zero.")
    if g := results.get("generate"):
        print("\n### generation at 12 layers in 4 bits: a 0- and a 2-tile page in one batch, 8 new tokens")
        print(f"`evaluate` (base{' and adapter' if g['adapter'] else ''}): exit {g['evaluate_rc']}, {g['evaluate_s']} s "
              f"with loading; stages {g['timings']}. `infer`: exit {g['infer_rc']}, {g['infer_s']} s with loading, "
              f"{len(g['rows'])} rows: {g['rows']}")
    if f := results.get("full"):
        print("\n### LoRA against full fine-tuning: real width and vision, float32, the 2-tile page, batch 1, both with "
              "gradient checkpointing")
        print("| run | peak RSS GiB | step s |\n|---|---|---|")
        for name, peak in f["peaks"].items():
            print(f"| {name} layers | {peak} | {f['step_s'][name]} |")
        print(f"per decoder layer and extrapolated to 12: {f['per_layer']}; LoRA / full fine-tune peak = {f['ratio_2']} "
              f"measured at 2 layers, {f['ratio_12']} extrapolated to 12")
    if measured:
        print(f"\nactivation model (GiB = a0 + a1*tiles + a2*tiles^2 + layers*(b0 + b1*tiles)), written to "
              f"{MEASURED.relative_to(ROOT)}: {measured['activation']}; bfloat16 / float32 activations "
              f"{measured['bf16_over_fp32']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default=",".join(PART_NAMES), help=f"comma-separated subset of {PART_NAMES}")
    p.add_argument("--layers", default="12,2", help="decoder depths of the sweep")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results_file = OUT / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    parts = [] if args.parts == "report" else args.parts.split(",")
    started = time.perf_counter()
    if "sweep" in parts:
        for n in (int(n) for n in args.layers.split(",")):
            sweep(n, results)
            results_file.write_text(json.dumps(results, indent=1, default=str))
    for name, fn in (("bf16", bf16), ("resume", resume), ("generate", generate), ("full", full)):
        if name in parts:
            fn(results)
            results_file.write_text(json.dumps(results, indent=1, default=str))
    measured = fit(results)
    if measured:
        MEASURED.write_text(json.dumps(measured, indent=1) + "\n")
    report(results, measured)
    if parts:
        print(f"\nthis invocation (--parts {args.parts}): {(time.perf_counter() - started) / 60:.1f} min; results kept in "
              f"{results_file.relative_to(ROOT)} (`--parts report` prints them again)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import record  # benchmarks/record.py, beside this script

    record.main("real_size", main)
