"""``make gpu-proof OUT=dir``: the GPU path, run for real on a CUDA machine with no network, on the bundled tiny base.

Built to bring its evidence back from a lent machine where only one folder (``$OUT``) returns and a
command that runs too long is killed whole:

1. ``checks`` (one child process): the pre-flight facts (torch, CUDA, the GPU, bitsandbytes and whether
   its CUDA library loads, peft, transformers, which image processor the tiny base gets) and a paged
   8-bit AdamW check on tensors big enough to be paged (> 1e5 elements) and kept in 8 bits (> 4096),
   its state saved with torch.save, loaded as a resume loads it and stepped once more.
2. One child process per case of the smoke fine-tune (the tiny base on the smoke domain, 60 steps, the
   GPU recipes' settings): ``hf`` (transformers + peft, 4-bit NF4, ``paged_adamw_8bit``, gradient
   checkpointing, bfloat16) and ``unsloth`` (the same through ``FastVisionModel``). Each has its own
   timeout; each records CER before and after, the whole training time and the steady-state seconds
   per step (after warm-up, checkpoint saves excluded), peak reserved and allocated VRAM.

``OUT/gpu_proof.json`` is rewritten after every step, so a later hang loses nothing; each child's
output goes to ``OUT/<step>.log`` as it runs, and each case's run ``console.log`` is copied to
``OUT/<case>.console.log``. The parent imports neither torch nor Unsloth (a crash point and 20-40 s
before anything runs, and environment changes the plain-transformers case must not inherit); every
child runs offline (``HF_HUB_OFFLINE``, Unsloth's statistics off). Exit 0 when every step passed.

The machine has no network, so what it lacks travels as wheels, built here::

    python -m deepsynth_ocr.gpu_proof wheels --dest .whl        # PyPI reachable; trims the two big wheels
    make gpu-proof WHEELS=.whl OUT=$OUT                          # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("hf", "unsloth")
# Seconds per child: the unsloth case compiles on a cold cache. Together (540 s) with the wheels' install they fit
# one device call (600 s at most) and leave a 15-minute device session room for one rerun of a failed case.
TIMEOUTS = {"checks": 90, "hf": 180, "unsloth": 270}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "UNSLOTH_DISABLE_STATISTICS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           # Unsloth sets expandable segments when nothing is set (torch >= 2.10): both cases get it, so their VRAM
           # figures come from the same allocator.
           "PYTORCH_ALLOC_CONF": "expandable_segments:True"}
# The unsloth case only: one visible GPU (its compile pass then uses every Inductor worker) and its own log lines.
UNSLOTH_ENV = {"CUDA_VISIBLE_DEVICES": "0", "UNSLOTH_ENABLE_LOGGING": "1"}
DEADLINE_MARGIN_S = 15  # what the last case leaves of the whole call's deadline, to write the JSON and exit
LOG_TAIL_LINES = 60
WARMUP_STEPS = 10  # steps left out of the steady-state s/step (compilation, allocator growth)

# What the proof imports that a CUDA image with torch, transformers, accelerate, pandas and pyarrow
# lacks (the lent machine's image), with the versions the kit pins or accepts. peft travels too: the
# image's version is unknown, and the adapter-key handling depends on it.
WHEELS = (
    "bitsandbytes==0.50.2", "unsloth==2026.10.9", "unsloth-zoo==2026.10.9", "trl==1.15.0", "datasets==4.8.5",
    "peft==0.21.2", "dill==0.4.1", "multiprocess==0.70.19", "jiwer==4.0.0", "rapidfuzz==3.14.6",
    # Unsloth's and Unsloth Zoo's own needs
    "tyro==1.0.17", "docstring-parser==0.18.0", "shtab==1.13.0", "typeguard==4.6.1", "msgspec==0.23.0",
    "torchao==0.18.0", "cut_cross_entropy==25.1.1", "hf_transfer==0.1.9", "diffusers==0.42.1",
    "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
    "json5==0.17.3", "nest-asyncio==1.6.0", "structlog==26.1.0",
)
WHEELS_LIMIT_MIB = 64  # what one call to the device machine carries, with the working tree
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
    total = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {total:.1f} MiB in {dest}")
    if total > WHEELS_LIMIT_MIB:
        raise SystemExit(f"gpu-wheels: {total:.1f} MiB is more than one device call carries ({WHEELS_LIMIT_MIB} MiB)")
    return wheels


# --- what the children run -------------------------------------------------------------------------------

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
    """Train ``cfg`` through ``jobs.train``; CER before/after, times and peak VRAM of that run."""
    import torch

    from deepsynth_ocr.jobs.train import train
    from deepsynth_ocr.runs import RunPaths, package_versions

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(cfg)
    manifest = RunPaths(result.run_dir).read_manifest()
    timings, memory = manifest["timings"], manifest.get("memory", {})
    return {
        "backend": manifest["backend"], "dtype": manifest["dtype"], "steps": cfg.train.max_steps,
        "cer_before": (result.before or {}).get("cer"), "cer_after": (result.after or {}).get("cer"),
        "train_loss": result.train_loss,
        "train_s": timings["train_s"], "s_per_step_whole_run": round(timings["train_s"] / cfg.train.max_steps, 4),
        "steady_s_per_step": timings.get("steady_s_per_step"), "timings": timings,
        # Training's peak, kept across the per-step resets (the allocator's own maximum at the end is what came after
        # the last reset: checkpoint, eval after, the adapter check). Reserved is what torch's caching allocator
        # holds; bitsandbytes' pages are CUDA managed memory, outside it, and counted by neither figure.
        "peak_reserved_gib": memory.get("train_peak_reserved_gib"),
        "peak_allocated_gib": memory.get("train_peak_allocated_gib"),
        "final_max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if cuda else None,
        "final_max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "allocator": manifest.get("allocator"), "gradient_checkpointing": manifest.get("gradient_checkpointing"),
        "image_processor": manifest.get("image_processor"),
        "device": manifest.get("device"), "torch_cuda": torch.version.cuda,
        "parameters": manifest["parameters"], "versions": package_versions(), "run_dir": str(result.run_dir),
    }


def preflight() -> dict:
    """The machine and libraries the cases will run on, and the image processor the tiny base gets."""
    from importlib import metadata

    import torch

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    out = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": cuda,
           "gpu": torch.cuda.get_device_name() if cuda else None,
           "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
           **{name: version(name) for name in ("transformers", "peft", "bitsandbytes", "accelerate", "torchvision",
                                               "unsloth", "unsloth-zoo", "trl", "datasets", "xformers")}}
    out["environment"] = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                                                         "TORCHINDUCTOR_COMPILE_THREADS", "PYTORCH_ALLOC_CONF")}
    try:
        import bitsandbytes.cextension as cext

        mock = getattr(cext, "ErrorHandlerMockBNBNativeLibrary", None)
        if mock is not None and isinstance(cext.lib, mock):  # its __getattr__ answers any name with a function
            error = str(getattr(cext.lib, "formatted_error", "") or "the native library did not load").strip()
            out["bitsandbytes_library"] = f"failed: {error.splitlines()[0] if error else ''}"
        else:
            out["bitsandbytes_library"] = str(getattr(cext, "BNB_BACKEND", "")) + " " + str(getattr(cext.lib, "_name", ""))
    except Exception as e:  # recorded, not raised: the cases say what it breaks
        out["bitsandbytes_library"] = f"failed: {type(e).__name__}: {e}"
    from deepsynth_ocr.models.backends import load_processor
    from deepsynth_ocr.models.families import get_family
    from deepsynth_ocr.models.tiny import BUNDLED_BASE

    out["tiny_base_image_processor"] = type(load_processor(str(BUNDLED_BASE), get_family("tiny")).image_processor).__name__
    return out


def paged_optimizer_check() -> dict:
    """``PagedAdamW8bit`` on a tensor above bitsandbytes' paging (1e5) and 8-bit (4096) thresholds, through the path
    a resumed run takes: three steps, ``torch.save`` of its state, ``torch.load`` on the CPU (as Trainer loads it),
    ``load_state_dict`` into a twin, ``training.restore_paged_states``, then one more step of both with the same
    gradient, which must leave the two weights equal."""
    import bitsandbytes as bnb
    import torch

    from deepsynth_ocr.training import restore_paged_states

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)

    def optimizer(weight):
        return bnb.optim.PagedAdamW8bit([weight], lr=1e-3)

    weight = torch.nn.Parameter(torch.randn(512, 512, device=device))
    opt = optimizer(weight)
    for _ in range(3):
        weight.grad = torch.randn_like(weight)
        opt.step()
        opt.zero_grad()
    state = opt.state[weight]
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(opt.state_dict(), Path(tmp) / "optimizer.pt")
        saved = torch.load(Path(tmp) / "optimizer.pt", map_location="cpu", weights_only=True)
    twin = torch.nn.Parameter(weight.detach().clone())
    reloaded = optimizer(twin)
    reloaded.load_state_dict(saved)
    flagged_after_load = bool(getattr(reloaded.state[twin].get("state1"), "is_paged", False))
    restored = restore_paged_states(reloaded)
    grad = torch.randn_like(weight)
    weight.grad, twin.grad = grad, grad.clone()
    opt.step()
    reloaded.step()
    same_step = torch.equal(weight.detach().cpu(), twin.detach().cpu())
    paged = bool(getattr(state["state1"], "is_paged", False))
    return {"device": device, "elements": weight.numel(), "state1_dtype": str(state["state1"].dtype).removeprefix("torch."),
            "paged": paged, "flag_survived_torch_load": flagged_after_load, "states_restored": restored,
            "resumed_step_equal": same_step,
            "ok": state["state1"].dtype == torch.uint8 and same_step and (device == "cpu" or paged)}


# --- the driver --------------------------------------------------------------------------------------------

@dataclass
class Step:
    """One child process of the proof: its name (log and JSON key), arguments and timeout."""

    name: str
    argv: list[str]
    timeout: float
    env: dict
    # A case's run directories: ``<output root>/<run name>`` (relative to the repository, where children run).
    runs: tuple[str, str] | None = None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def _die_with_parent() -> None:
    """In the child, before it runs: the kernel kills it when the driver dies (an outer timeout killing the
    driver would otherwise leave a case holding the GPU and writing into OUT). Linux only; elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _partial(result_file: Path) -> dict:
    try:
        return json.loads(result_file.read_text())
    except (OSError, ValueError):
        return {}


