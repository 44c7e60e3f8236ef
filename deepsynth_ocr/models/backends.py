"""Load a model + processor for a family and prepare it for training.

Both backends share everything but loading and LoRA attachment. The ``hf`` backend (transformers
+ peft, bitsandbytes for 4-bit) runs anywhere; ``unsloth`` needs CUDA.

Every keyword argument the kit passes to Unsloth, and to the transformers / bitsandbytes entry
points, is built by one ``*_kwargs`` function here. ``deepsynth_ocr.drift`` checks those same
dictionaries against the installed libraries' signatures, so a renamed argument fails a test.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.devices import compute_device, resolve_dtype, torch_dtype, trim_host_heap
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.models.adapters import load_adapter
from deepsynth_ocr.models.families import Family, get_family
from deepsynth_ocr.ranks import world

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """The one handle for a loaded model: what every function that runs a model takes."""

    model: torch.nn.Module
    processor: object
    family: Family
    backend: str = "hf"
    backend_reason: str = ""
    frozen_params: int = 0
    trainable_params: int = 0
    # Unsloth's FastVisionModel class when backend is unsloth; it must switch train/inference modes.
    fast_model: type | None = None
    gradient_checkpointing: bool | str = False
    dtype_reason: str = ""
    # trained_summary(): adapted modules and trainable parameter count (for_training loads only).
    trained: dict | None = None
    # language_model_precision() of a 4-bit hf load: how much of the language model really is 4-bit.
    lm_precision: dict | None = None

    def for_training(self) -> None:
        """Call before training. Unsloth re-arms its gradient checkpointing and training kernels."""
        if self.fast_model is not None:
            self.fast_model.for_training(self.model, **unsloth_for_training_kwargs(self.gradient_checkpointing))
            # Unsloth's training setup calls enable_input_require_grads() (its reentrant checkpointing needs
            # the language model's hook); the vision side's would only keep the frozen tower in the graph.
            drop_vision_input_grad_hooks(self.model, self.family)

    def for_inference(self) -> None:
        """Call before generation. Unsloth switches to its inference path (and back via for_training)."""
        if self.fast_model is not None:
            self.fast_model.for_inference(self.model)

    def with_adapter(self, adapter_dir: str | Path) -> LoadedModel:
        """This base with the LoRA adapter saved in ``adapter_dir`` attached (every weight checked to land)."""
        return replace(self, model=load_adapter(self.model, adapter_dir))

    def save_merged(self, out_dir: str | Path) -> Path:
        """Write the base model with the LoRA merged in, in 16 bits, plus the processor/tokenizer.

        Always through transformers + peft on an unquantised base (``export`` reloads it so, whatever backend
        trained): merging into 4-bit weights loses precision, and whether Unsloth's ``merged_16bit`` unpacks the
        experts it packed is unchecked (GPU_AUDIT_3 M4)."""
        out_dir = Path(out_dir)
        if any(getattr(m, f"is_loaded_in_{bits}", False) for m in (self.model, self.model.base_model) for bits in ("4bit", "8bit")):
            raise UserError("save_merged: cannot merge into quantised weights without loss; reload the base with "
                            "model.load_in_4bit and model.load_in_8bit false and load the adapter (what `deepsynth-ocr "
                            "export` does)")
        self.model.merge_and_unload().save_pretrained(str(out_dir))
        self.processor.save_pretrained(str(out_dir))
        return out_dir


def require_transformers_for(family: Family) -> None:
    """Stop at once, in one line, when the installed transformers cannot run the family's model code."""
    import transformers

    if int(transformers.__version__.split(".")[0]) != family.transformers_major:
        raise UserError(
            f"model.family {family.name!r} needs transformers {family.transformers_major}.x and this environment has "
            f"transformers {transformers.__version__}: use {family.environment}")


