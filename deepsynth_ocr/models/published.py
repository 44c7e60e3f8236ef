"""A DeepSeek-OCR-2 checkpoint of the released size, with random seeded weights, written without a hub.

The kit loads the directory this writes exactly like a downloaded ``deepseek-community/DeepSeek-OCR-2``
(``model.family: deepseek-ocr-2``, ``model.name_or_path: <dir>``): same loader, quantisation,
processor, collator, trainer and evaluator. It exists so the path users run on a GPU (a 1024 px page
in 768 px tiles, a 3 B mixture-of-experts decoder) can run, slowly, on a CPU with no network.

Where the numbers come from:
- vision: transformers 5.17's ``convert_deepseek_ocr2_weights_to_hf.py`` (``convert_config``), which
  maps the released ``config.json`` of deepseek-ai/DeepSeek-OCR-2: SAM ViT-B (width 768, 12 layers,
  12 heads, global attention at layers 2, 5, 8, 11, neck channels 512 -> 896) and the Qwen2-0.5B-shaped
  encoder (hidden 896, 24 layers, 14 heads, 2 key-value heads, MLP 4864, RMS eps 1e-6, rope theta 1e6);
  the SAM defaults of ``DeepseekOcr2SamVisionConfig`` (1024 px, patch 16, window 14, output 256) are
  the released ones. The projector is a Linear from 896 to the decoder width 1280.
- decoder: the released ``language_config`` (DeepSeek3B-MoE, as DeepSeek-OCR v1): hidden 1280, 12
  layers of which the first is dense (``first_k_dense_replace`` 1), 10 heads, MLP 6848, 64 routed
  experts of width 896 and 2 shared, 6 experts per token, vocabulary 129280; ``image_token_id`` 128815
  (``DeepseekOcr2Config``'s default, the released tokenizer's ``<image>``).
- tokenizer: the released vocabulary size (129280) with the special tokens at their released ids
  (BOS ``<｜begin▁of▁sentence｜>`` 0, EOS ``<｜end▁of▁sentence｜>`` 1, pad ``<｜▁pad▁｜>`` 2, ``<image>``
  128815). Its merges are learnt here from rendered-document text, so a line costs a similar number
  of tokens, not the same tokens; the rest of the vocabulary is reserved entries.

``text_layers`` below 12 gives the same model at reduced decoder depth (real width, real vision, real
vocabulary): the CI test's geometry, and the per-layer extrapolation of ``benchmarks/real_size.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from deepsynth_ocr.cache import cache_root

log = logging.getLogger(__name__)

PUBLISHED_TEXT_CONFIG = {
    "hidden_size": 1280, "intermediate_size": 6848, "moe_intermediate_size": 896, "num_hidden_layers": 12,
    "num_attention_heads": 10, "num_key_value_heads": 10, "n_routed_experts": 64, "n_shared_experts": 2,
    "num_experts_per_tok": 6, "vocab_size": 129280, "mlp_layer_types": ["dense"] + ["sparse"] * 11,
    "max_position_embeddings": 8192, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2,
}
PUBLISHED_VISION_CONFIG = {
    "sam_config": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "global_attn_indexes": [2, 5, 8, 11], "downsample_channels": [512, 896]},
    "encoder_config": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                       "num_key_value_heads": 2, "intermediate_size": 4864, "rms_norm_eps": 1e-6,
                       "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "vocab_size": 1},
}
IMAGE_TOKEN_ID = 128815
BOS, EOS, PAD, IMAGE = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image>"
SPECIAL_IDS = {BOS: 0, EOS: 1, PAD: 2, IMAGE: IMAGE_TOKEN_ID}
# Upper bound on learnt entries; the page corpus (data.real_pages) yields fewer, enough for its words to be
# one or two tokens each, as with the released tokenizer.
BPE_VOCAB = 16000
MANIFEST = "deepsynth_published.json"
WRITER_VERSION = 1  # bump when what this module writes changes: cached directories are rebuilt


def default_dir(text_layers: int = 12, seed: int = 0) -> Path:
    """Where written checkpoints are kept between runs, outside git (``cache.cache_root()``)."""
    depth = "" if text_layers == 12 else f"-{text_layers}layers"
    return cache_root() / f"deepseek-ocr-2-published{depth}-seed{seed}"


def model_config(text_layers: int = 12):
    """``DeepseekOcr2Config`` of the released model, the decoder cut to ``text_layers`` (first dense, rest MoE)."""
    import transformers

    if not 1 <= text_layers <= 12:
        raise ValueError(f"text_layers must be 1..12, got {text_layers}")
    text = {**PUBLISHED_TEXT_CONFIG, "num_hidden_layers": text_layers,
            "mlp_layer_types": ["dense"] + ["sparse"] * (text_layers - 1)}
    return transformers.DeepseekOcr2Config(vision_config=PUBLISHED_VISION_CONFIG, text_config=text,
                                           image_token_id=IMAGE_TOKEN_ID)


def build_tokenizer():
    """Byte-level BPE with the released vocabulary size and special-token ids (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    vocab_size = PUBLISHED_TEXT_CONFIG["vocab_size"]
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from deepsynth_ocr.data.real_pages import corpus

    learner.train_from_iterator(corpus(5000), trainers.BpeTrainer(
        vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    learnt = json.loads(learner.to_str())["model"]
    # Learnt tokens go after the three leading specials, then reserved entries fill the released size with
    # <image> at its released id.
    ordered = sorted(learnt["vocab"].items(), key=lambda kv: kv[1])
    vocab = {BOS: 0, EOS: 1, PAD: 2}
    for token, _ in ordered:
        vocab[token] = len(vocab)
    reserved = 0
    while len(vocab) < vocab_size:
        if len(vocab) == IMAGE_TOKEN_ID:
            vocab[IMAGE] = IMAGE_TOKEN_ID
            continue
        vocab[f"<｜reserved▁{reserved}｜>"] = len(vocab)
        reserved += 1
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    tok.add_special_tokens([BOS, EOS, PAD, IMAGE])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   padding_side="right")


def build_processor(tokenizer):
    """The released processor: 1024 px global view, 768 px tiles (2-6), patch 16, downsample 4. The PIL image
    processor is saved: it is the one that loads with or without torchvision."""
    import transformers

    return transformers.DeepseekOcr2Processor(image_processor=transformers.DeepseekOcr2ImageProcessorPil(),
                                              tokenizer=tokenizer, patch_size=16, downsample_ratio=4)


def build_model(text_layers: int, seed: int, dtype):
    """The released architecture with random weights, identical for identical ``seed``. SAM is re-initialised
    (its config's 1e-10 initializer maps every image to the same features) and the head given a trained
    head's scale, as for the tiny model (``models.tiny``)."""
    import torch
    import transformers

    from deepsynth_ocr.models.tiny import reinit_sam, scale_output_head

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = transformers.DeepseekOcr2ForConditionalGeneration(model_config(text_layers))
        reinit_sam(model)
        scale_output_head(model)
    finally:
        torch.set_default_dtype(previous)
        torch.random.set_rng_state(state)
    for key, value in (("bos_token_id", 0), ("eos_token_id", 1), ("pad_token_id", 2)):
        setattr(model.generation_config, key, value)
    return model.eval()


def is_complete(directory: Path, text_layers: int, seed: int) -> bool:
    """A directory this module wrote, whole, for these settings (the manifest is written last)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("writer_version") == WRITER_VERSION and manifest.get("text_layers") == text_layers
            and manifest.get("seed") == seed and all((directory / f).is_file() for f in manifest.get("files", [])))


def write_checkpoint(out: str | Path | None = None, text_layers: int = 12, seed: int = 0, force: bool = False) -> Path:
    """Write (or reuse) the checkpoint directory; returns it. bfloat16 safetensors, as released."""
    import torch

    out = Path(out) if out else default_dir(text_layers, seed)
    if not force and is_complete(out, text_layers, seed):
        log.info("published-size checkpoint: reusing %s", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    started = time.perf_counter()
    tokenizer = build_tokenizer()
    build_processor(tokenizer).save_pretrained(out)
    model = build_model(text_layers, seed, torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    del model
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    (out / MANIFEST).write_text(json.dumps({
        "writer_version": WRITER_VERSION, "text_layers": text_layers, "seed": seed, "parameters": params,
        "dtype": "bfloat16", "seconds": round(time.perf_counter() - started, 1), "files": files,
        "note": "random weights in the released DeepSeek-OCR-2 geometry (deepsynth_ocr.models.published); "
                "not a trained model"}, indent=2) + "\n")
    log.info("published-size checkpoint: %s (%.3f B parameters, %d decoder layers) in %.0f s",
             out, params / 1e9, text_layers, time.perf_counter() - started)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deepsynth_ocr.models.published", description=__doc__.split("\n")[0])
    p.add_argument("--out", help="directory to write (default: $DEEPSYNTH_CACHE or .cache/, by depth and seed)")
    p.add_argument("--text-layers", type=int, default=12, help="decoder layers (12 as released; fewer for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rewrite even when a complete directory is there")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(write_checkpoint(args.out, args.text_layers, args.seed, args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