def run_step(step: Step, out_dir: Path, timeout: float | None = None) -> dict:
    """Run one child with its output in ``OUT/<name>.log``; ``ok`` with what it wrote to its JSON, or
    ``failed`` / ``timeout`` with the log's tail and whatever the child had written to its JSON by then. A child
    past its timeout is killed with its process group."""
    log = out_dir / f"{step.name}.log"
    timeout = step.timeout if timeout is None else timeout
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        start = time.time()
        with log.open("w") as f:
            proc = subprocess.Popen([*step.argv, "--json", str(result_file)], cwd=ROOT, env=step.env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {**_partial(result_file), "status": "timeout", "timeout_s": round(timeout, 1),
                        "wall_s": round(time.time() - start, 1), "log": log.name, "log_tail": _tail(log)}
        wall = round(time.time() - start, 1)
        if code == 0 and result_file.is_file():
            return {"status": "ok", **json.loads(result_file.read_text()), "wall_s": wall, "log": log.name}
        return {**_partial(result_file), "status": "failed", "returncode": code, "wall_s": wall, "log": log.name,
                "log_tail": _tail(log)}


def case_run(step: Step, result: dict) -> Path | None:
    """The case's run directory: the one its JSON names, else the newest of its name (a case that failed or timed
    out wrote no JSON, but its run directory already holds its manifest and console log)."""
    if result.get("run_dir"):
        return ROOT / result["run_dir"]  # the child ran in ROOT and may have written a relative path
    if step.runs is None:
        return None
    from deepsynth_ocr.runs import latest_run_dir

    root, name = step.runs
    return latest_run_dir(ROOT / root, name)


RUN_FIELDS = ("status", "error", "timings", "progress", "metrics", "memory", "backend", "backend_reason", "device",
              "image_processor", "gradient_checkpointing", "allocator", "parameters")


def drive(steps: list[Step], out_dir: Path, report: dict, deadline: float | None = None) -> dict:
    """Run ``steps`` in order, rewriting ``OUT/gpu_proof.json`` after each (a later hang loses nothing).

    ``deadline`` (``time.monotonic()`` seconds) bounds the whole call: no step runs past it less a margin, and the
    last step gets all that remains (the unsloth case compiles on a cold cache). After each case, whatever its
    status, its run directory's manifest figures are folded in and its console log copied."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_proof.json"
    for i, step in enumerate(steps):
        timeout = step.timeout
        if deadline is not None:
            left = deadline - time.monotonic() - DEADLINE_MARGIN_S
            timeout = max(1.0, left if i == len(steps) - 1 else min(timeout, left))
        print(f"gpu-proof: {step.name} (at most {timeout:.0f} s) ...", flush=True)
        result = run_step(step, out_dir, timeout)
        run_dir = case_run(step, result)
        if run_dir is not None and (run_dir / "manifest.json").is_file():
            manifest = json.loads((run_dir / "manifest.json").read_text())
            result["run"] = {k: manifest[k] for k in RUN_FIELDS if k in manifest}
            if (run_dir / "console.log").is_file():
                shutil.copyfile(run_dir / "console.log", out_dir / f"{step.name}.console.log")
                result.setdefault("console_tail", _tail(run_dir / "console.log", 20))
        report.setdefault("steps", {})[step.name] = result
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"gpu-proof: {step.name}: {summary(step.name, result)}", flush=True)
    return report


def summary(name: str, r: dict) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    if r["status"] != "ok":
        last = r.get("log_tail", "").strip().splitlines()
        return f"{r['status'].upper()} after {r['wall_s']} s ({r.get('log')}): {last[-1] if last else ''}"
    if name == "checks":
        p, o = r["preflight"], r["paged_optimizer"]
        return (f"torch {p['torch']} CUDA {p['torch_cuda']} on {p['gpu'] or 'no GPU'}; bitsandbytes {p['bitsandbytes']}, "
                f"peft {p['peft']}; tiny base image processor {p['tiny_base_image_processor']}; paged 8-bit AdamW: "
                f"states {o['state1_dtype']}, paged {o['paged']}, resumed step equal {o['resumed_step_equal']}")
    if "cer_before" not in r:
        return f"ok in {r['wall_s']} s"
    return (f"CER {fmt(r['cer_before'], '.4f')} -> {fmt(r['cer_after'], '.4f')}, steady {fmt(r['steady_s_per_step'], '.3f')} "
            f"s/step ({r['s_per_step_whole_run']:.3f} over the whole run), peak reserved {r['peak_reserved_gib']} GiB, "
            f"allocated {r['peak_allocated_gib']} GiB on {r['device']}")


def child_env(case: str | None) -> dict:
    """The parent's environment as it came (never changed here), offline, Unsloth only for its own case."""
    extra = {**UNSLOTH_ENV, **{k: os.environ[k] for k in UNSLOTH_ENV if k in os.environ}} if case == "unsloth" else {}
    return {**os.environ, **OFFLINE, **extra, "DEEPSYNTH_SKIP_UNSLOTH": "0" if case == "unsloth" else "1"}


def proof_steps(cases: list[str], n_steps: int, output_root: str, allow_cpu: bool, timeouts: dict) -> list[Step]:
    me = [sys.executable, "-m", "deepsynth_ocr.gpu_proof"]
    cpu = ["--allow-cpu"] if allow_cpu else []
    return [Step("checks", [*me, "checks", *cpu], timeouts["checks"], child_env(None))] + [
        Step(case, [*me, "case", case, "--steps", str(n_steps), "--output-root", output_root, *cpu],
             timeouts[case], child_env(case), runs=(output_root, f"gpu-proof-{case}")) for case in cases]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepsynth_ocr.gpu_proof", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wheels", help="download and trim the wheels the GPU machine lacks")
    p.add_argument("--dest", default=".whl")
    run = sub.add_parser("run", help="the checks, then every case, each in its own process, into OUT/gpu_proof.json")
    run.add_argument("--out", required=True, help="folder for gpu_proof.json and the logs (on the device: $OUT)")
    run.add_argument("--cases", default=",".join(CASES))
    run.add_argument("--timeouts", default="", help="seconds per step, e.g. hf=300,unsloth=420 (defaults shown)")
    run.add_argument("--deadline", type=float, default=0, help="seconds for the whole run (the device call's timeout_s "
                     "less the wheels' install): no step runs past it, and the last case gets what remains less "
                     f"{DEADLINE_MARGIN_S} s; 0: the per-step timeouts alone")
    checks = sub.add_parser("checks", help="pre-flight facts and the paged-optimizer check in this process")
    case = sub.add_parser("case", help="one case in this process (what `run` calls)")
    case.add_argument("name", choices=CASES)
    for q in (run, case):
        q.add_argument("--steps", type=int, default=60)
        q.add_argument("--output-root", default="runs/gpu-proof")
    for q in (run, checks, case):
        q.add_argument("--allow-cpu", action="store_true", help="tests only: run without CUDA")
    for q in (checks, case):
        q.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    if args.command == "wheels":
        build_wheels(Path(args.dest))
        return 0
    if args.command in ("checks", "case"):
        import torch  # a child: the parent never imports torch

        if not torch.cuda.is_available() and not args.allow_cpu:
            print("gpu-proof: no CUDA device; this proof needs an NVIDIA GPU", file=sys.stderr)
            return 2
        if args.command == "case":
            Path(args.json).write_text(json.dumps(measured_run(case_config(args.name, args.steps, args.output_root)),
                                                  default=str))
            return 0
        result = {"preflight": preflight()}
        Path(args.json).write_text(json.dumps(result, default=str))  # kept if the check below takes the process down
        try:
            result["paged_optimizer"] = paged_optimizer_check()
        except Exception as e:
            result["paged_optimizer"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        Path(args.json).write_text(json.dumps(result, default=str))
        return 0 if result["paged_optimizer"]["ok"] else 1
    timeouts = {**TIMEOUTS, **{k: float(v) for k, v in (item.split("=") for item in args.timeouts.split(",") if item)}}
    out = Path(args.out)
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps_per_case": args.steps,
              "timeouts_s": timeouts, "note": "figures measured by this run only; see docs/gpu.md"}
    all_steps = proof_steps(args.cases.split(","), args.steps, args.output_root, args.allow_cpu, timeouts)
    deadline = time.monotonic() + args.deadline if args.deadline else None
    report["deadline_s"] = args.deadline or None
    report = drive(all_steps[:1], out, report, deadline)
    checks = report["steps"]["checks"]
    if checks["status"] != "ok" and "no CUDA device" in checks.get("log_tail", ""):
        print("gpu-proof: no CUDA device; this proof needs an NVIDIA GPU", file=sys.stderr)
        return 2
    report = drive(all_steps[1:], out, report, deadline)
    print(f"results: {out / 'gpu_proof.json'}")
    return 0 if all(r["status"] == "ok" for r in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