def choose_backend(requested: str) -> tuple[str, str]:
    """Resolve ``auto`` to a concrete backend, with the reason (logged and written to the manifest)."""
    has_cuda = torch.cuda.is_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "hf":
        return "hf", "requested in config"
    if requested == "unsloth":
        if world()[1] > 1:
            raise UserError("model.backend: 'unsloth' trains on one GPU; under torchrun or accelerate launch use "
                            "backend 'hf' (or 'auto'), which runs data-parallel")
        if not (has_cuda and has_unsloth):
            missing = "CUDA" if not has_cuda else "the unsloth package"
            raise UserError(
                f"model.backend: 'unsloth' was requested but {missing} is not available; "
                "use backend 'hf' (or 'auto') on this machine"
            )
        return "unsloth", "requested in config"
    if os.environ.get("DEEPSYNTH_SKIP_UNSLOTH") == "1":
        has_unsloth = False
    if world()[1] > 1:
        # Unsloth's patched training loop is written for one GPU; data-parallel runs use transformers + peft.
        return "hf", "auto: several processes (a launcher), using transformers + peft, which run data-parallel"
    if has_cuda and has_unsloth:
        try:
            importlib.import_module("unsloth")
        except Exception as e:  # a broken Unsloth install must not stop a run that hf can do
            return "hf", f"auto: unsloth is installed but failed to import ({type(e).__name__}: {e}), using transformers + peft"
        return "unsloth", "auto: unsloth imports and CUDA is present"
    why = "no CUDA device" if not has_cuda else "unsloth is not installed"
    return "hf", f"auto: {why}, using transformers + peft"


def resolve_revision(cfg: RunConfig, family: Family) -> str | None:
    """The hub revision to load. Remote-code families always load at a pinned revision.

    A local directory is loaded as it is on disk (its code is whatever the user put there).
    """
    if cfg.model.revision:
        return cfg.model.revision
    if not family.trust_remote_code or Path(cfg.model.name_or_path).is_dir():
        return None
    pinned = family.pinned_revisions.get(cfg.model.name_or_path)
    if pinned is None:
        raise ConfigError(
            f"model.revision: family {family.name!r} runs the checkpoint's own Python code, so it loads only at a "
            f"pinned revision; {cfg.model.name_or_path!r} has no pin in families.py: set model.revision to a commit "
            f"(known pins: {family.pinned_revisions})"
        )
    return pinned


def warn_remote_code(cfg: RunConfig, family: Family, revision: str | None) -> None:
    if family.trust_remote_code:
        log.warning("trust_remote_code is enabled for family %s only: %s at revision %s runs its own Python code",
                    family.name, cfg.model.name_or_path, revision or "(local directory as on disk)")


def bnb_config_kwargs(cfg: RunConfig, family: Family) -> dict:
    """BitsAndBytesConfig arguments: NF4 (or LLM.int8) on the language model, vision side and head left as they are."""
    if cfg.model.load_in_8bit:
        # llm_int8_threshold stays at bitsandbytes' 6.0: outlier features above it are computed in 16 bits.
        return {"load_in_8bit": True, "llm_int8_skip_modules": list(family.quant_skip_modules)}
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": torch_dtype(cfg.model.dtype),
        "llm_int8_skip_modules": list(family.quant_skip_modules),
    }


def attention_kernel(cfg: RunConfig) -> dict:
    """``attn_implementation`` for ``from_pretrained`` when ``model.attn_implementation`` names one; flash-attention is
    refused here, before any weight loads, where its kernel cannot run (transformers would fail deep in loading)."""
    kernel = cfg.model.attn_implementation
    if kernel == "flash_attention_2":
        import importlib.util

        if compute_device().type != "cuda":
            raise ConfigError("model.attn_implementation: flash_attention_2 runs on a CUDA GPU only, and this process "
                              "has none: use sdpa (or eager) here")
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attn_implementation: flash_attention_2 needs the flash-attn package (pip install "
                              "flash-attn --no-build-isolation, matching your torch and CUDA), or use sdpa")
    return {"attn_implementation": kernel} if kernel else {}


def hf_load_kwargs(cfg: RunConfig, family: Family) -> dict:
    """Arguments for the family's transformers auto class ``from_pretrained``."""
    kwargs = {"revision": resolve_revision(cfg, family), "dtype": torch_dtype(cfg.model.dtype), **attention_kernel(cfg)}
    device = compute_device()
    if device.type == "cuda":
        # transformers leaves a model without device_map on the CPU, 16-bit loads included.
        kwargs["device_map"] = {"": device.index}
    if family.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if cfg.model.quantised:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(**bnb_config_kwargs(cfg, family))
    return kwargs


