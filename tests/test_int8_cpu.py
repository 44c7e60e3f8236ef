"""hf backend 8-bit (LLM.int8) LoRA on CPU: int8 language-model Linears, vision tower and head unquantised, an
eval then training that moves the adapter and leaves the int8 base as it was, and the run manifest's count."""

import math

import bitsandbytes as bnb
import pytest
import torch

from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.data.synthetic import random_strings, render_text
from deepsynth_ocr.evaluate import generate
from deepsynth_ocr.models.backends import load_model

from .test_qlora_cpu import _qlora_cfg, _train


def _int8_cfg() -> RunConfig:
    cfg = _qlora_cfg()
    cfg.model.load_in_4bit, cfg.model.load_in_8bit = False, True
    return cfg


def test_int8_lora_trains_after_an_eval_with_the_base_frozen_in_int8(tmp_path):
    from deepsynth_ocr.models import tiny
    from deepsynth_ocr.models.backends import is_vision_param

    cfg = _int8_cfg()
    loaded = load_model(cfg)
    int8 = {n: m for n, m in loaded.model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)}
    plain = [n for n, m in loaded.model.named_modules() if type(m) is torch.nn.Linear]
    assert int8 and all(".language_model.layers." in n for n in int8), list(int8)
    assert all(m.weight.dtype == torch.int8 for m in int8.values())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model.modules())
    assert any("vision_tower" in n for n in plain) and any(n.endswith("lm_head") for n in plain)

    plain_model = tiny.build_tiny_model(tiny.build_tiny_tokenizer(), loaded.family.tiny_geometry, seed=cfg.seed)
    linear_lm = sum(m.weight.numel() for n, m in plain_model.named_modules()
                    if type(m) is torch.nn.Linear and ".language_model.layers." in n)
    lm_total = sum(p.numel() for n, p in plain_model.named_parameters() if not is_vision_param(n, loaded.family))
    assert loaded.lm_precision["8bit"] == linear_lm and loaded.lm_precision["4bit"] == 0
    assert loaded.lm_precision["8bit"] + loaded.lm_precision["16bit"] == lm_total

    texts = random_strings(8, seed=7)
    rows = [{"image": render_text(t), "text": t, "prompt": loaded.family.default_prompt} for t in texts]
    lora = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if ".lora_" in n}
    base = {n: m.weight.data.clone() for n, m in int8.items()}
    loaded.for_inference()
    assert len(generate(loaded, rows, cfg.eval, max_new_tokens=4)) == 8
    losses = _train(loaded, rows, cfg, tmp_path / "a", steps=10)
    assert len(losses) == 10 and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.8, losses
    assert all(not torch.equal(p, lora[n]) for n, p in loaded.model.named_parameters() if n in lora)
    for name, module in loaded.model.named_modules():
        if name in base:
            assert torch.equal(module.weight.data, base[name]), name


def test_int8_and_4bit_together_or_int8_full_fine_tuning_are_refused_before_loading():
    cfg = _int8_cfg()
    cfg.model.load_in_4bit = True
    with pytest.raises(ConfigError, match="model.load_in_8bit.*choose one"):
        cfg.validate()
    cfg = _int8_cfg()
    cfg.lora.enabled = False
    with pytest.raises(ConfigError, match="int8 weights"):
        cfg.validate()
