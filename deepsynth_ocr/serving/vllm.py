"""The ``vllm serve`` command for a fine-tuned model, following vLLM's official DeepSeek-OCR recipe.

The recipe: the ``NGramPerReqLogitsProcessor`` loaded server-side (clients pass its arguments,
``ngram_size=30, window_size=90`` and the ``<td>``/``</td>`` whitelist, as ``vllm_xargs``), prefix
caching and the multimodal processor cache off. vLLM's DeepSeek-OCR processors cut pages into at
most 6 crops (``MAX_CROPS``, hard-coded), so a family trained with more (v1 allows 9) is warned about.

What vLLM is given: the run's merged 16-bit weights when they exist (``deepsynth-ocr export``), else
the base plus the adapter through vLLM's LoRA support, which covers DeepSeek-OCR's language-model
linear layers only (vLLM PR #31569); an adapter that touches anything else needs the merged weights.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from safetensors import safe_open

from deepsynth_ocr.errors import UserError
from deepsynth_ocr.models.adapters import ADAPTER_WEIGHTS
from deepsynth_ocr.models.families import Family

NGRAM_PROCESSOR = "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"
# The recipe's per-request arguments, which clients send in extra_body (the kit's server accepts them too).
RECIPE_XARGS = {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
VLLM_MAX_CROPS = 6
# Module names vLLM's DeepSeek-OCR LoRA does not cover: routed MoE experts (v1 names them experts.N).
_NOT_IN_VLLM_LORA = re.compile(r"\.experts\.\d+\.")


def family_max_crops(family: Family) -> int | None:
    if family.v1_geometry is not None:
        return family.v1_geometry.max_crops
    return family.image_kwargs.get("max_patches") if family.image_kwargs.get("crop_to_patches") else None


def crop_warning(family: Family) -> str | None:
    crops = family_max_crops(family)
    if crops is not None and crops > VLLM_MAX_CROPS:
        return (f"family {family.name} trains with up to {crops} crops, vLLM reads at most {VLLM_MAX_CROPS}: pages that "
                f"need more are tiled differently when served than when trained (train with at most {VLLM_MAX_CROPS} "
                "crops, or compare CER on large pages before switching)")
    return None


def adapter_outside_vllm_lora(adapter_dir: Path, family: Family) -> list[str]:
    """The adapter's weights vLLM's LoRA would not apply (vision side, routed experts)."""
    with safe_open(str(Path(adapter_dir) / ADAPTER_WEIGHTS), "pt") as f:
        keys = list(f.keys())
    vision = tuple(p.removeprefix("model.") for p in family.vision_prefixes)
    return [k for k in keys if _NOT_IN_VLLM_LORA.search(k) or any(v in k for v in vision)]


def lora_rank(adapter_dir: Path) -> int:
    return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"])


def serve_command(model: str, served_name: str, host: str, port: int, lora: dict[str, Path] | None = None) -> list[str]:
    """``vllm serve`` arguments: ``model`` (merged weights or the base) under ``served_name``, plus LoRA modules."""
    cmd = ["vllm", "serve", model, "--served-model-name", served_name, "--host", host, "--port", str(port),
           "--logits-processors", NGRAM_PROCESSOR, "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0"]
    if lora:
        cmd += ["--enable-lora", "--max-lora-rank", str(max(lora_rank(d) for d in lora.values())),
                "--lora-modules", *(f"{name}={Path(d).resolve()}" for name, d in lora.items())]
    return cmd


def plan(merged: Path | None, base: str, base_name: str, adapters: dict[str, Path], family: Family,
         host: str, port: int) -> tuple[list[str], list[str]]:
    """The command for what is to be served, and notes for the script (warnings a user must see)."""
    notes = [w for w in [crop_warning(family)] if w]
    if merged is not None:
        if len(adapters) > 1:
            raise UserError("vLLM serves one set of merged weights per server; serve the other adapters from a second "
                            "server, or give them as LoRA adapters without merged weights")
        (name,) = adapters or [base_name]
        return serve_command(str(Path(merged).resolve()), name, host, port), notes
    for name, directory in adapters.items():
        outside = adapter_outside_vllm_lora(directory, family)
        if outside:
            raise UserError(f"adapter {name!r} adapts {len(outside)} weights vLLM's DeepSeek-OCR LoRA does not cover "
                            f"(e.g. {outside[0]}); run `deepsynth-ocr export RUN_DIR` and serve its merged weights")
    return serve_command(base, base_name, host, port, adapters or None), notes


def script(cmd: list[str], notes: list[str]) -> str:
    """A shell script that runs ``cmd``; API keys come from the environment, never from the file."""
    lines = ["#!/bin/sh", "# Written by `deepsynth-ocr serve --backend vllm`: vLLM's DeepSeek-OCR recipe for this model.",
             "# Clients send the NGram processor's arguments per request, as with the kit's own server:",
             f"#   extra_body={{\"vllm_xargs\": {RECIPE_XARGS}, \"skip_special_tokens\": False}}",
             "# Set VLLM_API_KEY in the environment to require a key.",
             *(f"# NOTE: {n}" for n in notes),
             "exec " + " \\\n  ".join(shlex.quote(c) for c in cmd), ""]
    return "\n".join(lines)