def _keep_cpu_4bit_trainable(model) -> int:
    """bitsandbytes on CPU repacks 4-bit weights in place on the first no-grad forward (an eval
    before training); backward then fails on "a view of a leaf Variable ... in-place". Turning the
    repack off keeps eval-then-train working. Returns how many Linear4bit layers were changed."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def _wrap_processor(processor_or_tokenizer, family: Family, cfg: RunConfig):
    if family.v1_geometry is None:
        return processor_or_tokenizer
    from deepsynth_ocr.models.deepseek_ocr_v1 import V1Processor

    return V1Processor(processor_or_tokenizer, family.v1_geometry, torch_dtype(cfg.model.dtype))


def checkpoint_source(model_cfg) -> str | None:
    """The hub id or directory the weights load from; None for the random tiny model built in code.

    For the ``tiny`` family an empty ``model.name_or_path`` means the bundled pretrained base and
    ``random`` a random initialisation. A tiny base (a directory with the manifest ``make tiny-base``
    writes) is checked against its manifest's weight hash first.
    """
    if get_family(model_cfg.family).tiny_geometry is None:
        return model_cfg.name_or_path
    from deepsynth_ocr.models import tiny

    if model_cfg.name_or_path == tiny.RANDOM:
        return None
    path = Path(model_cfg.name_or_path) if model_cfg.name_or_path else tiny.BUNDLED_BASE
    if not model_cfg.name_or_path and not (path / tiny.BASE_MANIFEST).is_file():
        raise ConfigError(
            f"model.name_or_path: the bundled tiny base is missing ({path / tiny.BASE_MANIFEST} not found). "
            f"Run `make tiny-base` to pretrain it, or set model.name_or_path: {tiny.RANDOM} for a random tiny model.")
    if (path / tiny.BASE_MANIFEST).is_file():
        tiny.verify_base(path)
    return str(path)


def load_base(cfg: RunConfig) -> LoadedModel:
    """Model and processor for ``cfg.model``, before any freezing or adapters (the hf backend's load).

    Every checkpoint, the bundled tiny base included, goes through ``from_pretrained`` of a local
    directory or hub id; only ``model.name_or_path: random`` builds the tiny model in code.
    4-bit loading needs ``from_pretrained`` (bitsandbytes quantises while loading), so a random tiny
    model asked for in 4-bit is first written to a temporary checkpoint and loaded back from it.
    """
    family = get_family(cfg.model.family)
    require_transformers_for(family)
    source = checkpoint_source(cfg.model)
    if source is None:
        from deepsynth_ocr.models import tiny

        tokenizer = tiny.build_tiny_tokenizer()
        processor = tiny.build_tiny_processor(tokenizer, family.tiny_geometry)
        model = tiny.build_tiny_model(tokenizer, family.tiny_geometry, seed=cfg.seed)
        if cfg.model.quantised:
            with tempfile.TemporaryDirectory(prefix="deepsynth-tiny-") as tmp:
                model.save_pretrained(tmp)
                processor.save_pretrained(tmp)
                model, processor, family = _from_pretrained(cfg, family, tmp)
        else:
            model = model.to(device=compute_device(), dtype=torch_dtype(cfg.model.dtype))
            if kernel := attention_kernel(cfg):  # what from_pretrained does with the argument, for a model built here
                model.set_attn_implementation(kernel["attn_implementation"])
    else:
        model, processor, family = _from_pretrained(cfg, family, source)
    _eager_experts_on_cpu(model, family)
    if (released := trim_host_heap()) > 0.1:
        log.info("loading left %.1f GiB of freed temporaries in the heap; handed back to the system", released)
    return LoadedModel(model, processor, family, "hf", "base model")


def _eager_experts_on_cpu(model, family: Family) -> None:
    """transformers 5.17 runs the mixture-of-experts layers of native DeepSeek-OCR-2 through
    ``grouped_mm`` by default; on CPU its fallback is slower than the per-expert loop. Measured on the
    tiny base (2 cores): batch-16 generation 110 -> 137 images/s, a batch-16 training step 8% faster."""
    if family.v1_geometry is None and not torch.cuda.is_available():
        model.set_experts_implementation("eager")


def _from_pretrained(cfg: RunConfig, family: Family, path: str):
    import transformers

    kwargs = hf_load_kwargs(cfg, family)
    warn_remote_code(cfg, family, kwargs["revision"])
    auto_model = getattr(transformers, family.auto_model)
    if family.v1_geometry is not None:
        processor = transformers.AutoTokenizer.from_pretrained(
            path, revision=kwargs["revision"], trust_remote_code=family.trust_remote_code)
    else:
        processor = load_processor(path, family, kwargs["revision"])
    model = auto_model.from_pretrained(path, **kwargs)
    if cfg.model.load_in_4bit and not torch.cuda.is_available():
        log.info("4-bit on CPU: in-place weight repacking disabled on %d Linear4bit layers", _keep_cpu_4bit_trainable(model))
    return model, _wrap_processor(processor, family, cfg), family


def load_processor(path: str, family: Family, revision: str | None = None):
    """The checkpoint's processor. The tiny base keeps the PIL image processor it was pretrained and measured
    with: left to choose, transformers takes the torchvision one wherever torchvision imports (a GPU image),
    whose resizing differs slightly; real checkpoints get the library's default."""
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(path, revision=revision)
    if family.tiny_geometry is not None:
        # Replaced after loading: a ``backend`` keyword (or an ``image_processor`` one) to AutoProcessor reaches
        # every sub-processor, and the tokenizer saves it into tokenizer_config.json. (AutoImageProcessor asks for
        # torchvision in transformers 5.17; the tiny family is native DeepSeek-OCR-2, so its PIL class is known.)
        processor.image_processor = transformers.DeepseekOcr2ImageProcessorPil.from_pretrained(path, revision=revision)
    return processor


def is_vision_param(name: str, family: Family) -> bool:
    # peft wraps the model as base_model.model.<original path>
    name = name.removeprefix("base_model.model.")
    return name.startswith(family.vision_prefixes)


def lora_config_kwargs(cfg: RunConfig, family: Family) -> dict:
    """peft ``LoraConfig`` arguments for the hf backend (the unsloth backend passes the same ones).

    ``target_parameters=[]``: the routed experts of DeepSeek-OCR-2 (fused 3-D parameters) are not
    trained, on either backend. Left at ``None``, Unsloth reads the kit's pattern (it names ``mlp`` and
    ``gate_proj``) as a request for MoE experts and adds both fused expert tensors through peft's
    ``ParamWrapper``. Why the kit keeps them out: transformers' 4-bit loading leaves them in 16 bits,
    ``ParamWrapper`` refuses LoRA dropout, vLLM's LoRA for DeepSeek-OCR covers the language model's
    linear layers only, and an OCR domain is learnt by attention, the dense MLP and the shared experts
    (the smoke fine-tune cuts CER 0.62 -> 0.26 with them alone).
    """
    return {
        "r": cfg.lora.r,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout,
        "target_modules": family.lora_target_pattern,
        "target_parameters": [],
        "bias": "none",
    }


def prepare_for_training(model, family: Family, cfg: RunConfig):
    """hf backend: freeze the vision side, attach LoRA to the language model (or unfreeze it), count, assert."""
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**lora_config_kwargs(cfg, family)))
    else:
        for name, p in model.named_parameters():
            if not is_vision_param(name, family):
                p.requires_grad_(True)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # gradient_checkpointing_enable() also calls enable_input_require_grads(), which in transformers 5.17
        # hooks every sub-model's input embeddings, SAM's patch embedding included: the frozen vision tower
        # then joins the autograd graph and keeps its activations for a backward that never needs them.
        # Non-reentrant checkpointing needs no input that requires grad, so the hooks go.
        model.disable_input_require_grads()
    return (model, *count_and_check_trainable(model, family, cfg))


