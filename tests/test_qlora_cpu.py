"""hf backend 4-bit QLoRA on CPU: NF4 language model, vision tower and head unquantised, and the
eval -> train -> eval -> train sequence that trips bitsandbytes' CPU weight repacking."""

import math

import bitsandbytes as bnb
import torch
from transformers import Trainer

from deepsynth_ocr.collate import make_collator
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.synthetic import random_strings, render_text
from deepsynth_ocr.evaluate import generate
from deepsynth_ocr.models.backends import load_model
from deepsynth_ocr.training import training_arguments


def _qlora_cfg() -> RunConfig:
    cfg = RunConfig()
    cfg.model.family, cfg.model.backend, cfg.model.load_in_4bit = "tiny", "hf", True
    cfg.model.name_or_path = "random"
    t = cfg.train
    t.learning_rate, t.per_device_batch_size, t.gradient_accumulation_steps = 2e-3, 8, 1
    t.warmup_steps, t.logging_steps, t.save_steps, t.optim = 0, 1, 0, "paged_adamw_8bit"
    cfg.eval.batch_size = 8
    return cfg


def _train(loaded, rows, cfg, out_dir, steps: int) -> list[float]:
    cfg.train.max_steps = steps
    trainer = Trainer(model=loaded.model, args=training_arguments(cfg, out_dir), train_dataset=rows,
                      data_collator=make_collator(loaded.processor, loaded.family))
    loaded.for_training()
    trainer.train()
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


def test_qlora_4bit_trains_after_an_eval_and_keeps_training(tmp_path):
    cfg = _qlora_cfg()
    loaded = load_model(cfg)
    quantised = [n for n, m in loaded.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    plain = [n for n, m in loaded.model.named_modules() if type(m) is torch.nn.Linear]
    assert quantised and all(".language_model.layers." in n for n in quantised), quantised
    assert any("vision_tower" in n for n in plain) and any(n.endswith("lm_head") for n in plain)
    assert all(m.weight.quant_type == "nf4" for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit))

    texts = random_strings(8, seed=7)
    rows = [{"image": render_text(t), "text": t, "prompt": loaded.family.default_prompt} for t in texts]
    lora = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if ".lora_" in n}
    base_4bit = {n: m.weight.data.clone() for n, m in loaded.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}

    # An evaluation (no-grad generation) before any backward: the CPU repacking pitfall.
    loaded.for_inference()
    assert len(generate(loaded, rows, cfg.eval, max_new_tokens=4)) == 8
    first = _train(loaded, rows, cfg, tmp_path / "a", steps=6)
    loaded.for_inference()
    assert len(generate(loaded, rows, cfg.eval, max_new_tokens=4)) == 8
    second = _train(loaded, rows, cfg, tmp_path / "b", steps=6)

    losses = first + second
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses), losses
    assert sum(second[-3:]) / 3 < sum(first[:3]) / 3 * 0.8, losses
    changed = [n for n, p in loaded.model.named_parameters() if n in lora and not torch.equal(p, lora[n])]
    assert len(changed) == len(lora), f"{len(lora) - len(changed)} adapter tensors never changed"
    # QLoRA: the quantised base stays frozen.
    for name, module in loaded.model.named_modules():
        if name in base_4bit:
            assert torch.equal(module.weight.data, base_4bit[name]), name


def test_the_manifest_counts_what_4bit_really_quantises():
    """GPU_AUDIT.md item 8: transformers' 4-bit load quantises nn.Linear only; the fused experts stay 16-bit."""
    from deepsynth_ocr.models import tiny
    from deepsynth_ocr.models.backends import is_vision_param

    cfg = _qlora_cfg()
    loaded = load_model(cfg)
    precision = loaded.lm_precision
    family = loaded.family
    plain = tiny.build_tiny_model(tiny.build_tiny_tokenizer(), family.tiny_geometry, seed=cfg.seed)
    lm_total = sum(p.numel() for n, p in plain.named_parameters() if not is_vision_param(n, family))
    experts = sum(p.numel() for n, p in plain.named_parameters() if ".mlp.experts." in n)
    linear_lm = sum(m.weight.numel() for n, m in plain.named_modules()
                    if type(m) is torch.nn.Linear and ".language_model.layers." in n)
    assert precision["4bit"] + precision["16bit"] == lm_total
    assert precision["4bit"] == linear_lm
    assert experts > 0 and precision["16bit"] >= experts


