"""Save and load LoRA adapters with a verified round trip.

Why not ``PeftModel.from_pretrained``: with peft 0.21 and transformers 5.x, loading applies
transformers' checkpoint renaming for deepseek_ocr2 to the adapter keys. Its rule
``(^|model\\.)layers\\. -> \\1language_model.layers.`` also matches inside
``language_model.layers.`` and doubles it, so not one adapter weight loads and peft only warns.
The kit therefore loads adapter files by exact key and fails loudly on any key that does not land.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from deepsynth_ocr.devices import to_model
from deepsynth_ocr.errors import UserError

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterError(UserError):
    """An adapter directory that does not fit the model (missing file, a key or shape that does not land)."""

    pass


def _param_name(file_key: str, adapter_name: str) -> str:
    # Files store ".lora_A.weight"; the live module holds ".lora_A.<adapter>.weight".
    stem, _, leaf = file_key.rpartition(".")
    return f"{stem}.{adapter_name}.{leaf}"


def copy_adapter_weights(model, state: dict[str, torch.Tensor], adapter_name: str, source: str) -> int:
    """Copy adapter tensors into ``model``'s adapter ``adapter_name``; every key on both sides must match."""
    params = dict(model.named_parameters())
    wanted = {n for n in params if ".lora_" in n and f".{adapter_name}." in n}
    loaded = set()
    for key, tensor in state.items():
        name = _param_name(key, adapter_name)
        if name not in params:
            raise AdapterError(f"{source}: adapter key {key!r} matches no parameter of the model ({name!r})")
        if params[name].shape != tensor.shape:
            raise AdapterError(f"{source}: {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(params[name].shape)}")
        with torch.no_grad():
            params[name].copy_(tensor.to(params[name].dtype))
        loaded.add(name)
    missing = sorted(wanted - loaded)
    if missing:
        raise AdapterError(f"{source}: {len(missing)} adapter weights of the model were not in the file, e.g. {missing[:3]}")
    return len(loaded)


def restore_checkpoint_adapter(model, checkpoint: str | Path) -> int:
    """Put a Trainer checkpoint's LoRA weights (``ADAPTER_WEIGHTS``) into ``model``, a peft model, by exact key; every
    key must land. What a resume and ``train.keep_best`` both do."""
    path = Path(checkpoint) / ADAPTER_WEIGHTS
    return copy_adapter_weights(model, load_file(str(path)), "default", str(path))


def load_adapter(base_model, adapter_dir: str | Path, trainable: bool = False, adapter_name: str = "default"):
    """Attach the adapter saved in ``adapter_dir`` to ``base_model``; every weight is checked to land.

    A ``base_model`` that already carries adapters (a ``PeftModel``) gets this one beside them under
    ``adapter_name``: several fine-tunes then share one copy of the base (select with ``set_adapter``).
    """
    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"no adapter weights at {weights}; pass the directory written by save_adapter")
    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = not trainable
    if isinstance(base_model, PeftModel):
        if adapter_name in base_model.peft_config:
            raise AdapterError(f"{adapter_dir}: an adapter named {adapter_name!r} is already loaded")
        base_model.add_adapter(adapter_name, config)
        model = base_model
    else:
        model = get_peft_model(base_model, config, adapter_name=adapter_name)
    n = copy_adapter_weights(model, load_file(str(weights)), adapter_name, str(weights))
    log.info("adapter loaded from %s: %d tensors", adapter_dir, n)
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    return model


@torch.no_grad()
def logits(model, batch: dict, last: int | None = None) -> torch.Tensor:
    """``model``'s logits on ``batch`` (labels ignored), in eval mode, as float32 on the CPU.

    ``last`` keeps only the last positions, so comparing a real checkpoint's vocabulary stays small.
    """
    was_training = model.training
    model.eval()
    try:
        out = model(**to_model({k: v for k, v in batch.items() if k != "labels"}, model)).logits
    finally:
        model.train(was_training)
    return (out if last is None else out[:, -last:]).float().cpu()


def save_adapter(model, adapter_dir: str | Path, batch: dict, rtol: float = 0.0) -> float:
    """Save ``model``'s adapter and prove the file reproduces it on ``batch``.

    The file is loaded as a second adapter on the same base, and its logits must equal the live
    adapter's: exactly by default, or within ``rtol`` of the largest logit (Unsloth's fused LoRA
    kernels on CUDA need not add in the same order for two adapters). Returns the max absolute
    difference, raises ``AdapterError`` otherwise.
    """
    adapter_dir = Path(adapter_dir)
    model.save_pretrained(str(adapter_dir))
    expected = logits(model, batch)
    model.add_adapter("verify", PeftConfig.from_pretrained(str(adapter_dir)))
    try:
        copy_adapter_weights(model, load_file(str(adapter_dir / ADAPTER_WEIGHTS)), "verify", str(adapter_dir))
        model.set_adapter("verify")
        diff = (expected - logits(model, batch)).abs().max().item()
    finally:
        model.set_adapter("default")
        model.delete_adapter("verify")
    allowed = rtol * max(1.0, expected.abs().max().item())
    if diff > allowed:
        raise AdapterError(f"saved adapter at {adapter_dir} does not reproduce the model (max logit diff {diff}, allowed {allowed:g})")
    log.info("adapter saved to %s and verified (reloaded logits differ by %g, allowed %g)", adapter_dir, diff, allowed)
    return diff


def base_digests(model) -> dict[str, str]:
    """SHA-256 of every floating, non-LoRA parameter's bytes, by name without the peft prefix: what training must
    leave bit-identical (4-bit packed weights are uint8 and never trainable, so they are left out)."""
    import hashlib

    out = {}
    for name, p in model.named_parameters():
        if ".lora_" in name or not p.dtype.is_floating_point:
            continue
        data = p.detach().cpu().contiguous().view(torch.uint8).numpy()
        out[name.removeprefix("base_model.model.").replace(".base_layer.", ".")] = hashlib.sha256(data).hexdigest()
    return out


def base_changes(before: dict[str, str], model, family) -> dict:
    """What training changed of the base since ``before`` (``base_digests`` after loading): the tensors that differ,
    how many of the vision side stayed bit-identical, and how many LoRA B matrices left their zero start."""
    after = base_digests(model)
    changed = sorted(n for n in before if after.get(n) != before[n])
    vision = [n for n in before if n.startswith(family.vision_prefixes)]
    trained = sum(1 for n, p in model.named_parameters() if ".lora_B." in n and bool(p.detach().abs().sum() > 0))
    return {"compared": len(before), "changed": changed[:5], "n_changed": len(changed), "vision_tensors": len(vision),
            "vision_identical": sum(1 for n in vision if n not in changed), "lora_B_trained": trained}
