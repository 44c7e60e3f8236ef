"""Batched greedy generation over an eval set, scored with CER/WER, written as per-sample JSONL.

The repetition guard. OCR models fall into loops ("the the the ...", a table row forever); the
published Unsloth notebook reports mean CER above 100% because of them. The kit's default guard
*stops* a row whose output ends in a unit of at most ``eval.loop_max_period`` tokens repeated at
least ``eval.loop_min_repeats`` times and covering at least ``eval.loop_min_span`` tokens, and
flags the row as a loop, which counts as a catastrophic failure. Why not ``no_repeat_ngram_size``
(still available): it rewrites the model's output instead of reporting the loop, and with
character- or byte-level tokens a small n forbids legitimate text such as "1000" or "llama"; the
official DeepSeek-OCR vLLM recipe needs n = 30 within a 90-token window for the same reason.
Stopping leaves normal text untouched; the span bound spares long runs such as "0000" or short
dot leaders, and the loop stays visible in the metrics instead of being papered over.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList, TrainerCallback

from deepsynth_ocr import metrics
from deepsynth_ocr.collate import OcrCollator, make_collator
from deepsynth_ocr.config import EvalConfig
from deepsynth_ocr.devices import to_model
from deepsynth_ocr.timing import StageClock

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    text: str
    stopped: bool  # emitted EOS before the token bound
    looped: bool = False  # the output ends in a repetition loop (stopped by the guard, or ran to the bound)
    n_tokens: int = 0
    prompt_tokens: int = 0  # the row's input length (image placeholders included), padding excluded


def loop_mask(ids: torch.Tensor, max_period: int, min_repeats: int, min_span: int) -> torch.Tensor:
    """Per row of ``ids`` (batch, length): does it end in a unit of <= max_period tokens repeated
    >= min_repeats times, the repetition covering >= min_span tokens?"""
    batch, length = ids.shape
    out = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    for period in range(1, max_period + 1):
        span = max(min_span, period * min_repeats)
        if span > length:
            break  # span never shrinks as the period grows
        tail = ids[:, length - span:]
        out |= (tail[:, period:] == tail[:, :-period]).all(dim=1)
    return out


class RepetitionGuard(StoppingCriteria):
    """Stop rows whose generated tokens (after ``prompt_len``) end in a loop (see ``loop_mask``)."""

    def __init__(self, prompt_len: int, cfg: EvalConfig):
        self.prompt_len = prompt_len
        self.args = (cfg.loop_max_period, cfg.loop_min_repeats, cfg.loop_min_span)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return loop_mask(input_ids[:, self.prompt_len:], *self.args)


def max_new_tokens_for(references: list[str], tokenizer, cfg: EvalConfig) -> int:
    """The configured bound, or the longest reference's length plus a margin (and room for EOS)."""
    if cfg.max_new_tokens:
        return cfg.max_new_tokens
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    return int(longest * (1 + cfg.max_new_tokens_margin)) + 2


def _decode(row: list[int], tokenizer, pad_id: int, cfg: EvalConfig, prompt_tokens: int = 0) -> Prediction:
    eos = tokenizer.eos_token_id
    stopped = eos in row
    if stopped:
        row = row[: row.index(eos)]
    else:
        while row and row[-1] == pad_id:  # rows finished by the guard are padded while others go on
            row = row[:-1]
    looped = not stopped and bool(row) and bool(
        loop_mask(torch.tensor([row]), cfg.loop_max_period, cfg.loop_min_repeats, cfg.loop_min_span)[0])
    return Prediction(tokenizer.decode(row, skip_special_tokens=True), stopped, looped, len(row), prompt_tokens)


