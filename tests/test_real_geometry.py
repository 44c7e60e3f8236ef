"""DeepSeek-OCR-2's released geometry through the kit: the published-size checkpoint writer, pages at scanner
resolution through the processor and collator, and (slow) training, reloading and generating at real width,
real vision and real tiles with a 2-layer decoder."""

import json
import math

import pytest
import torch

from deepsynth_ocr.batching import IGNORE_INDEX
from deepsynth_ocr.collate import OcrCollator
from deepsynth_ocr.data.real_pages import KINDS, render, write_pages
from deepsynth_ocr.models import published
from deepsynth_ocr.models.families import DEEPSEEK_OCR_2_GEOMETRY as GEO
from deepsynth_ocr.models.families import get_family

from .conftest import ROOT

EXPECTED_TILES = {"label": 0, "cheque": 2, "table": 3, "receipt": 4, "a4": 6}


@pytest.fixture(scope="module")
def processor():
    return published.build_processor(published.build_tokenizer())


@pytest.fixture(scope="module")
def rows():
    family = get_family("deepseek-ocr-2")
    return {kind: {"image": render(kind)[0], "text": render(kind)[1], "prompt": family.default_prompt} for kind in KINDS}


def test_the_tokenizer_has_the_released_vocabulary_and_special_ids(processor):
    tok = processor.tokenizer
    assert len(tok) == published.PUBLISHED_TEXT_CONFIG["vocab_size"] == 129280
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<image>") == published.IMAGE_TOKEN_ID == 128815
    text = render("receipt")[1]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text) / 1.2  # merges learnt: fewer tokens than characters


def test_the_model_config_is_the_released_one():
    cfg = published.model_config()
    sam, enc, text = cfg.vision_config.sam_config, cfg.vision_config.encoder_config, cfg.text_config
    assert (sam.hidden_size, sam.num_hidden_layers, sam.num_attention_heads, sam.image_size, sam.patch_size) == (768, 12, 12, 1024, 16)
    assert list(sam.global_attn_indexes) == [2, 5, 8, 11] and list(sam.downsample_channels) == [512, 896]
    assert (enc.hidden_size, enc.num_hidden_layers, enc.num_attention_heads, enc.num_key_value_heads,
            enc.intermediate_size) == (896, 24, 14, 2, 4864)
    assert (text.hidden_size, text.num_hidden_layers, text.n_routed_experts, text.n_shared_experts,
            text.num_experts_per_tok, text.moe_intermediate_size, text.vocab_size) == (1280, 12, 64, 2, 6, 896, 129280)
    assert text.mlp_layer_types == ["dense"] + ["sparse"] * 11 and cfg.image_token_id == 128815
    with torch.device("meta"):
        from transformers import DeepseekOcr2ForConditionalGeneration

        model = DeepseekOcr2ForConditionalGeneration(cfg)
    params = sum(p.numel() for p in model.parameters())
    assert 3.38e9 < params < 3.40e9  # 3.389 B, as the plain-script build measured
    assert model.model.multi_modal_projector.out_features == 1280
    with pytest.raises(ValueError, match="text_layers"):
        published.model_config(13)


