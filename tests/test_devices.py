"""Every path that runs the model places its inputs on the model's device and dtype, and the dtype
rule picks what the hardware computes (GPU_AUDIT.md items 2, 4, 13).

On one CPU in float32 a forgotten ``.to(device)`` is invisible. Here the model lives on the meta
device (or in bfloat16) while the collator produces float32 CPU tensors; a forward pre-hook records
where each forward's inputs are and stops it before any arithmetic.
"""

import types

import datasets
import pytest
import torch

from deepsynth_ocr import devices, evaluate, infer
from deepsynth_ocr.collate import make_collator
from deepsynth_ocr.config import EvalConfig, RunConfig
from deepsynth_ocr.data.synthetic import render_text
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.export import compared_logits
from deepsynth_ocr.models import adapters, backends, tiny, tiny_base
from deepsynth_ocr.training import KitTrainer, StageTimer


class _Reached(Exception):
    pass


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _probe(model, stop: bool):
    """Record (device, dtype of floating inputs) of each forward of ``model``; optionally stop there."""
    seen = []

    def hook(module, args, kwargs):
        tensors = list(_tensors(args)) + list(_tensors(kwargs))
        seen.append(({t.device.type for t in tensors}, {t.dtype for t in tensors if t.is_floating_point()}))
        if stop:
            raise _Reached

    # The transformers model under peft's wrapper: generate() calls it directly.
    model.get_base_model().register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def _rows(family, n=2):
    return [{"image": render_text(t), "text": t, "prompt": family.default_prompt} for t in ("ab", "cde")[:n]]


def _lora_model(tiny_parts, dtype=torch.float32):
    from peft import LoraConfig, get_peft_model

    tokenizer, _, family = tiny_parts
    cfg = RunConfig()
    model = tiny.build_tiny_model(tokenizer, family.tiny_geometry, seed=0)
    return get_peft_model(model, LoraConfig(**backends.lora_config_kwargs(cfg, family))).to(dtype)


def _paths(model, processor, family):
    """Each entry point that runs a forward, as a thunk."""
    rows = _rows(family)
    cfg = RunConfig()
    batch = make_collator(processor, family)(rows)
    loaded = backends.LoadedModel(model, processor, family, "hf", "test")
    periodic = evaluate.PeriodicEvalCallback(loaded, datasets.Dataset.from_list(rows), EvalConfig(every_steps=1),
                                             lambda summary, step: None)
    return {
        "adapter verification": lambda: adapters.logits(model, batch),
        "export verification": lambda: compared_logits(model, batch),
        "evaluation": lambda: evaluate.generate(loaded, rows, cfg.eval, 3),
        "periodic evaluation": lambda: periodic.on_step_end(None, types.SimpleNamespace(global_step=1), None),
        "infer": lambda: infer._hf_generator(loaded, cfg)(rows),
        "tiny base scoring": lambda: tiny_base.score(model, processor, rows),
        "training step": lambda: model(**KitTrainer._prepare_inputs(
            types.SimpleNamespace(model=model, step_timer=StageTimer()), batch)),
    }


def test_every_forward_gets_its_inputs_on_the_model_device(tiny_parts):
    _, processor, family = tiny_parts
    model = _lora_model(tiny_parts).to("meta")  # parameters elsewhere than the collator's CPU tensors
    seen = _probe(model, stop=True)
    for name, call in _paths(model, processor, family).items():
        seen.clear()
        try:
            call()
        except _Reached:
            assert seen and seen[-1][0] == {"meta"}, f"{name}: forward got inputs on {seen[-1][0]}"
        except RuntimeError as e:
            # generate() itself reads the special tokens it built on the inputs' device before the first
            # forward; on meta that fails, which proves the inputs were already on the model's device.
            assert "meta tensors" in str(e) and not seen, f"{name}: {e}"
        else:
            pytest.fail(f"{name}: no forward ran")