@torch.no_grad()
def generate_batch(model, collator: OcrCollator, rows: list[dict], cfg: EvalConfig, max_new_tokens: int,
                   bounds: list[int] | None = None, clock: StageClock | None = None) -> list[Prediction]:
    """One batch of {image, prompt} rows: greedy, left padded, with the repetition guard.

    ``bounds`` (one per row, each <= ``max_new_tokens``) cuts each row to its own token bound: greedy
    decoding of a row does not depend on how far it runs, so rows with different bounds (server
    requests with their own ``max_tokens``) share one batch and get what each would get alone.
    ``clock`` gets the batch's ``preprocess`` (processor, collate, to the device) and ``generate`` seconds.
    """
    clock = clock or StageClock()
    tokenizer = collator.tokenizer
    with clock.stage("preprocess"):
        batch = to_model(collator(rows), model)
    width = batch["input_ids"].shape[1]
    guard = StoppingCriteriaList([RepetitionGuard(width, cfg)] if cfg.loop_guard else [])
    # A complete GenerationConfig: given only keyword arguments, transformers 5.17 instantiates a
    # default model config on every generate() call to look for legacy settings, about 0.16 s on
    # this machine, more than the whole greedy decode of a short line with the tiny model.
    generation_config = copy.deepcopy(model.generation_config)
    generation_config.update(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             no_repeat_ngram_size=cfg.no_repeat_ngram_size or None,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=collator.pad_id)
    with clock.stage("generate"):
        generated = model.generate(**batch, generation_config=generation_config, stopping_criteria=guard)[:, width:]
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        bounds = bounds or [max_new_tokens] * len(rows)
        return [_decode(row[:bound], tokenizer, collator.pad_id, cfg, n)
                for row, bound, n in zip(generated.tolist(), bounds, prompt_tokens, strict=True)]


def generate(loaded, rows, cfg: EvalConfig, max_new_tokens: int, desc: str = "generate",
             clock: StageClock | None = None) -> list[Prediction]:
    """Greedy, batched, left-padded generation for ``rows`` (a sequence of {image, prompt} dicts) with
    ``loaded`` (a ``models.backends.LoadedModel``); ``clock`` gets the preprocess and generate seconds."""
    model = loaded.model
    collator = make_collator(loaded.processor, loaded.family, for_generation=True)
    loader = DataLoader(rows, batch_size=cfg.batch_size, collate_fn=list, shuffle=False)
    was_training = model.training
    model.eval()
    out: list[Prediction] = []
    try:
        for chunk in tqdm(loader, desc=desc, leave=False):
            out.extend(generate_batch(model, collator, chunk, cfg, max_new_tokens, clock=clock))
    finally:
        model.train(was_training)
    return out


