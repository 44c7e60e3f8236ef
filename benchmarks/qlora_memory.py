"""Weight memory of DeepSeek-OCR-2's language model under each backend's 4-bit load, from its published geometry.

transformers' bitsandbytes integration quantises ``nn.Linear`` layers only (the kit skips the vision
side and the head); DeepSeek-OCR-2's routed experts are fused 3-D parameters and stay 16-bit. Unsloth
quantises fused experts with its own patches. The model is built on the meta device (no weights, no
download) with the decoder geometry DeepSeek-OCR and DeepSeek-OCR-2 publish (DeepSeek3B-MoE: hidden 1280,
12 layers of which the first is dense, 64 routed experts of width 896 plus 2 shared, vocabulary 129280),
and the kit's 4-bit skip list. NF4 with double quantisation stores about 4.13 bits per weight.

    python benchmarks/qlora_memory.py
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

from deepsynth_ocr.models.backends import is_vision_param
from deepsynth_ocr.models.families import get_family

PUBLISHED_TEXT_CONFIG = {
    "hidden_size": 1280, "intermediate_size": 6848, "moe_intermediate_size": 896, "num_hidden_layers": 12,
    "num_attention_heads": 10, "num_key_value_heads": 10, "n_routed_experts": 64, "n_shared_experts": 2,
    "num_experts_per_tok": 6, "vocab_size": 129280, "mlp_layer_types": ["dense"] + ["sparse"] * 11,
}
NF4_BYTES = 4.127 / 8  # 4-bit codes + double-quantised absmax per 64-weight block
BF16_BYTES = 2


def language_model_split(model, family) -> dict[str, int]:
    """Language-model parameters by what a transformers 4-bit load does with them."""
    skip = family.quant_skip_modules
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith(skip)}
    out = {"4bit (nn.Linear)": 0, "16bit routed experts": 0, "16bit other": 0}
    for name, p in model.named_parameters():
        if is_vision_param(name, family):
            continue
        if name.rsplit(".", 1)[0] in linear:
            out["4bit (nn.Linear)"] += p.numel()
        elif ".mlp.experts." in name:
            out["16bit routed experts"] += p.numel()
        else:
            out["16bit other"] += p.numel()
    return out


def main() -> None:
    family = get_family("deepseek-ocr-2")
    with torch.device("meta"):
        model = DeepseekOcr2ForConditionalGeneration(DeepseekOcr2Config(text_config=PUBLISHED_TEXT_CONFIG))
    split = language_model_split(model, family)
    total = sum(split.values())
    hf = split["4bit (nn.Linear)"] * NF4_BYTES + (total - split["4bit (nn.Linear)"]) * BF16_BYTES
    unsloth = (split["4bit (nn.Linear)"] + split["16bit routed experts"]) * NF4_BYTES + split["16bit other"] * BF16_BYTES
    print(f"language model: {total / 1e9:.2f} B parameters")
    for k, v in split.items():
        print(f"  {k}: {v / 1e9:.3f} B ({100 * v / total:.0f}%)")
    print("| load | language-model weights |\n|---|---|")
    print(f"| bf16 | {total * BF16_BYTES / 2**30:.2f} GiB |")
    print(f"| hf backend, 4-bit (nn.Linear only) | {hf / 2**30:.2f} GiB |")
    print(f"| unsloth backend, 4-bit (experts too) | {unsloth / 2**30:.2f} GiB |")


if __name__ == "__main__":
    import record  # benchmarks/record.py, beside this script

    record.main("qlora_memory", main)