def test_a_written_directory_is_reused_only_when_complete_for_the_same_settings(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(published, "build_model", lambda layers, seed, dtype: calls.append(layers) or _Saver())
    monkeypatch.setattr(published, "build_tokenizer", lambda: None)
    monkeypatch.setattr(published, "build_processor", lambda tok: _Saver())
    out = tmp_path / "ckpt"
    assert published.write_checkpoint(out, text_layers=2) == out and calls == [2]
    assert published.is_complete(out, 2, 0) and not published.is_complete(out, 3, 0) and not published.is_complete(out, 2, 1)
    published.write_checkpoint(out, text_layers=2)
    assert calls == [2]  # reused
    (out / "model.safetensors").unlink()  # a partial copy is rebuilt
    published.write_checkpoint(out, text_layers=2)
    assert calls == [2, 2]


class _Saver:
    def save_pretrained(self, out, **kwargs):
        (out / ("model.safetensors" if kwargs else "processor_config.json")).write_text("x")

    def parameters(self):
        return [torch.zeros(3)]


def test_the_processor_follows_the_published_rule_on_pages_at_scanner_resolution(processor, rows):
    image_id = published.IMAGE_TOKEN_ID
    for kind, row in rows.items():
        width, height = row["image"].size
        out = processor(images=row["image"], text=row["prompt"], crop_to_patches=True, min_patches=2, max_patches=6,
                        return_tensors="pt")
        tiles = int(out["num_local_patches"][0])
        assert tiles == GEO.tiles(width, height) == EXPECTED_TILES[kind], kind
        assert tuple(out["pixel_values"].shape) == (1, 3, 1024, 1024)
        assert tiles == 0 and "pixel_values_local" not in out or tuple(out["pixel_values_local"].shape) == (tiles, 3, 768, 768)
        assert int((out["input_ids"][0] == image_id).sum()) == GEO.image_tokens(tiles) == 256 + 144 * tiles + 1
    assert GEO.image_tokens(6) == 1121


def test_the_rule_matches_the_processor_over_page_shapes(processor):
    import random

    from PIL import Image

    rng = random.Random(1)
    image_processor = processor.image_processor
    for width, height in [(rng.randint(200, 3200), rng.randint(200, 3200)) for _ in range(40)] + [(769, 500), (768, 2000)]:
        out = image_processor(Image.new("RGB", (width, height), "white"), crop_to_patches=True, min_patches=2,
                              max_patches=6, return_tensors="pt")
        assert int(out["num_local_patches"][0]) == GEO.tiles(width, height), (width, height)


def test_a_batch_of_pages_with_different_tile_counts_masks_everything_but_the_answer_and_eos(processor, rows):
    family = get_family("deepseek-ocr-2")
    collator = OcrCollator(processor, family)
    kinds = ["label", "a4", "cheque"]
    batch = collator([rows[k] for k in kinds])
    tiles = [EXPECTED_TILES[k] for k in kinds]
    assert batch["num_local_patches"].tolist() == tiles
    assert tuple(batch["pixel_values"].shape) == (3, 3, 1024, 1024)
    assert tuple(batch["pixel_values_local"].shape) == (sum(tiles), 3, 768, 768)
    tok = processor.tokenizer
    for i, kind in enumerate(kinds):
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        target = tok(rows[kind]["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n_images = GEO.image_tokens(tiles[i])
        assert int((ids == published.IMAGE_TOKEN_ID).sum()) == n_images
        learnt = labels[labels != IGNORE_INDEX].tolist()
        assert learnt == target  # the answer and its EOS, nothing else
        assert not bool((labels[ids == published.IMAGE_TOKEN_ID] != IGNORE_INDEX).any())
        length = int(mask.sum())
        assert length == 1 + n_images + len(tok("\nFree OCR.", add_special_tokens=False)["input_ids"]) + len(target)
        assert labels[length - 1] == tok.eos_token_id and bool((labels[length:] == IGNORE_INDEX).all())
    generation = OcrCollator(processor, family, for_generation=True)([rows[k] for k in kinds])
    assert "labels" not in generation and bool((generation["attention_mask"][:, -1] == 1).all())  # left padded


@pytest.mark.slow
@pytest.mark.long
def test_real_geometry_trains_two_steps_saves_reloads_and_generates_with_a_two_layer_decoder(tmp_path, monkeypatch):
    """Real width, real vision tower and real tiles, 2 decoder layers (dense + MoE), 4-bit NF4 LoRA with gradient
    checkpointing and paged 8-bit AdamW: the GPU recipe's settings through the kit's own train and infer jobs."""
    from deepsynth_ocr.config import RunConfig
    from deepsynth_ocr.jobs import train as train_job
    from deepsynth_ocr.jobs.infer import infer
    from deepsynth_ocr.jobs.train import train
    from deepsynth_ocr.memory import cpu_peak_gib
    from deepsynth_ocr.models.adapters import base_changes, base_digests

    checkpoint = published.write_checkpoint(text_layers=2)  # cached in .cache/ between runs
    train_rows = write_pages(tmp_path / "pages", ["label"], name="train")
    cfg = RunConfig.load(ROOT / "configs" / "deepseek-ocr-2-real-size-cpu.yaml", [
        f"model.name_or_path={checkpoint}", f"data.train_path={train_rows}", f"data.eval_path={train_rows}",
        "train.max_steps=2", "train.learning_rate=1e-3", f"output_root={tmp_path / 'runs'}"])
    loaded_digests = {}

    def load_and_fingerprint(cfg):
        loaded = load_model(cfg)
        loaded_digests.update(base_digests(loaded.model))
        return loaded

    load_model = train_job.load_model
    monkeypatch.setattr(train_job, "load_model", load_and_fingerprint)
    result = train(cfg)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    losses = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in losses if "loss" in r]
    assert manifest["status"] == "ok" and len(steps) == 2
    assert all(math.isfinite(r["loss"]) and 5 < r["loss"] < 20 for r in steps)  # about ln(129280) = 11.8 at random
    precision = manifest["parameters"]["language_model_precision"]
    assert precision["4bit"] > 0 and manifest["parameters"]["trained"]["lora_modules"] == 14
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    # The memory model (measured at real size by benchmarks/real_size.py) holds this run's peak within 15%.
    peak = max(r["mem/peak_rss_gib"] for r in steps)
    predicted = cpu_peak_gib(load_in_4bit=True, gradient_checkpointing=True, tiles=0, text_layers=2)
    assert abs(predicted - peak) <= 0.15 * peak, (predicted, peak)
    # Only LoRA trained: every unquantised base tensor, the whole vision side included, is bit-identical to what
    # was loaded.
    same = base_changes(loaded_digests, result.loaded.model, result.loaded.family)
    assert same["n_changed"] == 0 and same["vision_identical"] == same["vision_tensors"] > 300
    assert same["lora_B_trained"] == 14
    run_dir = result.run_dir
    del result

    # Generation reads a page with tiles (trained on a page without): both views go through the real vision tower.
    # A batch of pages with different tile counts is generated at full size by benchmarks/real_size.py (each page
    # costs at least its 1024 px global view, about 18 s here).
    pages = write_pages(tmp_path / "pages", ["cheque"], name="infer")
    images = [str(tmp_path / "pages" / json.loads(line)["image"]) for line in pages.read_text().splitlines()]
    cfg.infer.adapter = str(run_dir / "adapter")
    cfg.infer.batch_size, cfg.infer.max_new_tokens = 1, 2
    out = tmp_path / "infer.jsonl"
    infer(images, out, cfg)
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["error"] for p in predictions] == [None] and isinstance(predictions[0]["text"], str)
    assert 1 <= predictions[0]["n_tokens"] <= 2
