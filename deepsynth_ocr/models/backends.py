"""Load a model + processor for a family and prepare it for training.

Both backends share everything but loading and LoRA attachment. The ``hf`` backend (transformers
+ peft, bitsandbytes for 4-bit) runs anywhere; ``unsloth`` needs CUDA.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass

import torch

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.models.families import Family, get_family

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    family: Family
    backend: str
    backend_reason: str
    frozen_params: int = 0
    trainable_params: int = 0


def choose_backend(requested: str) -> tuple[str, str]:
    """Resolve ``auto`` to a concrete backend, with the reason (logged and written to the manifest)."""
    has_cuda = torch.cuda.is_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "hf":
        return "hf", "requested in config"
    if requested == "unsloth":
        if not (has_cuda and has_unsloth):
            missing = "CUDA" if not has_cuda else "the unsloth package"
            raise RuntimeError(
                f"model.backend: 'unsloth' was requested but {missing} is not available; "
                "use backend 'hf' (or 'auto') on this machine"
            )
        return "unsloth", "requested in config"
    if has_cuda and has_unsloth:
        return "unsloth", "auto: unsloth is importable and CUDA is present"
    why = "no CUDA device" if not has_cuda else "unsloth is not installed"
    return "hf", f"auto: {why}, using transformers + peft"


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_base(cfg: RunConfig):
    """Model and processor for ``cfg.model``, before any freezing or adapters.

    A checkpoint directory or hub id (any family, the tiny one included) goes through
    ``from_pretrained``; only the ``tiny`` family with no path is built in code, randomly initialised.
    """
    family = get_family(cfg.model.family)
    if family.tiny_geometry is not None and not cfg.model.name_or_path:
        from deepsynth_ocr.models import tiny

        tokenizer = tiny.build_tiny_tokenizer()
        processor = tiny.build_tiny_processor(tokenizer, family.tiny_geometry)
        model = tiny.build_tiny_model(tokenizer, family.tiny_geometry, seed=cfg.seed)
        return model.to(_dtype(cfg.model.dtype)), processor, family
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs = {"revision": cfg.model.revision or None}
    processor = AutoProcessor.from_pretrained(cfg.model.name_or_path, **kwargs)
    model = AutoModelForImageTextToText.from_pretrained(
        cfg.model.name_or_path, dtype=_dtype(cfg.model.dtype), **kwargs
    )
    return model, processor, family


def is_vision_param(name: str, family: Family) -> bool:
    # peft wraps the model as base_model.model.<original path>
    name = name.removeprefix("base_model.model.")
    return name.startswith(family.vision_prefixes)


def prepare_for_training(model, family: Family, cfg: RunConfig):
    """Freeze the vision side, attach LoRA to the language model (or unfreeze it), count, assert."""
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=family.lora_target_pattern,
            bias="none",
        ))
    else:
        for name, p in model.named_parameters():
            if not is_vision_param(name, family):
                p.requires_grad_(True)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainable_vision = [n for n, p in model.named_parameters() if p.requires_grad and is_vision_param(n, family)]
    if not frozen or not trainable:
        raise RuntimeError(f"expected frozen and trainable parameters, got frozen={frozen} trainable={trainable}")
    if trainable_vision:
        raise RuntimeError(f"vision parameters must stay frozen, but these train: {trainable_vision[:5]}")
    if cfg.lora.enabled:
        pattern = re.compile(family.lora_target_pattern)
        adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
        off_target = [n for n in adapted if not pattern.fullmatch(n.removeprefix("base_model.model."))]
        if not adapted or off_target:
            raise RuntimeError(f"LoRA attached to unexpected modules: {sorted(off_target)[:5]} (adapted {len(adapted)})")
    return model, frozen, trainable


def load_model(cfg: RunConfig, for_training: bool = True) -> LoadedModel:
    backend, reason = choose_backend(cfg.model.backend)
    log.info("backend: %s (%s)", backend, reason)
    if backend == "unsloth":
        raise NotImplementedError("the unsloth backend is not implemented yet; set model.backend: hf")
    model, processor, family = load_base(cfg)
    loaded = LoadedModel(model, processor, family, backend, reason)
    if for_training:
        loaded.model, loaded.frozen_params, loaded.trainable_params = prepare_for_training(model, family, cfg)
        log.info("parameters: %d frozen, %d trainable (%.2f%%), vision frozen",
                 loaded.frozen_params, loaded.trainable_params,
                 100 * loaded.trainable_params / (loaded.frozen_params + loaded.trainable_params))
    return loaded
