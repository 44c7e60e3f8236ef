"""GPU memory of a recipe before it starts: weight arithmetic from a family's published geometry.

transformers' bitsandbytes integration quantises ``nn.Linear`` layers only (the kit skips the vision
side and the head); DeepSeek-OCR-2's routed experts are fused 3-D parameters and stay 16-bit there,
while Unsloth quantises them with its own patches. The model is built on the meta device (no weights,
no download) with the decoder geometry DeepSeek-OCR and DeepSeek-OCR-2 publish (DeepSeek3B-MoE: hidden
1280, 12 layers of which the first is dense, 64 routed experts of width 896 plus 2 shared, vocabulary
129280). NF4 with double quantisation stores about 4.13 bits per weight. Activations are not modelled:
the estimate adds a stated headroom per image of a batch, and says so.
"""

from __future__ import annotations

import functools

PUBLISHED_TEXT_CONFIG = {
    "hidden_size": 1280, "intermediate_size": 6848, "moe_intermediate_size": 896, "num_hidden_layers": 12,
    "num_attention_heads": 10, "num_key_value_heads": 10, "n_routed_experts": 64, "n_shared_experts": 2,
    "num_experts_per_tok": 6, "vocab_size": 129280, "mlp_layer_types": ["dense"] + ["sparse"] * 11,
}
NF4_BYTES = 4.127 / 8  # 4-bit codes + double-quantised absmax per 64-weight block
BF16_BYTES = 2
GIB = 2**30
# Per image of a batch (1024 px global view, up to 6 tiles, gradient checkpointing): a planning figure,
# not a measurement; the GPU proof measures the real peak.
ACTIVATION_GIB_PER_IMAGE = 1.5
CUDA_CONTEXT_GIB = 0.8
# Vision side (16-bit in every load), from the published encoders rather than the meta build (whose
# default vision config is not the released one): DeepSeek-OCR-2's DeepEncoder V2 is SAM ViT-B (~0.09 B)
# + a Qwen2-0.5B encoder (~0.49 B); DeepSeek-OCR's is SAM ViT-B + CLIP-L (~0.3 B).
VISION_PARAMS = {"deepseek-ocr-2": 0.58e9, "deepseek-ocr": 0.39e9}


def language_model_split(model, family) -> dict[str, int]:
    """Language-model parameters by what a transformers 4-bit load does with them (the vision side apart)."""
    from torch import nn

    from deepsynth_ocr.models.backends import is_vision_param

    skip = family.quant_skip_modules
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith(skip)}
    out = {"4bit (nn.Linear)": 0, "16bit routed experts": 0, "16bit other": 0, "vision": 0}
    for name, p in model.named_parameters():
        if is_vision_param(name, family):
            out["vision"] += p.numel()
        elif name.rsplit(".", 1)[0] in linear:
            out["4bit (nn.Linear)"] += p.numel()
        elif ".mlp.experts." in name:
            out["16bit routed experts"] += p.numel()
        else:
            out["16bit other"] += p.numel()
    return out


@functools.cache
def published_split(family_name: str) -> dict[str, int]:
    """``language_model_split`` of the published decoder (DeepSeek-OCR and -OCR-2 share it), with the family's
    published vision parameter count."""
    import torch
    from transformers import DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

    from deepsynth_ocr.models.families import get_family

    with torch.device("meta"):
        model = DeepseekOcr2ForConditionalGeneration(DeepseekOcr2Config(text_config=PUBLISHED_TEXT_CONFIG))
    split = language_model_split(model, get_family("deepseek-ocr-2"))
    return {**split, "vision": int(VISION_PARAMS[family_name])}


def weight_bytes(split: dict[str, int], backend: str, load_in_4bit: bool) -> float:
    """Bytes of the weights: 16-bit vision always; the language model in 16 bits, or 4-bit as each backend
    quantises it (hf: nn.Linear only; unsloth: the routed experts too)."""
    lm = split["4bit (nn.Linear)"] + split["16bit routed experts"] + split["16bit other"]
    if not load_in_4bit:
        return (lm + split["vision"]) * BF16_BYTES
    four = split["4bit (nn.Linear)"] + (split["16bit routed experts"] if backend == "unsloth" else 0)
    return four * NF4_BYTES + (lm - four + split["vision"]) * BF16_BYTES


def estimate(family: str, backend: str, load_in_4bit: bool, batch_size: int, gpu_gib: float | None) -> dict:
    """What a training run of this recipe needs on the GPU, and whether ``gpu_gib`` holds it (None: no GPU)."""
    if family == "tiny":
        return {"family": family, "total_gib": 0.0, "fits": True,
                "note": "the tiny model needs well under 1 GiB (it trains on a CPU)"}
    split = published_split(family)
    weights = weight_bytes(split, "unsloth" if backend == "unsloth" else "hf", load_in_4bit) / GIB
    activations = ACTIVATION_GIB_PER_IMAGE * batch_size
    total = weights + activations + CUDA_CONTEXT_GIB
    out = {"family": family, "weights_gib": round(weights, 2), "activations_gib": round(activations, 2),
           "total_gib": round(total, 2), "gpu_gib": gpu_gib, "fits": gpu_gib is not None and total <= 0.95 * gpu_gib}
    if gpu_gib is None:
        out["note"] = "no GPU on this machine: this recipe trains on a CUDA GPU"
    elif not out["fits"]:
        out["note"] = (f"needs about {total:.1f} GiB, the GPU has {gpu_gib:.1f} GiB: lower train.per_device_batch_size "
                       "(raise gradient_accumulation_steps), or set model.load_in_4bit / model.backend unsloth")
    else:
        out["note"] = f"about {total:.1f} GiB of {gpu_gib:.1f} GiB"
    return out