def test_every_forward_gets_floating_inputs_in_the_model_dtype(tiny_parts):
    _, processor, family = tiny_parts
    model = _lora_model(tiny_parts, torch.bfloat16)
    seen = _probe(model, stop=False)
    for name, call in _paths(model, processor, family).items():
        seen.clear()
        call()  # really runs: float32 pixels into the bfloat16 vision tower would fail in its first conv
        assert any(dtypes == {torch.bfloat16} for _, dtypes in seen), f"{name}: {seen}"  # pixels, in bfloat16
        assert all(dtypes <= {torch.bfloat16} for _, dtypes in seen), f"{name}: {seen}"  # decode steps carry none


def test_to_model_keeps_integer_tensors_and_nested_v1_images():
    model = torch.nn.Linear(2, 2).to(torch.float16)
    batch = {"input_ids": torch.tensor([[1, 2]]), "images": [(torch.zeros(1, 3), torch.ones(1, 3))], "n": 3}
    placed = devices.to_model(batch, model)
    assert placed["input_ids"].dtype == torch.long and placed["n"] == 3
    assert [t.dtype for t in placed["images"][0]] == [torch.float16, torch.float16]
    assert isinstance(placed["images"], list) and isinstance(placed["images"][0], tuple)


def _gpu(monkeypatch, native_bf16: bool, name: str):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # As torch answers: a T4 "supports" bfloat16 only when emulation counts.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16 or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)


def test_auto_dtype_is_bfloat16_on_a_gpu_that_computes_it(monkeypatch):
    _gpu(monkeypatch, True, "NVIDIA H200")
    assert devices.resolve_dtype("auto") == (torch.bfloat16, "auto: NVIDIA H200 computes bfloat16 natively")
    assert devices.resolve_dtype("bfloat16") == (torch.bfloat16, "requested in config")


def test_auto_dtype_is_float16_on_a_t4_and_bfloat16_is_refused_in_one_line(monkeypatch):
    _gpu(monkeypatch, False, "Tesla T4")
    assert devices.resolve_dtype("auto") == (torch.float16, "auto: Tesla T4 has no native bfloat16, using float16")
    with pytest.raises(UserError, match=r"^model.dtype: Tesla T4 has no native bfloat16; set model.dtype: auto"):
        devices.resolve_dtype("bfloat16")
    kw = backends.hf_load_kwargs(RunConfig(), backends.get_family("tiny"))
    assert kw["dtype"] == torch.float16 and kw["device_map"] == {"": 0}  # 16-bit loads go to the GPU
    cfg = RunConfig()
    cfg.model.load_in_4bit = True
    assert backends.bnb_config_kwargs(cfg, backends.get_family("tiny"))["bnb_4bit_compute_dtype"] == torch.float16


def test_auto_dtype_is_float32_on_a_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_dtype("auto") == (torch.float32, "auto: no CUDA device, float32 on the CPU")
    assert "device_map" not in backends.hf_load_kwargs(RunConfig(), backends.get_family("tiny"))
    assert devices.compute_device() == torch.device("cpu")


def test_the_emulated_bfloat16_of_older_gpus_does_not_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: calls.append(including_emulation) or including_emulation)
    assert devices.bf16_supported() is False and calls == [False]


def test_a_local_rank_picks_this_process_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert devices.compute_device() == torch.device("cuda", 3)


def test_inputs_follow_the_vision_tower_when_unsloth_offloads_the_embeddings_to_the_cpu(tiny_parts):
    """GPU_AUDIT_2 C1: Unsloth moves the input embeddings to host RAM under memory pressure and keeps the rest
    on the GPU; the batch must go where the rest is (here the meta device stands in for the GPU)."""
    tokenizer, _, family = tiny_parts
    model = tiny.build_tiny_model(tokenizer, family.tiny_geometry, seed=0).to("meta")
    model.get_input_embeddings().to_empty(device="cpu")  # offloaded, as Unsloth's offload_embedding does
    assert model.get_input_embeddings().weight.device.type == "cpu"
    assert devices.model_device(model).type == "meta"
    batch = devices.to_model({"pixel_values": torch.zeros(1, 3, 8, 8), "input_ids": torch.zeros(1, 4, dtype=torch.long)}, model)
    assert batch["pixel_values"].device.type == "meta" and batch["input_ids"].device.type == "meta"
    assert devices.model_device(torch.nn.Linear(2, 2)).type == "cpu"
