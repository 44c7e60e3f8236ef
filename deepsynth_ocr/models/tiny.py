"""A tiny, randomly initialised DeepSeek-OCR-2 and a tokenizer built locally.

The model is the real ``DeepseekOcr2ForConditionalGeneration`` from transformers with every size
shrunk, so the kit's collator, trainer, generation and adapters run against the same code paths a
real checkpoint uses, on a CPU and without any hub access.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import torch

# The DeepSeek-OCR-2 classes are looked up when a tiny model is built, not at import: the tokenizer
# also serves DeepSeek-OCR v1's tests in the transformers 4.x environment, which has no deepseek_ocr2.
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn
from transformers import PreTrainedTokenizerFast

from deepsynth_ocr.config import ConfigError

BOS, EOS, PAD, UNK, IMAGE = "<s>", "</s>", "<pad>", "<unk>", "<image>"
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK, IMAGE)

# ``model.name_or_path`` value that builds the random tiny model in code instead of loading the base.
RANDOM = "random"
# The pretrained tiny base that ``make tiny-base`` writes (deepsynth_ocr.models.tiny_base).
BUNDLED_BASE = Path(__file__).resolve().parents[2] / "data" / "tiny-base"
BASE_WEIGHTS = "model.safetensors"
BASE_MANIFEST = "manifest.json"


class BaseMismatchError(ConfigError):
    """A tiny base directory's weights do not match its manifest."""


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_base(directory: Path) -> Path:
    """Check a tiny base's weights against its manifest's SHA-256 before loading it.

    A clone without Git LFS, a partial copy or a hand-edited file would otherwise load as a model
    that silently reads worse than its manifest says. One run asks several times (prepare's
    tokenizer, the model, the run manifest, the model card), so a check is remembered until either
    file changes.
    """
    stamps = tuple(f.stat().st_mtime_ns if f.is_file() else None for f in (directory / BASE_WEIGHTS, directory / BASE_MANIFEST))
    _check_base(directory, stamps)
    return directory


@cache
def _check_base(directory: Path, stamps: tuple) -> None:
    expected = json.loads((directory / BASE_MANIFEST).read_text())["weights_sha256"]
    weights = directory / BASE_WEIGHTS
    actual = file_sha256(weights) if weights.is_file() else "(missing)"
    if actual != expected:
        raise BaseMismatchError(
            f"model.name_or_path: {weights} does not match {directory / BASE_MANIFEST} (sha256 {actual[:12]}, "
            f"expected {expected[:12]}). Rebuild it with `make tiny-base` or restore the directory from git.")


def build_tiny_tokenizer(pad_token: str = PAD) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: one token per UTF-8 byte, so any script (Latin, Persian, ...) round-trips.

    ``pad_token`` exists so tests can build the pad == EOS case that real checkpoints often have.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=pad_token,
        unk_token=UNK,
        padding_side="right",
    )


def tiny_model_config(tokenizer: PreTrainedTokenizerFast, geometry) -> transformers.DeepseekOcr2Config:
    """Config of the tiny model. ``geometry`` is a ``families.TinyGeometry``."""
    sam_hidden = 32
    encoder_hidden = 64
    text_hidden = geometry.text_hidden_size
    return transformers.DeepseekOcr2Config(
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_config={
            "sam_config": {
                "hidden_size": sam_hidden,
                "output_channels": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": geometry.image_size,
                "patch_size": geometry.sam_patch_size,
                "window_size": geometry.sam_window_size,
                "global_attn_indexes": list(geometry.sam_global_layers),
                # The DeepEncoder's hidden size must equal the last downsample channel count.
                "downsample_channels": [48, encoder_hidden],
                "mlp_ratio": 2.0,
            },
            "encoder_config": {
                "hidden_size": encoder_hidden,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "vocab_size": 8,
                "max_position_embeddings": 512,
            },
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": text_hidden,
            "intermediate_size": 2 * text_hidden,
            "num_hidden_layers": geometry.text_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 1024,
            # Dense first, then MoE layers, like the real model's dense-then-sparse stack.
            "mlp_layer_types": ["dense"] + ["sparse"] * (geometry.text_layers - 1),
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_shared_experts": 1,
            "moe_intermediate_size": text_hidden,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
    )


def reinit_sam(model: nn.Module) -> int:
    """Give the SAM encoder weights that respond to the image; returns how many modules changed.

    The SAM config's ``initializer_range`` defaults to 1e-10 (the real model is always loaded from
    pretrained weights). Randomly initialised at that scale, SAM maps every image to the same
    features and the decoder can never learn to read, while its loss still falls.
    """
    changed = 0
    for module in model.model.vision_tower.sam_encoder.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            changed += 1
    return changed


def scale_output_head(model: nn.Module) -> None:
    """Give the output head the scale of a trained one: std 1/sqrt(hidden) instead of 0.02.

    After the final RMSNorm the hidden state has unit RMS, so with 0.02-std head rows every logit
    stays within about +-1.3. LoRA leaves the head and the norm frozen, so the model could rank the
    right token first but never become confident in it: greedy decoding flickers between tokens
    while the loss plateaus near log(vocab). A real checkpoint's head has no such bound.
    """
    head = model.lm_head.weight
    nn.init.normal_(head, mean=0.0, std=head.shape[1] ** -0.5)


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, geometry, seed: int
) -> transformers.DeepseekOcr2ForConditionalGeneration:
    """Random tiny DeepSeek-OCR-2, identical for identical ``seed``."""
    config = tiny_model_config(tokenizer, geometry)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = transformers.DeepseekOcr2ForConditionalGeneration(config)
        reinit_sam(model)
        scale_output_head(model)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_tiny_processor(tokenizer: PreTrainedTokenizerFast, geometry) -> transformers.DeepseekOcr2Processor:
    """Processor whose placeholder count matches what the tiny vision tower emits per view."""
    image_processor = transformers.DeepseekOcr2ImageProcessorPil(
        size={"height": geometry.image_size, "width": geometry.image_size},
        tile_size=geometry.tile_size,
    )
    return transformers.DeepseekOcr2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=geometry.processor_patch_size,
        downsample_ratio=4,
    )