def freeze_vision(model, family: Family) -> int:
    """Stop every vision-side parameter from training; returns how many were trainable."""
    unfrozen = [p for name, p in model.named_parameters() if p.requires_grad and is_vision_param(name, family)]
    for p in unfrozen:
        p.requires_grad_(False)
    return len(unfrozen)


def drop_vision_input_grad_hooks(model, family: Family) -> int:
    """Remove the hooks ``enable_input_require_grads`` put on the vision side's embeddings (SAM's patch
    embedding among them), keeping the language model's; returns how many went. transformers registers one
    forward hook named ``make_inputs_require_grads`` per sub-model's input embeddings."""
    removed = 0
    for name, module in model.named_modules():
        if not is_vision_param(f"{name}.weight", family):
            continue
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", "") == "make_inputs_require_grads":
                del module._forward_hooks[key]
                removed += 1
    return removed


def count_and_check_trainable(model, family: Family, cfg: RunConfig) -> tuple[int, int]:
    """Both backends: (frozen, trainable) counts; fails if vision trains or LoRA sits off the pattern."""
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainable_vision = [n for n, p in model.named_parameters() if p.requires_grad and is_vision_param(n, family)]
    if not frozen or not trainable:
        raise RuntimeError(f"expected frozen and trainable parameters, got frozen={frozen} trainable={trainable}")
    if trainable_vision:
        raise RuntimeError(f"vision parameters must stay frozen, but these train: {trainable_vision[:5]}")
    if cfg.lora.enabled:
        pattern = re.compile(family.lora_target_pattern)
        adapted = lora_modules(model)
        off_target = [n for n in adapted if not pattern.fullmatch(n)]
        if not adapted or off_target:
            raise RuntimeError(f"LoRA attached to unexpected modules: {sorted(off_target)[:5]} (adapted {len(adapted)})")
        target_parameters = getattr(getattr(model, "peft_config", {}).get("default"), "target_parameters", None)
        if target_parameters:
            raise RuntimeError(f"LoRA attached to parameters directly (routed experts?): {target_parameters}")
    return frozen, trainable


