"""model.attn_implementation reaches the model on every load path and picks the kernel its attention layers call;
flash-attention is refused before anything loads where it cannot run."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.models.backends import load_model

from .conftest import ROOT


def _loaded(*overrides):
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml").with_overrides(["model.name_or_path=random", *overrides])
    return load_model(cfg, for_training=False)


@pytest.mark.parametrize("extra", [[], ["model.load_in_4bit=true"], ["model.name_or_path=data/tiny-base"]],
                         ids=["built-in-code", "4bit-from-pretrained", "bundled-base"])
def test_eager_and_sdpa_are_the_kernels_the_layers_call_and_agree(extra, monkeypatch, tiny_parts):
    calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    tokenizer, processor, _ = tiny_parts
    ids = torch.tensor([tokenizer("abc")["input_ids"]])
    logits = {}
    for kernel in ("eager", "sdpa"):
        loaded = _loaded(f"model.attn_implementation={kernel}", *extra)
        model = loaded.model
        assert {model.config._attn_implementation, model.config.text_config._attn_implementation} == {kernel}
        calls.clear()
        with torch.no_grad():
            logits[kernel] = model(input_ids=ids).logits.float()
        assert (len(calls) > 0) == (kernel == "sdpa")  # eager never goes through the sdpa kernel
    assert torch.allclose(logits["eager"], logits["sdpa"], atol=1e-4)


def test_flash_attention_is_refused_before_loading_on_a_machine_without_cuda():
    with pytest.raises(ConfigError, match=r"^model\.attn_implementation: flash_attention_2 runs on a CUDA GPU only"):
        _loaded("model.attn_implementation=flash_attention_2")
    with pytest.raises(ConfigError, match="must be one of"):
        RunConfig().with_overrides(["model.attn_implementation=flash"])
