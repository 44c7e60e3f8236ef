"""Batched generation equals per-image generation; the repetition guard catches a looping model."""

import json

import pytest
import torch

from deepsynth_ocr.config import EvalConfig, RunConfig
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.evaluate import evaluate_dataset, generate, loop_mask, plain_generate
from deepsynth_ocr.models import tiny
from deepsynth_ocr.models.backends import LoadedModel

from .conftest import SAMPLES


def _ids(text: str) -> torch.Tensor:
    return torch.tensor([[ord(c) for c in text]])


@pytest.mark.parametrize("text,looped", [
    ("ab" * 40, True),  # period 2, 80 tokens
    ("the cat " * 9, True),  # period 8, 72 tokens
    ("x" * 64, True),  # period 1 over the whole span
    ("x" * 63, False),  # shorter than loop_min_span
    ("1000000 balloons still fall 2000 llama " * 1, False),  # ordinary repeated characters
    ("Total ........................ 12", False),  # a dot leader, not at the end
    ("intro text " + "abcdefghijklmnopqrstuvwxyz0123456789" * 3, False),  # period 36 > loop_max_period
])
def test_loop_mask_detects_loops_and_spares_normal_text(text, looped):
    cfg = EvalConfig()
    assert bool(loop_mask(_ids(text), cfg.loop_max_period, cfg.loop_min_repeats, cfg.loop_min_span)[0]) is looped


@pytest.fixture(scope="module")
def eval_set():
    cfg = RunConfig()
    tokenizer = tiny.build_tiny_tokenizer()
    from deepsynth_ocr.models.families import get_family

    family = get_family("tiny")
    ds, _ = prepare_manifest(SAMPLES / "eval.jsonl", cfg.data, tokenizer, family.default_prompt)
    return ds


def _model(tiny_parts, seed=0):
    tokenizer, _, family = tiny_parts
    return tiny.build_tiny_model(tokenizer, family.tiny_geometry, seed=seed)


def test_batched_generation_equals_per_image_generation(tiny_parts, eval_set):
    _, processor, family = tiny_parts
    model = _model(tiny_parts)
    rows = list(eval_set.select(range(6)))
    for r in rows[:2]:  # different prompt lengths, so left padding really varies inside the batch
        r["prompt"] += " Read it carefully."
    batched = generate(LoadedModel(model, processor, family), rows, EvalConfig(batch_size=6), 10)
    single = generate(LoadedModel(model, processor, family), rows, EvalConfig(batch_size=1), 10)
    assert [p.text for p in batched] == [p.text for p in single]
    assert len({p.text for p in single}) > 1  # the rows do differ, so equality means something


def test_batched_evaluation_predicts_what_plain_transformers_generate_predicts(tiny_parts, eval_set):
    """The kit builds its own batches (cached prompt ids, left padding); the processor's per-image
    output fed to ``model.generate`` as the transformers docs show (``plain_generate``, the throughput
    benchmark's baseline) must give the same text."""
    _, processor, family = tiny_parts
    model = _model(tiny_parts, seed=3)
    rows = list(eval_set.select(range(5)))
    kit = [p.text for p in generate(LoadedModel(model, processor, family), rows, EvalConfig(batch_size=5), 10)]
    plain = plain_generate(LoadedModel(model, processor, family), rows, 10)
    assert kit == plain
    assert len(set(plain)) > 1


def _looping_model(tiny_parts):
    """A model state that repeats: the head ignores the hidden state and always prefers one byte."""
    tokenizer, _, _ = tiny_parts
    model = _model(tiny_parts)
    head = model.lm_head
    with torch.no_grad():
        head.weight.zero_()
        head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
        head.bias[tokenizer.convert_tokens_to_ids("a")] = 10.0
    return model


def test_guard_stops_a_looping_model_and_counts_it_as_catastrophic(tiny_parts, eval_set, tmp_path):
    _, processor, family = tiny_parts
    model = _looping_model(tiny_parts)
    cfg = EvalConfig(max_new_tokens=300, max_samples=4)
    summary = evaluate_dataset(LoadedModel(model, processor, family), eval_set, cfg, tmp_path / "guarded.jsonl", "guarded")
    rows = [json.loads(x) for x in (tmp_path / "guarded.jsonl").read_text().splitlines()]
    assert summary["catastrophic_rate"] == 1.0 and summary["loop_rate"] == 1.0
    assert all(r["looped"] and r["failure"] and not r["stopped"] for r in rows)
    assert all(r["n_tokens"] == cfg.loop_min_span for r in rows)  # stopped as soon as the loop was certain
    assert rows[0]["prediction"] == "a" * cfg.loop_min_span

    # Without the guard the same model runs to the bound (and is still flagged as a loop afterwards).
    cfg_off = EvalConfig(max_new_tokens=300, max_samples=4, loop_guard=False)
    evaluate_dataset(LoadedModel(model, processor, family), eval_set, cfg_off, tmp_path / "off.jsonl", "off")
    rows_off = [json.loads(x) for x in (tmp_path / "off.jsonl").read_text().splitlines()]
    assert all(r["n_tokens"] == 300 and r["looped"] for r in rows_off)


def test_per_sample_jsonl_holds_reference_prediction_scores_and_failure_flag(tiny_parts, eval_set, tmp_path):
    _, processor, family = tiny_parts
    summary = evaluate_dataset(LoadedModel(_model(tiny_parts), processor, family), eval_set, EvalConfig(max_samples=5),
                       tmp_path / "e.jsonl", "e")
    rows = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert len(rows) == 5 == summary["n"]
    assert {"id", "image", "reference", "prediction", "cer", "wer", "cer_raw", "failure", "looped", "stopped"} <= set(rows[0])
    assert rows[0]["image"].endswith("eval_0000.png")
    corpus = sum(r["char_edits"] for r in rows) / sum(r["ref_chars"] for r in rows)
    assert summary["cer"] == pytest.approx(corpus)
    assert summary["normalization"]["unicode"] == "NFC"


def test_a_bfloat16_model_reads_like_its_float32_self():
    """The GPU recipes run in bfloat16: the collator hands the vision tower pixels in the model's dtype,
    and the base's readings of the smoke domain survive the lower precision."""
    from deepsynth_ocr.models.backends import load_base

    from .conftest import ROOT

    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    texts = {}
    for dtype in ("float32", "bfloat16"):
        cfg.model.dtype = dtype
        loaded = load_base(cfg)
        model, processor, family = loaded.model, loaded.processor, loaded.family
        assert model.dtype == getattr(torch, dtype)
        ds, _ = prepare_manifest(str(ROOT / cfg.data.eval_path), cfg.data, processor.tokenizer, family.default_prompt)
        rows = [ds[i] for i in range(16)]
        texts[dtype] = [p.text for p in generate(LoadedModel(model, processor, family), rows, EvalConfig(batch_size=8), 8)]
    same = sum(a == b for a, b in zip(texts["float32"], texts["bfloat16"], strict=True))
    assert same >= 12, texts