def lora_modules(model) -> list[str]:
    """Module paths (below the top model) that carry a LoRA adapter, sorted."""
    return sorted({n.rsplit(".lora_A", 1)[0].removeprefix("base_model.model.")
                   for n, _ in model.named_parameters() if ".lora_A." in n})


def trained_summary(model) -> dict:
    """What training changes, for the manifest and the log: adapted modules by kind, and counts."""
    modules = lora_modules(model)
    kinds: dict[str, int] = {}
    for name in modules:
        kind = re.sub(r"^.*\.layers\.\d+\.", "", name)
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"lora_modules": len(modules), "lora_modules_by_kind": dict(sorted(kinds.items())),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "modules": modules}


def language_model_precision(model, family: Family) -> dict:
    """Language-model weights stored in 4 bits, in 8 bits and unquantised, counted by what each parameter is (a
    bitsandbytes ``Params4bit``, by the shape it was quantised from, or ``Int8Params``), not by its module's type:
    transformers' own quantised load covers nn.Linear only, but under Unsloth's patches the fused routed experts
    are packed too."""
    import bitsandbytes as bnb

    four, eight, kept = 0, 0, 0
    for name, p in model.named_parameters():
        full = name.removeprefix("base_model.model.")
        if ".lora_" in full or is_vision_param(full, family):
            continue
        if isinstance(p, bnb.nn.Params4bit):
            state = getattr(p, "quant_state", None)
            four += state.shape.numel() if state is not None else 2 * p.numel()  # two 4-bit codes per byte
        elif isinstance(p, bnb.nn.Int8Params) and p.dtype == torch.int8:
            eight += p.numel()
        else:
            kept += p.numel()
    return {"4bit": four, "8bit": eight, "16bit": kept}


# --- unsloth backend ---------------------------------------------------------------------------
# The kit loads through ``FastVisionModel``. In Unsloth 2026.10.9 ``FastLanguageModel.from_pretrained``
# hands model types it has no text fast path for to ``FastModel.from_pretrained`` (the class
# ``FastVisionModel`` subclasses), but its own signature has no ``auto_model`` and no
# ``unsloth_force_compile``, which DeepSeek-OCR's remote code needs; ``FastVisionModel`` names both.


def unsloth_gradient_checkpointing(cfg: RunConfig) -> bool | str:
    # "unsloth" is Unsloth's offloading checkpointing; False leaves activations in memory.
    return "unsloth" if cfg.model.gradient_checkpointing else False


def unsloth_load_kwargs(cfg: RunConfig, family: Family) -> dict:
    """Arguments for ``FastVisionModel.from_pretrained``."""
    source = checkpoint_source(cfg.model)
    if source is None:
        raise UserError("model.backend 'unsloth' loads checkpoints; model.name_or_path 'random' is built in code: "
                        "use the bundled tiny base (model.name_or_path empty) or backend 'hf'")
    kwargs = {
        "model_name": source,
        "revision": resolve_revision(cfg, family),
        "dtype": torch_dtype(cfg.model.dtype),
        "load_in_4bit": cfg.model.load_in_4bit,
        "load_in_8bit": cfg.model.load_in_8bit,
        "full_finetuning": not cfg.lora.enabled,
        "use_gradient_checkpointing": unsloth_gradient_checkpointing(cfg),
        **attention_kernel(cfg),  # FastVisionModel reads it from its keyword arguments
    }
    if family.trust_remote_code:
        import transformers

        kwargs["trust_remote_code"] = True
        kwargs["auto_model"] = getattr(transformers, family.auto_model)
    if family.unsloth_force_compile:
        kwargs["unsloth_force_compile"] = True
    return kwargs


