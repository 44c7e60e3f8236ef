"""API drift: the installed/pinned libraries must accept every keyword the kit passes.

The Unsloth source comes from the pinned wheels unpacked by ``make setup``; if it is missing these
tests fail (never skip), because a silently skipped drift check is what lets a rename reach users.
"""

import ast
import os
import re
import shutil

import pytest
import transformers

from deepsynth_ocr import drift
from deepsynth_ocr.config import RunConfig


@pytest.fixture(scope="module")
def unsloth_src():
    return drift.require_source()


@pytest.fixture(scope="module")
def keywords():
    return drift.unsloth_keywords()


def test_missing_unsloth_source_is_an_error_not_a_skip():
    with pytest.raises(drift.DriftError, match="make setup"):
        drift.require_source("0.0.0-not-downloaded")


def test_the_kit_passes_what_the_gpu_path_needs(keywords):
    # The issue's required arguments, collected from the kit's real kwargs builders over both recipes.
    assert {"load_in_4bit", "use_gradient_checkpointing", "auto_model", "trust_remote_code", "revision",
            "unsloth_force_compile"} <= keywords["FastVisionModel.from_pretrained"]
    assert {"target_modules", "r", "lora_alpha", "finetune_vision_layers"} <= keywords["FastVisionModel.get_peft_model"]
    assert keywords["FastVisionModel.for_training"] == {"use_gradient_checkpointing"}
    assert "save_pretrained_merged" not in keywords  # exports merge through transformers + peft (GPU_AUDIT_3 M4)


def test_pinned_unsloth_accepts_every_keyword(unsloth_src, keywords):
    checks = drift.check_unsloth(unsloth_src, keywords)
    assert [c.call for c in checks] == list(keywords)
    assert not [c.line() for c in checks if c.problem]
    # Resolution followed Unsloth's real structure: FastVisionModel -> FastModel -> FastBaseModel.
    where = {c.call: c.signature.where for c in checks}
    assert where["FastVisionModel.from_pretrained"].startswith("unsloth/models/loader.py")
    assert where["FastVisionModel.get_peft_model"].startswith("unsloth/models/vision.py")


@pytest.fixture
def unsloth_copy(unsloth_src, tmp_path):
    """A private copy of the Unsloth sources the checks read, for editing signatures."""
    for rel in ("unsloth/models", "unsloth/save.py"):
        src, dst = unsloth_src / rel, tmp_path / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    return tmp_path


def _rename_parameter(root, where: str, name: str) -> None:
    """Rename parameter ``name`` in the def at ``where`` (file:line), only in its header."""
    rel, line = where.rsplit(":", 1)
    path = root / rel
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    func = next(n for n in ast.walk(ast.parse("".join(lines)))
                if isinstance(n, ast.FunctionDef) and n.lineno == int(line))
    start, end = func.lineno - 1, func.body[0].lineno - 1
    header = "".join(lines[start:end])
    edited, count = re.subn(rf"\b{re.escape(name)}\b(?=\s*[=,:)])", f"{name}_renamed", header, count=1)
    assert count == 1, f"{name} not found in the header at {where}"
    path.write_text("".join(lines[:start]) + edited + "".join(lines[end:]), encoding="utf-8")


