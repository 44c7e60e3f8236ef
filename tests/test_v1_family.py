"""DeepSeek-OCR v1: geometry, collator, revision pins, backend choice and recipe validation.

These run in both environments: the main one (transformers 5.x) and the v1 one (transformers 4.56.2,
``make setup-v1``), where v1's remote code can import. CI runs this file in both.

The v1 token counts are checked against the published formula (DeepSeek-OCR's remote
``modeling_deepseekocr.py`` and Unsloth's notebook collator), written out here independently:
global view ``(16 + 1) * 16 + 1`` (16 queries per row at 1024 px, a newline after each row, one
view separator), plus ``(10 * w + 1) * (10 * h)`` for a w x h grid of 640 px crops.
"""

import logging
import math

import pytest
import torch
import transformers
from PIL import Image

from deepsynth_ocr.collate import IGNORE_INDEX, make_collator
from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.models import backends, tiny
from deepsynth_ocr.models.deepseek_ocr_v1 import V1Collator, V1Processor, crop_grid, encode_image, image_token_count
from deepsynth_ocr.models.families import get_family

from .conftest import ROOT

V1 = get_family("deepseek-ocr")
GEO = V1.v1_geometry
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def published_count(w: int, h: int) -> int:
    base = math.ceil(1024 // 16 / 4)
    local = math.ceil(640 // 16 / 4)
    count = (base + 1) * base + 1
    return count + ((local * w + 1) * (local * h) if (w, h) != (1, 1) else 0)


# (image size, grid the published dynamic_preprocess picks)
CASES = {
    "smaller than 640": ((600, 400), (1, 1)),
    "wide": ((2000, 500), (4, 1)),  # aspect 4.0 -> 4 x 1
    "tall": ((500, 1800), (1, 4)),  # aspect 0.28 -> 1 x 4 (0.25 is closest; 2 x 7 exceeds 9 tiles)
    "maximum crops": ((3000, 3000), (3, 3)),  # aspect 1 ties 2 x 2 and 3 x 3; the large area takes 3 x 3 = max 9
}


@pytest.mark.parametrize("case", CASES)
def test_v1_token_counts_and_shapes_match_the_published_geometry(case):
    (w, h), grid = CASES[case]
    enc = encode_image(Image.new("RGB", (w, h), "white"), GEO)
    assert enc.grid == crop_grid(w, h, GEO) == grid
    assert enc.num_tokens == image_token_count(grid, GEO) == published_count(*grid)
    assert enc.global_view.shape == (1, 3, 1024, 1024)
    tiles = grid[0] * grid[1]
    if tiles > 1:
        assert enc.crops.shape == (tiles, 3, 640, 640)
        assert torch.all(enc.crops == 1.0)  # white, normalised with mean 0.5 / std 0.5
    else:
        assert enc.crops.shape == (1, 3, 1024, 1024) and not enc.crops.any()  # "no crops" marker


def test_v1_counts_for_the_named_cases():
    assert {k: published_count(*g) for k, (_, g) in CASES.items()} == {
        "smaller than 640": 273, "wide": 683, "tall": 713, "maximum crops": 1203}
    assert max(w * h for w, h in (g for _, g in CASES.values())) == GEO.max_crops


def test_v1_crops_are_row_major_from_the_resized_image():
    image = Image.new("RGB", (1400, 700), "black")
    image.paste(Image.new("RGB", (700, 700), "white"), (700, 0))
    enc = encode_image(image, GEO)
    assert enc.grid == (2, 1)
    assert enc.crops[0].mean() < -0.9 and enc.crops[1].mean() > 0.9
    # Global view: padded top and bottom with the mean colour (0.5 -> about 0 after normalising).
    assert abs(enc.global_view[0, :, 0, :].mean().item()) < 0.01


@pytest.fixture
def v1_processor():
    return V1Processor(tiny.build_tiny_tokenizer(pad_token=tiny.EOS), GEO)  # pad == EOS, as many real tokenizers


def test_v1_training_batch_masks_prompt_placeholders_and_padding_but_learns_eos(v1_processor):
    tok = v1_processor.tokenizer
    rows = [{"image": Image.new("RGB", (600, 400), "white"), "text": "ab", "prompt": V1.default_prompt},
            {"image": Image.new("RGB", (2000, 500), "white"), "text": "abcdef", "prompt": V1.default_prompt}]
    collator = make_collator(v1_processor, V1)
    assert isinstance(collator, V1Collator)
    batch = collator(rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "images", "images_seq_mask", "images_spatial_crop"}
    assert batch["images_spatial_crop"].tolist() == [[1, 1], [4, 1]]
    assert batch["images_seq_mask"].sum(1).tolist() == [273, 683]
    assert torch.equal(batch["images_seq_mask"], batch["input_ids"] == v1_processor.image_token_id)
    assert [tuple(c.shape) for c, _ in batch["images"]] == [(1, 3, 1024, 1024), (4, 3, 640, 640)]
    for i, text in enumerate(["ab", "abcdef"]):
        learned = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist()
        assert learned == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert batch["input_ids"][i, 0].item() == tok.bos_token_id
    # Row 0 is right padded: attention 0 and label -100 there, even though pad == EOS.
    pad_from = int(batch["attention_mask"][0].sum())
    assert pad_from < batch["input_ids"].shape[1] and (batch["labels"][0, pad_from:] == IGNORE_INDEX).all()


def test_v1_generation_batch_is_left_padded_with_aligned_mask(v1_processor):
    rows = [{"image": Image.new("RGB", (600, 400), "white"), "prompt": V1.default_prompt},
            {"image": Image.new("RGB", (500, 1800), "white"), "prompt": V1.default_prompt}]
    batch = V1Collator(v1_processor, V1, for_generation=True)(rows)
    assert "labels" not in batch and batch["attention_mask"][:, -1].all()
    assert batch["attention_mask"][0, 0] == 0  # the shorter row is padded on the left
    assert torch.equal(batch["images_seq_mask"], batch["input_ids"] == v1_processor.image_token_id)
    assert batch["images_seq_mask"].sum(1).tolist() == [273, 713]


def test_v1_prompt_without_image_token_is_a_clear_error(v1_processor):
    with pytest.raises(ValueError, match="<image>"):
        V1Collator(v1_processor, V1)([{"image": Image.new("RGB", (64, 64)), "text": "a", "prompt": "Free OCR."}])




def _v1_cfg(path="deepseek-ai/DeepSeek-OCR", revision=""):
    cfg = RunConfig()
    cfg.model.family, cfg.model.name_or_path, cfg.model.revision = "deepseek-ocr", path, revision
    cfg.model.load_in_4bit = cfg.model.gradient_checkpointing = True
    return cfg


def test_remote_code_loads_only_at_a_pinned_revision(tmp_path):
    assert backends.resolve_revision(_v1_cfg(), V1) == V1.pinned_revisions["deepseek-ai/DeepSeek-OCR"]
    assert backends.resolve_revision(_v1_cfg("unsloth/DeepSeek-OCR", "abc123"), V1) == "abc123"
    assert backends.resolve_revision(_v1_cfg(str(tmp_path)), V1) is None  # a local snapshot, as on disk
    with pytest.raises(ConfigError, match="model.revision"):
        backends.resolve_revision(_v1_cfg("unsloth/DeepSeek-OCR"), V1)


def test_trust_remote_code_is_for_the_v1_family_only_and_warned(caplog):
    assert [n for n in ("tiny", "deepseek-ocr-2", "deepseek-ocr") if get_family(n).trust_remote_code] == ["deepseek-ocr"]
    cfg = _v1_cfg()
    with caplog.at_level(logging.WARNING):
        backends.warn_remote_code(cfg, V1, backends.resolve_revision(cfg, V1))
    assert "trust_remote_code is enabled for family deepseek-ocr only" in caplog.text
    assert V1.pinned_revisions["deepseek-ai/DeepSeek-OCR"] in caplog.text


def test_unsloth_arguments_per_family():
    v1 = backends.unsloth_load_kwargs(_v1_cfg(), V1)
    assert v1["trust_remote_code"] is True and v1["auto_model"].__name__ == "AutoModel"
    assert v1["load_in_4bit"] is True and v1["use_gradient_checkpointing"] == "unsloth"
    native_cfg = RunConfig()
    native_cfg.model.family, native_cfg.model.name_or_path = "deepseek-ocr-2", "deepseek-community/DeepSeek-OCR-2"
    native = backends.unsloth_load_kwargs(native_cfg, get_family("deepseek-ocr-2"))
    assert "trust_remote_code" not in native and "auto_model" not in native
    peft_kwargs = backends.unsloth_peft_kwargs(native_cfg, get_family("deepseek-ocr-2"))
    assert peft_kwargs["finetune_vision_layers"] is False
    assert peft_kwargs["target_modules"] == get_family("deepseek-ocr-2").lora_target_pattern


def test_auto_backend_without_cuda_is_hf_with_a_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backends.choose_backend("auto") == ("hf", "auto: no CUDA device, using transformers + peft")
    with pytest.raises(UserError, match="model.backend"):
        backends.choose_backend("unsloth")


def test_the_v1_recipe_validates_and_resolves_its_pinned_source():
    cfg = RunConfig.from_yaml(ROOT / "configs" / "deepseek-ocr-qlora.yaml")
    family = get_family(cfg.model.family)
    assert family is V1 and cfg.model.load_in_4bit
    kwargs = backends.hf_load_kwargs(cfg, family)
    assert kwargs["trust_remote_code"] is True and kwargs["revision"] == V1.pinned_revisions[cfg.model.name_or_path]
    assert kwargs["quantization_config"].llm_int8_skip_modules == list(V1.quant_skip_modules)


def test_each_family_loads_only_in_the_environment_its_code_needs():
    """v1's remote code needs transformers 4.x; native DeepSeek-OCR-2 needs 5.x. The wrong one stops in one line."""
    native = get_family("deepseek-ocr-2")
    wrong, right = (native, V1) if TRANSFORMERS_MAJOR == 4 else (V1, native)
    backends.require_transformers_for(right)
    with pytest.raises(UserError) as e:
        backends.require_transformers_for(wrong)
    message = str(e.value)
    assert "\n" not in message and transformers.__version__ in message
    assert ("make setup-v1" in message) if wrong is V1 else ("make setup" in message and "setup-v1" not in message)