def unsloth_peft_kwargs(cfg: RunConfig, family: Family) -> dict:
    """Arguments for ``FastVisionModel.get_peft_model``: the language model's projections only.

    A regex string reaches peft unchanged (Unsloth only rewrites lists), and ``target_parameters=[]``
    stops Unsloth's MoE auto-detection (see ``lora_config_kwargs``), so both backends adapt exactly the
    modules of ``family.lora_target_pattern``; ``count_and_check_trainable`` fails the run otherwise.
    """
    lora = lora_config_kwargs(cfg, family)
    return {
        **lora,
        "finetune_vision_layers": False,
        "finetune_language_layers": True,
        "use_gradient_checkpointing": unsloth_gradient_checkpointing(cfg),
        "random_state": cfg.seed,
    }


def unsloth_for_training_kwargs(gradient_checkpointing: bool | str) -> dict:
    return {"use_gradient_checkpointing": gradient_checkpointing}


def load_unsloth(cfg: RunConfig, family: Family, reason: str, for_training: bool) -> LoadedModel:
    require_transformers_for(family)
    from unsloth import FastVisionModel

    kwargs = unsloth_load_kwargs(cfg, family)
    warn_remote_code(cfg, family, kwargs["revision"])
    model, processor = FastVisionModel.from_pretrained(**kwargs)
    if family.tiny_geometry is not None:
        # Unsloth loads the processor with AutoProcessor and no backend, so where torchvision imports (every GPU
        # image) the tiny base would get the torchvision resize, unlike the hf case and every CPU figure.
        processor = load_processor(kwargs["model_name"], family)
    loaded = LoadedModel(model, _wrap_processor(processor, family, cfg), family, "unsloth", reason,
                         fast_model=FastVisionModel, gradient_checkpointing=unsloth_gradient_checkpointing(cfg))
    if not for_training:
        loaded.for_inference()
        return loaded
    if cfg.lora.enabled:
        loaded.model = FastVisionModel.get_peft_model(model, **unsloth_peft_kwargs(cfg, family))
    else:
        # full_finetuning=True makes Unsloth's post-load setup set requires_grad on every parameter, the vision
        # tower's included (unsloth_zoo.training_utils.prepare_model_for_training); the kit trains the language model.
        freeze_vision(loaded.model, family)
    loaded.frozen_params, loaded.trainable_params = count_and_check_trainable(loaded.model, family, cfg)
    return loaded


def load_model(cfg: RunConfig, for_training: bool = True) -> LoadedModel:
    backend, reason = choose_backend(cfg.model.backend)
    dtype, dtype_reason = resolve_dtype(cfg.model.dtype)
    log.info("backend: %s (%s)", backend, reason)
    log.info("dtype: %s (%s)", str(dtype).removeprefix("torch."), dtype_reason)
    if backend == "unsloth":
        loaded = load_unsloth(cfg, get_family(cfg.model.family), reason, for_training)
    else:
        if "unsloth" in sys.modules:  # keep_unsloth_out_for came too late (transformers was imported first)
            reason += "; under Unsloth's patches to transformers (Unsloth was imported first in this process)"
            log.warning("backend hf: Unsloth was imported before the config was known, so transformers runs with its "
                        "patches (its MoE patches pack the experts in 4 bits); set DEEPSYNTH_SKIP_UNSLOTH=1 for "
                        "transformers as released")
        loaded = replace(load_base(cfg), backend=backend, backend_reason=reason)
        if for_training:
            loaded.model, loaded.frozen_params, loaded.trainable_params = prepare_for_training(
                loaded.model, loaded.family, cfg)
    loaded.dtype_reason = dtype_reason
    if backend == "hf" and cfg.model.quantised:
        loaded.lm_precision = language_model_precision(loaded.model, loaded.family)
        q, k = loaded.lm_precision[cfg.model.quantised], loaded.lm_precision["16bit"]
        log.info("%s: %d language-model parameters quantised, %d kept in %s (%.0f%%: transformers quantises "
                 "nn.Linear only, so fused routed experts, embeddings and the head are not)", cfg.model.quantised,
                 q, k, str(loaded.model.dtype).removeprefix("torch."), 100 * k / (q + k))
    if for_training:
        log.info("parameters: %d frozen, %d trainable (%.2f%%), vision frozen",
                 loaded.frozen_params, loaded.trainable_params,
                 100 * loaded.trainable_params / (loaded.frozen_params + loaded.trainable_params))
        if cfg.lora.enabled:
            loaded.trained = trained_summary(loaded.model)
            log.info("LoRA on %d modules %s, %d trainable parameters; routed experts and vision not trained",
                     loaded.trained["lora_modules"], loaded.trained["lora_modules_by_kind"],
                     loaded.trained["trainable_parameters"])
    return loaded
