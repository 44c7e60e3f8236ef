"""GPU-path behaviour that runs on a CPU: recipes refused without CUDA, Unsloth's import order, version pins.

DeepSeek-OCR v1's pieces are in test_v1_family.py, which also runs in the transformers 4.x environment.
"""

import logging

import pytest
import torch

from deepsynth_ocr.collate import OcrCollator, make_collator
from deepsynth_ocr.models.families import get_family

V1 = get_family("deepseek-ocr")
GEO = V1.v1_geometry


def test_native_families_keep_the_native_collator(tiny_parts):
    _, processor, family = tiny_parts
    assert type(make_collator(processor, family)) is OcrCollator


@pytest.mark.parametrize(("recipe", "says"), [("deepseek-ocr-2-qlora.yaml", "trains on a CUDA GPU"),
                                             # v1 first needs its own environment, then a GPU
                                             ("deepseek-ocr-qlora.yaml", "make setup-v1")])
def test_a_gpu_recipe_on_a_cpu_stops_at_once_in_one_line(recipe, says, tmp_path, capsys, monkeypatch):
    from deepsynth_ocr.cli import main

    from .conftest import ROOT

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(ROOT)
    code = main(["train", "-c", f"configs/{recipe}", "-s", f"output_root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert says in err
    assert not (tmp_path / "runs").exists()  # nothing started: no run directory, no model download


def test_unsloth_is_imported_before_transformers_peft_and_trl(tmp_path):
    """GPU_AUDIT.md item 11, with a stand-in unsloth package that records what was imported before it."""
    import json
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    fake = tmp_path / "unsloth"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import json, os, sys\n"
        "json.dump({m: m in sys.modules for m in ('transformers', 'peft', 'trl')}, open(os.environ['PROBE_OUT'], 'w'))\n")
    out = tmp_path / "seen.json"
    # Without DEEPSYNTH_SKIP_UNSLOTH: a CLI call in this test process for model.backend hf sets it (on purpose).
    env = {**{k: v for k, v in os.environ.items() if k != "DEEPSYNTH_SKIP_UNSLOTH"},
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "UNSLOTH_ALLOW_CPU": "1", "PROBE_OUT": str(out)}
    subprocess.run([sys.executable, "-c", "import deepsynth_ocr.jobs.train, deepsynth_ocr.cli"], check=True, env=env, cwd=ROOT)
    assert json.loads(out.read_text()) == {"transformers": False, "peft": False, "trl": False}


def test_installed_versions_other_than_the_pins_are_warned_naming_both(monkeypatch, caplog):
    from deepsynth_ocr import versions

    pinned = versions.pins(versions.ROOT / "requirements-training.txt")
    assert {"unsloth", "unsloth-zoo", "transformers", "peft", "bitsandbytes", "trl"} <= set(pinned)
    fake = {"transformers": pinned["transformers"], "peft": "0.22.0", "unsloth": "2026.11.1"}
    monkeypatch.setattr(versions, "installed", lambda name: fake.get(name))
    with caplog.at_level(logging.WARNING):
        found = versions.warn_mismatches()
    assert [(m["package"], m["installed"], m["pinned"]) for m in found] == [
        ("unsloth", "2026.11.1", pinned["unsloth"]), ("peft", "0.22.0", pinned["peft"])]
    assert f"peft 0.22.0 is installed, the kit is pinned to {pinned['peft']}" in caplog.text


def test_the_tiny_base_keeps_its_pil_image_processor_where_torchvision_would_be_chosen(monkeypatch):
    """GPU_AUDIT_2 W3: with torchvision importable (a GPU image) transformers picks its torchvision image
    processor unless told; the tiny base was pretrained and every CPU CER measured with the PIL one."""
    import transformers
    import transformers.models.auto.image_processing_auto as auto

    from deepsynth_ocr.models import backends, tiny
    from deepsynth_ocr.models.families import get_family

    real = transformers.AutoProcessor.from_pretrained
    chosen = []

    def torchvision_where_it_imports(path, *args, **kwargs):  # what AutoProcessor returns on a GPU image
        processor = real(path, *args, **kwargs)
        chosen.append(object())
        processor.image_processor = chosen[-1]
        return processor

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", torchvision_where_it_imports)
    monkeypatch.setattr(auto, "is_torchvision_available", lambda: True)
    processor = backends.load_processor(str(tiny.BUNDLED_BASE), get_family("tiny"))
    assert chosen and type(processor.image_processor).__name__ == "DeepseekOcr2ImageProcessorPil"
    assert auto._resolve_backend(None, None, "DeepseekOcr2ImageProcessor") == "torchvision"  # what it would pick
