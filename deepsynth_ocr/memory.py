"""Memory of a recipe before it starts: weight arithmetic from the released geometry, activations as measured.

Weights: the model is built on the meta device (no weights, no download) in DeepSeek-OCR-2's released
geometry (``models.published``: SAM ViT-B + Qwen2-0.5B-shaped encoder, DeepSeek3B-MoE decoder of hidden
1280, 12 layers, 64 routed experts of width 896 plus 2 shared, vocabulary 129280), at any decoder depth.
transformers' bitsandbytes integration quantises ``nn.Linear`` layers only (the kit skips the vision side
and the head); the routed experts are fused 3-D parameters and stay 16-bit there, while Unsloth
quantises them with its own patches. NF4 with double quantisation stores about 4.13 bits per weight.

Activations: measured, not planned. ``benchmarks/real_size.py`` trains the released geometry through the
kit's own train job on this CPU kind (float32 compute), one step per page of 0, 2 and 6 tiles, at 12 and 2
decoder layers, in three settings, and fits per setting
``GiB = a0 + a1 * tiles + a2 * tiles**2 + layers * (b0 + b1 * tiles)`` (the step's peak resident memory less the resident
memory after loading) into ``memory_cpu.json`` beside this module, with the measured bfloat16 / float32
ratio of the same step. A GPU estimate scales the float32 figure by that ratio: it is a CPU measurement, and
GPU allocators and kernels (flash attention) differ; the GPU proof measures the real peak. On the CPU the
ratio measured 1.06 (its bfloat16 kernels work through float32 temporaries), so the GPU estimate errs high.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

MEASURED_FILE = Path(__file__).with_name("memory_cpu.json")
NF4_BYTES = 4.127 / 8  # 4-bit codes + double-quantised absmax per 64-weight block
BF16_BYTES = 2
FP32_BYTES = 4
GIB = 2**30
CUDA_CONTEXT_GIB = 0.8
# The page the estimate plans for when the data is not known yet: the most tiles the processor cuts.
PLANNING_TILES = 6
# DeepSeek-OCR (v1)'s vision side, SAM ViT-B + CLIP-L (~0.39 B, 16-bit in every load): v1's vision is not the
# released DeepSeek-OCR-2 one the meta build has, so its count is taken from the published encoders.
V1_VISION_PARAMS = 390_000_000


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
def published_split(family_name: str, text_layers: int = 12) -> dict[str, int]:
    """``language_model_split`` of the released model at ``text_layers`` decoder layers (DeepSeek-OCR and -OCR-2
    share the decoder); DeepSeek-OCR v1 gets its own vision count."""
    import torch
    from transformers import DeepseekOcr2ForConditionalGeneration

    from deepsynth_ocr.models.families import get_family
    from deepsynth_ocr.models.published import model_config

    with torch.device("meta"):
        model = DeepseekOcr2ForConditionalGeneration(model_config(text_layers))
    split = language_model_split(model, get_family("deepseek-ocr-2"))
    return {**split, "vision": V1_VISION_PARAMS} if family_name == "deepseek-ocr" else split


def weight_bytes(split: dict[str, int], backend: str, load_in_4bit: bool, dtype_bytes: int = BF16_BYTES) -> float:
    """Bytes of the weights: the vision side unquantised always; the language model unquantised, or 4-bit as each
    backend quantises it (hf: nn.Linear only; unsloth: the routed experts too). ``dtype_bytes`` is the unquantised
    width: 2 on a GPU, 4 in float32 on a CPU."""
    lm = split["4bit (nn.Linear)"] + split["16bit routed experts"] + split["16bit other"]
    if not load_in_4bit:
        return (lm + split["vision"]) * dtype_bytes
    four = split["4bit (nn.Linear)"] + (split["16bit routed experts"] if backend == "unsloth" else 0)
    return four * NF4_BYTES + (lm - four + split["vision"]) * dtype_bytes


@functools.cache
def measured() -> dict:
    """The activation model ``benchmarks/real_size.py`` measured (see the module docstring)."""
    if not MEASURED_FILE.is_file():
        raise FileNotFoundError(f"{MEASURED_FILE} is missing: it ships with the package; `make real-size` rewrites it")
    return json.loads(MEASURED_FILE.read_text())


def setting(load_in_4bit: bool, gradient_checkpointing: bool) -> str:
    """The measured setting a recipe's activations follow (4-bit without checkpointing keeps every activation,
    as unquantised LoRA without checkpointing does)."""
    if not gradient_checkpointing:
        return "lora"
    return "nf4-lora-ckpt" if load_in_4bit else "lora-ckpt"


def activation_gib(name: str, tiles: int, text_layers: int = 12, dtype_bytes: int = FP32_BYTES) -> float:
    """Measured activation memory of one page of ``tiles`` tiles in setting ``name`` (batch 1)."""
    m = measured()
    c = m["activation"][name]
    gib = c["a0"] + c["a1"] * tiles + c["a2"] * tiles**2 + text_layers * (c["b0"] + c["b1"] * tiles)
    return max(0.0, gib * (m["bf16_over_fp32"] if dtype_bytes == BF16_BYTES else 1.0))


def load_overhead_gib() -> float:
    """Resident memory after loading beyond the weights' bytes (the Python process, torch, the tokenizer and
    processor, allocator slack), as measured: the median over the benchmark's loads."""
    rows = measured()["rows"]
    extra = sorted(r["rss_after_load_gib"] - cpu_weight_gib(r["setting"], r["layers"]) for r in rows)
    return extra[len(extra) // 2]


def cpu_weight_gib(name: str, text_layers: int) -> float:
    return weight_bytes(published_split("deepseek-ocr-2", text_layers), "hf", name.startswith("nf4"), FP32_BYTES) / GIB


def cpu_peak_gib(load_in_4bit: bool, gradient_checkpointing: bool, tiles: int, text_layers: int = 12) -> float:
    """Peak resident memory of a float32 LoRA training step on the CPU (hf backend, batch 1): weights +
    measured load overhead + measured activations."""
    name = setting(load_in_4bit, gradient_checkpointing)
    return cpu_weight_gib(name, text_layers) + load_overhead_gib() + activation_gib(name, tiles, text_layers)


def estimate(family: str, backend: str, load_in_4bit: bool, batch_size: int, gpu_gib: float | None,
             gradient_checkpointing: bool = True, tiles: int = PLANNING_TILES) -> dict:
    """What a training run of this recipe needs on the GPU, and whether ``gpu_gib`` holds it (None: no GPU)."""
    if family == "tiny":
        return {"family": family, "total_gib": 0.0, "fits": True,
                "note": "the tiny model needs well under 1 GiB (it trains on a CPU)"}
    split = published_split(family)
    weights = weight_bytes(split, "unsloth" if backend == "unsloth" else "hf", load_in_4bit) / GIB
    activations = activation_gib(setting(load_in_4bit, gradient_checkpointing), tiles, 12, BF16_BYTES) * batch_size
    total = weights + activations + CUDA_CONTEXT_GIB
    out = {"family": family, "weights_gib": round(weights, 2), "activations_gib": round(activations, 2),
           "total_gib": round(total, 2), "gpu_gib": gpu_gib, "fits": gpu_gib is not None and total <= 0.95 * gpu_gib,
           "activations_basis": f"measured on a CPU for a {tiles}-tile page, scaled to bfloat16 (docs/benchmarks.md#real_size)"}
    if gpu_gib is None:
        out["note"] = "no GPU on this machine: this recipe trains on a CUDA GPU"
    elif not out["fits"]:
        out["note"] = (f"needs about {total:.1f} GiB, the GPU has {gpu_gib:.1f} GiB: lower train.per_device_batch_size "
                       "(raise gradient_accumulation_steps), or set model.load_in_4bit / model.backend unsloth")
    else:
        out["note"] = f"about {total:.1f} GiB of {gpu_gib:.1f} GiB"
    return out