def plain_generate(loaded, rows, max_new_tokens: int) -> list[str]:
    """Per-image generation as the transformers docs show it, without the kit: one processor call and one
    ``generate(**inputs, max_new_tokens=..., do_sample=False)`` per image. The reference that the batched
    path must agree with, and the baseline its speed is measured against (benchmarks/eval_throughput.py)."""
    texts = []
    for row in rows:
        inputs = loaded.processor(images=row["image"].convert("RGB"), text=row["prompt"], return_tensors="pt",
                                  **loaded.family.image_kwargs)
        out = loaded.model.generate(**to_model(dict(inputs), loaded.model), max_new_tokens=max_new_tokens, do_sample=False)
        texts.append(loaded.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def score_rows(loaded, rows, cfg: EvalConfig, max_new_tokens: int, desc: str = "generate") -> dict:
    """Corpus and per-sample metrics of greedy predictions on ``rows`` ({image, prompt, text}), no files written."""
    preds = generate(loaded, rows, cfg, max_new_tokens, desc=desc)
    return metrics.aggregate([r["text"] for r in rows], [p.text for p in preds], cfg.normalization(),
                             [p.looped for p in preds], [r.get("task") or "ocr" for r in rows])


def eval_rows(dataset, cfg: EvalConfig) -> list[dict]:
    """The rows scored (``eval.max_samples`` applied), each with ``image_path`` for the report."""
    if cfg.max_samples:
        dataset = dataset.select(range(min(cfg.max_samples, len(dataset))))
    paths = [(im or {}).get("path") for im in dataset.cast_column("image", datasets.Image(decode=False))["image"]]
    return [{**row, "image_path": path} for row, path in zip(dataset, paths, strict=True)]


def score_and_write(rows: list[dict], preds: list[Prediction], cfg: EvalConfig, out_path: Path) -> dict:
    """Per-sample JSONL (reference, prediction, CER, WER, failure flag, ...) and the summary."""
    norm = cfg.normalization()
    tasks = [r.get("task") or "ocr" for r in rows]
    scores = [metrics.SampleScore.of(r["text"], p.text, norm, p.looped) for r, p in zip(rows, preds, strict=True)]
    extra = [metrics.task_scores(t, r["text"], p.text) for t, r, p in zip(tasks, rows, preds, strict=True)]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as f:
        for row, pred, score, task, more in zip(rows, preds, scores, tasks, extra, strict=True):
            f.write(json.dumps({"id": row["id"], "image": row.get("image_path"), "task": task, "prompt": row.get("prompt"),
                                "reference": row["text"], "prediction": pred.text, "stopped": pred.stopped,
                                "n_tokens": pred.n_tokens, **score.to_dict(), **more}, ensure_ascii=False) + "\n")
    summary = metrics.summarize_tasks(tasks, scores, extra, norm)
    summary["stopped_rate"] = sum(p.stopped for p in preds) / len(preds)
    return summary


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def describe(summary: dict) -> str:
    """One line with each task's own metric: CER/WER for OCR rows, EM/F1 for Q&A, ROUGE-L for summaries."""
    parts = []
    if any(t in metrics.OCR_TASKS for t in summary.get("tasks") or ["ocr"]):
        parts.append(f"CER {_fmt(summary['cer'])} WER {_fmt(summary['wer'])} exact {_fmt(summary['exact_match'])} "
                     f"stopped {_fmt(summary.get('stopped_rate'))} catastrophic {_fmt(summary['catastrophic_rate'])} "
                     f"(n={summary.get('ocr_n', summary['n'])})")
    if "qa_f1" in summary:
        parts.append(f"Q&A EM {_fmt(summary['qa_exact_match'])} F1 {_fmt(summary['qa_f1'])} (n={summary['qa_n']})")
    if "summarize_rouge_l" in summary:
        parts.append(f"summaries ROUGE-L {_fmt(summary['summarize_rouge_l'])} (n={summary['summarize_n']})")
    return "; ".join(parts)


def compare(before: dict, after: dict) -> str:
    """``before -> after`` of each task's own metric: CER for OCR rows, token F1 for Q&A, ROUGE-L for summaries."""
    pairs = []
    if before.get("cer") is not None or after.get("cer") is not None:
        pairs.append(("CER", before.get("cer"), after.get("cer")))
    pairs += [(label, before.get(key), after.get(key)) for key, label in (("qa_f1", "Q&A token F1"),
                                                                         ("summarize_rouge_l", "ROUGE-L")) if key in after]
    return ", ".join(f"{label} before {_fmt(b)} -> after {_fmt(a)}" for label, b, a in pairs)


def evaluate_dataset(loaded, dataset, cfg: EvalConfig, out_path: Path, tag: str) -> dict:
    """Score ``dataset`` (rows with image, text, prompt, id); write per-sample JSONL to ``out_path``."""
    clock = StageClock()
    with clock.stage("decode"):  # reading the rows decodes their images
        rows = eval_rows(dataset, cfg)
    bound = max_new_tokens_for([r["text"] for r in rows], loaded.processor.tokenizer, cfg)
    preds = generate(loaded, rows, cfg, bound, desc=f"eval {tag}", clock=clock)
    clock.count("images", len(rows))
    summary = score_and_write(rows, preds, cfg, out_path)
    summary["max_new_tokens"] = bound
    summary |= clock.take()  # time/decode_s, time/preprocess_s, time/generate_s, time/wall_s, images_per_s
    log.info("eval %s: %s", tag, describe(summary), extra={"fields": {"eval": tag, **summary}})
    return summary


class PeriodicEvalCallback(TrainerCallback):
    """Score a fixed eval subset every ``eval.every_steps`` steps: the CER/WER-over-steps curve.

    ``loaded`` is the backend's ``LoadedModel``: Unsloth must switch to inference and back.
    """

    def __init__(self, loaded, dataset, cfg: EvalConfig, log_fn: Callable[[dict, int], None]):
        self.loaded, self.cfg, self.log_fn = loaded, cfg, log_fn
        self.rows = list(dataset.select(range(min(cfg.periodic_samples, len(dataset)))))
        self.bound = max_new_tokens_for([r["text"] for r in self.rows], loaded.processor.tokenizer, cfg)
        self.seconds = 0.0  # wall time spent here, which the trainer's wall time includes

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.cfg.every_steps:
            return
        start = time.time()
        self.loaded.for_inference()
        try:
            summary = score_rows(self.loaded, self.rows, self.cfg, self.bound, desc=f"eval step {state.global_step}")
        finally:
            self.loaded.for_training()
        self.log_fn({k: v for k, v in summary.items() if k != "normalization"}, state.global_step)
        self.seconds += time.time() - start