def test_4bit_is_counted_by_what_a_parameter_is_not_by_its_module():
    """GPU_AUDIT_3 W3: under Unsloth's patches the fused experts become Params4bit without being nn.Linear; a
    count by module type called them 16-bit. A packed tensor stands in for such an expert here."""
    import copy

    import bitsandbytes as bnb

    from deepsynth_ocr.models.backends import language_model_precision

    loaded = load_model(_qlora_cfg())
    before = language_model_precision(loaded.model, loaded.family)
    experts = next(m for n, m in loaded.model.named_modules() if n.endswith("mlp.experts"))
    donor = next(m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    name, original = next(iter(experts.named_parameters(recurse=False)))
    setattr(experts, name, copy.deepcopy(donor.weight))  # a Params4bit where a fused expert tensor was
    after = language_model_precision(loaded.model, loaded.family)
    packed = donor.weight.quant_state.shape.numel()
    assert after["4bit"] == before["4bit"] + packed and after["16bit"] == before["16bit"] - original.numel()


def test_gradient_checkpointing_keeps_the_frozen_vision_tower_out_of_the_graph():
    """GPU_AUDIT.md item 9: no tensor of the vision tower requires grad in a training step, yet LoRA learns."""
    from deepsynth_ocr.devices import to_model

    cfg = _qlora_cfg()
    cfg.model.load_in_4bit, cfg.model.gradient_checkpointing = False, True
    loaded = load_model(cfg)
    outputs = []
    loaded.model.get_base_model().model.vision_tower.register_forward_hook(lambda m, a, out: outputs.append(out))
    family = loaded.family
    rows = [{"image": render_text(t), "text": t, "prompt": family.default_prompt} for t in random_strings(2, seed=3)]
    loaded.model.train()
    loss = loaded.model(**to_model(make_collator(loaded.processor, family)(rows), loaded.model)).loss
    loss.backward()
    tensors = [t for out in outputs for t in (out if isinstance(out, (tuple, list)) else
                                              getattr(out, "to_tuple", lambda o=out: (o,))()) if isinstance(t, torch.Tensor)]
    assert tensors and not any(t.requires_grad for t in tensors)
    grads = [p.grad for n, p in loaded.model.named_parameters() if ".lora_B." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_after_unsloths_training_setup_only_the_language_models_input_hook_stays():
    """GPU_AUDIT_2 R3: Unsloth's setup calls enable_input_require_grads(), which hooks every sub-model's
    embeddings, SAM's patch embedding included; the kit then drops the vision side's hooks."""
    from deepsynth_ocr.models.backends import drop_vision_input_grad_hooks, is_vision_param

    cfg = _qlora_cfg()
    cfg.model.load_in_4bit = False
    loaded = load_model(cfg)

    def hooked():
        return sorted(name for name, m in loaded.model.named_modules()
                      if any(getattr(h, "__name__", "") == "make_inputs_require_grads" for h in m._forward_hooks.values()))

    loaded.model.enable_input_require_grads()  # what unsloth_zoo's prepare_model_for_training does
    before = hooked()
    assert any(is_vision_param(f"{n}.weight", loaded.family) for n in before)  # SAM's patch embedding is hooked
    assert drop_vision_input_grad_hooks(loaded.model, loaded.family) == len(before) - 1
    (left,) = hooked()
    assert left.endswith("language_model.embed_tokens") and not is_vision_param(f"{left}.weight", loaded.family)
