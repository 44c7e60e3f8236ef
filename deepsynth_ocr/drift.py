"""API-drift checks: do the installed libraries still accept the keyword arguments the kit passes?

Unsloth cannot be imported without a GPU, so its source is read with ``ast`` from the pinned
release's wheels (``python -m deepsynth_ocr.drift fetch``, run by ``make setup``). Every Unsloth
entry point takes ``**kwargs``, so a renamed or removed argument would be swallowed silently at
call time; the checks therefore compare the kit's keywords with the *named* parameters.

The keywords come from the same ``*_kwargs`` functions in ``models/backends.py`` that build the
real calls, evaluated on the GPU recipes in ``configs/``, so the check cannot drift from the code.

Names are not behaviour: ``check`` also runs Unsloth's real ``get_peft_model`` from the pinned
source on the tiny DeepSeek-OCR-2 on the CPU (``lora_probe``) and compares what it adapts with the
hf backend; Unsloth 2026.10.9 silently adds the routed experts unless ``target_parameters=[]``.

    python -m deepsynth_ocr.drift fetch    # download + unpack the pinned Unsloth wheels (no deps)
    python -m deepsynth_ocr.drift check    # print every checked call; exit 1 on any problem
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING_REQUIREMENTS = ROOT / "requirements-training.txt"
CACHE = ROOT / ".cache" / "unsloth-src"
GPU_RECIPES = (ROOT / "configs" / "deepseek-ocr-2-qlora.yaml", ROOT / "configs" / "deepseek-ocr-qlora.yaml")


class DriftError(RuntimeError):
    pass


def pinned_unsloth_version() -> str:
    """The Unsloth version GPU users install, read from requirements-training.txt (one source of truth)."""
    text = TRAINING_REQUIREMENTS.read_text()
    found = re.search(r"^unsloth==([^\s;]+)", text, re.M)
    zoo = re.search(r"^unsloth-zoo==([^\s;]+)", text, re.M)
    if not found or not zoo or found.group(1) != zoo.group(1):
        raise DriftError(f"{TRAINING_REQUIREMENTS}: expected matching 'unsloth==X' and 'unsloth-zoo==X' pins")
    return found.group(1)


def source_dir(version: str | None = None) -> Path:
    return CACHE / (version or pinned_unsloth_version())


def fetch(version: str | None = None) -> Path:
    """Download the pinned unsloth + unsloth-zoo wheels without dependencies and unpack them."""
    version = version or pinned_unsloth_version()
    target = source_dir(version)
    if (target / "unsloth" / "models" / "loader.py").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
                        f"unsloth=={version}", f"unsloth-zoo=={version}"], check=True)
        target.mkdir(parents=True, exist_ok=True)
        for wheel in sorted(Path(tmp).glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(target)
    return target


def require_source(version: str | None = None) -> Path:
    root = source_dir(version)
    if not (root / "unsloth" / "models" / "loader.py").is_file():
        raise DriftError(f"Unsloth source not found at {root}: run `make setup` (or `python -m deepsynth_ocr.drift fetch`)")
    return root


# --- reading signatures from source ------------------------------------------------------------
@dataclass
class Signature:
    where: str  # file:line of the def that names the parameters
    named: set[str]
    positional: list[str]  # parameters before * / *args, in order


class SourceIndex:
    """Classes of a package's source tree, resolved through each file's relative imports."""

    def __init__(self, root: Path):
        self.root = root

    def tree(self, path: Path) -> ast.Module:
        stat = path.stat()
        return _parse(str(path), stat.st_mtime_ns, stat.st_size)

    def find_class(self, path: Path, name: str, depth: int = 0) -> tuple[Path, ast.ClassDef]:
        """``name`` as defined in ``path`` or imported into it from a sibling module."""
        if depth > 5:
            raise DriftError(f"{path}: import chain for {name} too deep")
        tree = self.tree(path)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return path, node
        for node in tree.body:  # module-level imports only: walking a 6000-line tree per lookup is slow
            if isinstance(node, ast.ImportFrom) and node.level and any(a.name == name for a in node.names):
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                module = base.joinpath(*(node.module or "").split("."))
                target = module / "__init__.py" if module.is_dir() else module.with_suffix(".py")
                return self.find_class(target, name, depth + 1)
        raise DriftError(f"{path.relative_to(self.root)}: no class {name} (defined or imported)")

    def method(self, path: Path, cls: str, name: str, depth: int = 0) -> Signature:
        """The named parameters of ``cls.name``, following base classes and ``**kwargs`` pass-throughs."""
        if depth > 8:
            raise DriftError(f"{cls}.{name}: resolution too deep")
        file, node = self.find_class(path, cls)
        func = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
        if func is None:
            for base in node.bases:
                if isinstance(base, ast.Name):
                    try:
                        return self.method(file, base.id, name, depth + 1)
                    except DriftError:
                        continue
            raise DriftError(f"{file.relative_to(self.root)}: {cls} has no method {name}")
        sig = _signature(func, f"{file.relative_to(self.root)}:{func.lineno}")
        target = _forwarded_to(func, name) if func.args.kwarg else None
        if target is not None and not sig.named - set(sig.positional[:1]):
            # e.g. FastModel.get_peft_model(model, *args, **kwargs) -> FastBaseModel.get_peft_model
            return self.method(file, target, name, depth + 1)
        return sig


@functools.lru_cache(maxsize=64)
def _parse(path: str, mtime_ns: int, size: int) -> ast.Module:
    # Keyed on mtime and size: an edited file is parsed again, an unchanged one only once.
    return ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)


def _signature(func: ast.FunctionDef, where: str) -> Signature:
    args = func.args
    positional = [a.arg for a in args.posonlyargs + args.args]
    return Signature(where, set(positional) | {a.arg for a in args.kwonlyargs}, positional)


def _forwarded_to(func: ast.FunctionDef, name: str) -> str | None:
    """The class a ``**kwargs`` pass-through forwards to: ``return Other.<name>(..., **kwargs)``."""
    for node in ast.walk(func):
        if (isinstance(node, ast.Return) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == name
                and isinstance(node.value.func.value, ast.Name)
                and any(k.arg is None for k in node.value.keywords)):
            return node.value.func.value.id
    return None


# --- the checks ---------------------------------------------------------------------------------
@dataclass
class CallCheck:
    call: str
    keywords: set[str]
    signature: Signature | None = None
    problem: str = ""

    def line(self) -> str:
        state = f"FAIL: {self.problem}" if self.problem else "ok"
        where = self.signature.where if self.signature else "?"
        return f"{state:<6} {self.call} ({where}) <- {sorted(self.keywords)}"


def _recipes():
    from deepsynth_ocr.config import RunConfig

    return [RunConfig.from_yaml(path) for path in GPU_RECIPES]


def unsloth_keywords(cfgs=None) -> dict[str, set[str]]:
    """Every keyword the kit passes to each Unsloth entry point, over the GPU recipes."""
    from deepsynth_ocr.models import backends
    from deepsynth_ocr.models.families import get_family

    calls: dict[str, set[str]] = {"FastVisionModel.from_pretrained": set(), "FastVisionModel.get_peft_model": set(),
                                  "FastVisionModel.for_training": set(), "FastVisionModel.for_inference": set()}
    for cfg in cfgs if cfgs is not None else _recipes():
        family = get_family(cfg.model.family)
        calls["FastVisionModel.from_pretrained"] |= set(backends.unsloth_load_kwargs(cfg, family))
        calls["FastVisionModel.get_peft_model"] |= set(backends.unsloth_peft_kwargs(cfg, family))
        calls["FastVisionModel.for_training"] |= set(
            backends.unsloth_for_training_kwargs(backends.unsloth_gradient_checkpointing(cfg)))
    return calls


def check_unsloth(root: Path, calls: dict[str, set[str]]) -> list[CallCheck]:
    """Check ``calls`` against the Unsloth source under ``root`` (positional ``model`` / directory too)."""
    index = SourceIndex(root)
    models_init = root / "unsloth" / "models" / "__init__.py"
    out = []
    for call, keywords in calls.items():
        check = CallCheck(call, keywords)
        try:
            cls, method = call.split(".")
            check.signature = index.method(models_init, cls, method)
            # The kit passes the model positionally to every method but from_pretrained.
            if method != "from_pretrained" and check.signature.positional[:1] != ["model"]:
                check.problem = f"first parameter is {check.signature.positional[:1]}, the kit passes the model there"
            missing = sorted(keywords - check.signature.named)
            if missing:
                check.problem = f"no parameter named {missing} (renamed or removed upstream)"
        except DriftError as e:
            check.problem = str(e)
        out.append(check)
    return out


def _accepts(func, keyword: str) -> bool:
    """Named parameter, or a ``**kwargs`` function whose own source reads that key."""
    params = inspect.signature(func).parameters
    if keyword in params and params[keyword].kind != inspect.Parameter.VAR_KEYWORD:
        return True
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return re.search(rf"""["']{re.escape(keyword)}["']""", inspect.getsource(func)) is not None
    return False


def check_hf(cfgs=None) -> list[CallCheck]:
    """transformers / peft / bitsandbytes entry points that only the GPU path (or 4-bit) uses."""
    import bitsandbytes
    import peft
    import transformers
    from transformers.training_args import OptimizerNames

    from deepsynth_ocr.models import backends
    from deepsynth_ocr.models.families import get_family

    cfgs = cfgs if cfgs is not None else _recipes()
    families = [get_family(c.model.family) for c in cfgs]
    bnb_kw = set().union(*(backends.bnb_config_kwargs(c, f) for c, f in zip(cfgs, families, strict=True)))
    lora_kw = set().union(*(backends.lora_config_kwargs(c, f) for c, f in zip(cfgs, families, strict=True)))
    load_kw = {"revision", "dtype", "trust_remote_code", "quantization_config", "device_map"}
    auto_from_pretrained = transformers.models.auto.auto_factory._BaseAutoModelClass.from_pretrained.__func__
    targets = [
        ("BitsAndBytesConfig", transformers.BitsAndBytesConfig.__init__, bnb_kw),
        ("peft.LoraConfig", peft.LoraConfig.__init__, lora_kw),
        ("AutoModel.from_pretrained (remote code)", auto_from_pretrained, {"trust_remote_code", "revision"}),
        ("PreTrainedModel.from_pretrained", transformers.PreTrainedModel.from_pretrained.__func__, load_kw),
        ("AutoTokenizer.from_pretrained", transformers.AutoTokenizer.from_pretrained.__func__, {"trust_remote_code"}),
        # AutoTokenizer passes revision on through **kwargs; the tokenizer class names it.
        ("PreTrainedTokenizerBase.from_pretrained", transformers.PreTrainedTokenizerBase.from_pretrained.__func__,
         {"revision", "trust_remote_code"}),
    ]
    out = []
    for name, func, keywords in targets:
        check = CallCheck(name, keywords, Signature(f"{func.__module__}.{func.__qualname__}", set(), []))
        missing = sorted(k for k in keywords if not _accepts(func, k))
        if missing:
            check.problem = f"does not accept {missing}"
        out.append(check)
    optim = CallCheck("TrainingArguments(optim=...)", {"paged_adamw_8bit"}, Signature("OptimizerNames", set(), []))
    if "paged_adamw_8bit" not in {o.value for o in OptimizerNames}:
        optim.problem = "transformers no longer knows optim 'paged_adamw_8bit'"
    elif not hasattr(bitsandbytes.optim, "PagedAdamW8bit"):
        optim.problem = "bitsandbytes.optim.PagedAdamW8bit is gone"
    out.append(optim)
    cpu_fix = CallCheck("bnb.nn.Linear4bit.support_avx512bf16_for_cpu", set(), Signature("bitsandbytes.nn.Linear4bit", set(), []))
    if "support_avx512bf16_for_cpu" not in inspect.getsource(bitsandbytes.nn.Linear4bit):
        cpu_fix.problem = "the attribute the CPU eval-then-train workaround sets is gone (backends._keep_cpu_4bit_trainable)"
    out.append(cpu_fix)
    return out


# --- behaviour: Unsloth's own LoRA attachment on the tiny DeepSeek-OCR-2 ----------------------------
def lora_probe() -> dict:
    """Attach LoRA to two identical tiny DeepSeek-OCR-2 models, through the real ``FastVisionModel.get_peft_model``
    and through the hf backend, with the kit's arguments; report what each adapted and whether the kit's check passes.

    Runs in a process of its own (``lora_probe_in_subprocess``): ``import unsloth`` patches transformers for good.
    """
    import os

    os.environ.setdefault("UNSLOTH_ALLOW_CPU", "1")
    from transformers import Trainer
    from unsloth import FastVisionModel  # first, before the kit imports transformers and peft

    from deepsynth_ocr.models import backends, tiny

    cfg = _recipes()[0]
    cfg.model.family, cfg.model.name_or_path, cfg.model.gradient_checkpointing = "tiny", tiny.RANDOM, False
    family = backends.get_family("tiny")
    tokenizer = tiny.build_tiny_tokenizer()
    out = {}
    # Unsloth swaps in its training loop only where it can compile it (a GPU); get_peft_model's last step
    # refuses to go on without it. Naming the stock loop as patched lets the attachment itself run on a CPU.
    Trainer._inner_training_loop.__name__ = "_fast_inner_training_loop"
    model = tiny.build_tiny_model(tokenizer, family.tiny_geometry, seed=0)
    model.max_seq_length = 2048
    for p in model.parameters():
        p.requires_grad_(False)
    model = FastVisionModel.get_peft_model(model, **backends.unsloth_peft_kwargs(cfg, family))
    out["unsloth"] = {"modules": backends.lora_modules(model),
                      "target_parameters": sorted(model.peft_config["default"].target_parameters or [])}
    try:
        backends.count_and_check_trainable(model, family, cfg)
        out["unsloth"]["kit_check"] = "ok"
    except RuntimeError as e:
        out["unsloth"]["kit_check"] = str(e)
    hf_model, *_ = backends.prepare_for_training(tiny.build_tiny_model(tokenizer, family.tiny_geometry, seed=0), family, cfg)
    out["hf"] = {"modules": backends.lora_modules(hf_model)}
    return out


def lora_probe_in_subprocess(root: Path) -> dict:
    import json
    import os

    env = {**os.environ, "UNSLOTH_ALLOW_CPU": "1",
           "PYTHONPATH": os.pathsep.join([str(root), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # Unsloth writes its compiled-module cache into the working directory: keep it out of the repository.
    with tempfile.TemporaryDirectory(prefix="unsloth-probe-") as cwd:
        proc = subprocess.run([sys.executable, "-m", "deepsynth_ocr.drift", "lora-probe"], capture_output=True,
                              text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise DriftError(f"the Unsloth LoRA probe did not run:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_lora_targets(probe: dict) -> CallCheck:
    """Unsloth must adapt exactly what the hf backend adapts, no parameters directly, and pass the kit's check."""
    u = probe["unsloth"]
    check = CallCheck("FastVisionModel.get_peft_model (behaviour on the tiny DeepSeek-OCR-2)", set(),
                      Signature(f"{len(u['modules'])} modules, target_parameters {u['target_parameters']}", set(), []))
    extra = sorted(set(u["modules"]) - set(probe["hf"]["modules"]))
    missing = sorted(set(probe["hf"]["modules"]) - set(u["modules"]))
    if u["kit_check"] != "ok":
        check.problem = f"the kit's trainable check fails: {u['kit_check']}"
    elif u["target_parameters"]:
        check.problem = f"Unsloth adds LoRA on parameters {u['target_parameters']} that the hf backend leaves alone"
    elif extra or missing:
        check.problem = f"the backends adapt different modules: only unsloth {extra[:3]}, only hf {missing[:3]}"
    return check


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepsynth_ocr.drift", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["fetch", "check", "lora-probe"])
    args = ap.parse_args(argv)
    if args.command == "fetch":
        print(fetch())
        return 0
    if args.command == "lora-probe":
        import json

        print(json.dumps(lora_probe()))
        return 0
    root = require_source()
    checks = check_unsloth(root, unsloth_keywords()) + check_hf() + [check_lora_targets(lora_probe_in_subprocess(root))]
    for c in checks:
        print(c.line())
    failed = [c for c in checks if c.problem]
    print(f"{len(checks) - len(failed)}/{len(checks)} calls accepted by unsloth {pinned_unsloth_version()}, "
          f"transformers, peft and bitsandbytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