def test_renaming_any_keyword_in_a_copy_of_unsloth_fails_the_check(unsloth_src, unsloth_copy, keywords):
    original = {c.call: c.signature.where for c in drift.check_unsloth(unsloth_src, keywords)}
    pairs = [(call, kw) for call, kws in keywords.items() for kw in sorted(kws)]
    assert len(pairs) >= 20
    for call, kw in pairs:
        rel = original[call].rsplit(":", 1)[0]
        pristine = (unsloth_src / rel).read_text(encoding="utf-8")
        stat = (unsloth_copy / rel).stat()
        _rename_parameter(unsloth_copy, original[call], kw)
        try:
            checks = {c.call: c for c in drift.check_unsloth(unsloth_copy, keywords)}
            assert kw in checks[call].problem, f"renaming {call}({kw}=...) went unnoticed"
            assert not [c for name, c in checks.items() if name != call and c.problem]
        finally:
            (unsloth_copy / rel).write_text(pristine, encoding="utf-8")
            # Same content, same mtime: the parsed tree of the pristine file is reused.
            os.utime(unsloth_copy / rel, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_model_moved_out_of_the_first_position_fails(unsloth_src, unsloth_copy, keywords):
    where = {c.call: c.signature.where for c in drift.check_unsloth(unsloth_src, keywords)}
    _rename_parameter(unsloth_copy, where["FastVisionModel.for_inference"], "model")
    problem = {c.call: c.problem for c in drift.check_unsloth(unsloth_copy, keywords)}["FastVisionModel.for_inference"]
    assert "first parameter" in problem


def test_hf_gpu_entry_points_accept_the_kit_keywords():
    checks = drift.check_hf()
    assert len(checks) >= 7
    assert not [c.line() for c in checks if c.problem]


def test_a_renamed_bitsandbytes_config_argument_fails(monkeypatch):
    original = transformers.BitsAndBytesConfig.__init__

    def edited(self, load_in_4bit=False, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False,
               bnb_4bit_compute_dtype=None, llm_int8_skip_module_names=None, **kwargs):  # renamed copy
        original(self, load_in_4bit=load_in_4bit)

    monkeypatch.setattr(transformers.BitsAndBytesConfig, "__init__", edited)
    problems = {c.call: c.problem for c in drift.check_hf()}
    assert "llm_int8_skip_modules" in problems["BitsAndBytesConfig"]


def test_recipes_are_gpu_qlora_defaults():
    for path in drift.GPU_RECIPES:
        cfg = RunConfig.from_yaml(path)
        assert cfg.model.load_in_4bit and cfg.model.gradient_checkpointing and cfg.model.backend == "auto"
        assert (cfg.lora.r, cfg.lora.alpha, cfg.train.learning_rate) == (16, 16, 2e-4)
        assert cfg.train.per_device_batch_size * cfg.train.gradient_accumulation_steps == 8
        assert cfg.train.optim == "paged_adamw_8bit"


@pytest.fixture(scope="module")
def lora_probe(unsloth_src):
    return drift.lora_probe_in_subprocess(unsloth_src)


def test_unsloths_real_lora_attachment_adapts_what_the_hf_backend_adapts(lora_probe):
    """Unsloth's own get_peft_model from the pinned source, run on the tiny DeepSeek-OCR-2 (GPU_AUDIT.md item 1)."""
    unsloth = lora_probe["unsloth"]
    assert unsloth["kit_check"] == "ok" and unsloth["target_parameters"] == []
    assert unsloth["modules"] == lora_probe["hf"]["modules"]
    # 2 layers x (q, k, v, o) + the dense MLP of layer 0 + the shared experts of layer 1; no routed experts.
    assert len(unsloth["modules"]) == 14
    assert not [m for m in unsloth["modules"] if ".experts" in m and ".shared_experts." not in m]
    assert drift.check_lora_targets(lora_probe).problem == ""


def test_the_lora_check_names_routed_experts_that_unsloth_adds():
    probe = {"unsloth": {"modules": ["a", "m.experts"], "target_parameters": ["mlp.experts.down_proj"], "kit_check": "ok"},
             "hf": {"modules": ["a"]}}
    assert "mlp.experts.down_proj" in drift.check_lora_targets(probe).problem
    probe["unsloth"]["kit_check"] = "LoRA attached to unexpected modules: ['m.experts']"
    assert "unexpected modules" in drift.check_lora_targets(probe).problem


@pytest.mark.slow
def test_drift_check_fails_on_a_copy_of_the_kit_without_the_expert_opt_out(tmp_path, unsloth_src):
    """Finding 1 put back (no target_parameters=[]): `python -m deepsynth_ocr.drift check` must exit 1."""
    import subprocess
    import sys

    from .conftest import ROOT

    for rel in ("deepsynth_ocr", "configs"):
        shutil.copytree(ROOT / rel, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "requirements-training.txt", tmp_path)
    (tmp_path / ".cache").symlink_to(ROOT / ".cache")
    backends = tmp_path / "deepsynth_ocr" / "models" / "backends.py"
    text = backends.read_text()
    assert text.count('"target_parameters": [],\n') == 1
    backends.write_text(text.replace('"target_parameters": [],\n', ""))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "deepsynth_ocr.drift", "check"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAIL" in proc.stdout and "LoRA attached to unexpected modules" in proc.stdout
