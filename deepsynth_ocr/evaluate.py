"""Batched greedy generation over an eval set, scored with CER/WER, written as per-sample JSONL."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from deepsynth_ocr import metrics
from deepsynth_ocr.collate import OcrCollator
from deepsynth_ocr.config import EvalConfig

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    text: str
    stopped: bool  # emitted EOS before the token bound


def max_new_tokens_for(references: list[str], tokenizer, cfg: EvalConfig) -> int:
    """The configured bound, or the longest reference's length plus a margin (and room for EOS)."""
    if cfg.max_new_tokens:
        return cfg.max_new_tokens
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    return int(longest * (1 + cfg.max_new_tokens_margin)) + 2


@torch.no_grad()
def generate(model, processor, family, rows, cfg: EvalConfig, max_new_tokens: int, desc: str = "generate") -> list[Prediction]:
    """Greedy, batched, left-padded generation for ``rows`` (a sequence of {image, prompt} dicts)."""
    collator = OcrCollator(processor, family, for_generation=True)
    tokenizer = processor.tokenizer
    loader = DataLoader(rows, batch_size=cfg.batch_size, collate_fn=collator, shuffle=False)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[Prediction] = []
    try:
        for batch in tqdm(loader, desc=desc, leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            width = batch["input_ids"].shape[1]
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                no_repeat_ngram_size=cfg.no_repeat_ngram_size or None,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=collator.pad_id,
            )[:, width:]
            for row in generated.tolist():
                stopped = tokenizer.eos_token_id in row
                if stopped:
                    row = row[: row.index(tokenizer.eos_token_id)]
                out.append(Prediction(tokenizer.decode(row, skip_special_tokens=True), stopped))
    finally:
        model.train(was_training)
    return out


def evaluate(model, processor, family, dataset, cfg: EvalConfig, out_path: Path, tag: str) -> dict:
    """Score ``dataset`` (rows with image, text, prompt, id); write per-sample JSONL to ``out_path``."""
    if cfg.max_samples:
        dataset = dataset.select(range(min(cfg.max_samples, len(dataset))))
    rows = list(dataset)
    references = [r["text"] for r in rows]
    bound = max_new_tokens_for(references, processor.tokenizer, cfg)
    preds = generate(model, processor, family, rows, cfg, bound, desc=f"eval {tag}")
    summary = metrics.aggregate(references, [p.text for p in preds])
    summary["stopped_rate"] = sum(p.stopped for p in preds) / len(preds)
    summary["max_new_tokens"] = bound
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as f:
        for row, pred in zip(rows, preds):
            f.write(json.dumps({
                "id": row["id"],
                "reference": row["text"],
                "prediction": pred.text,
                "cer": metrics.cer(row["text"], pred.text),
                "wer": metrics.wer(row["text"], pred.text),
                "stopped": pred.stopped,
            }, ensure_ascii=False) + "\n")
    log.info("eval %s: CER %.4f WER %.4f exact %.3f stopped %.3f (n=%d)", tag, summary.get("cer", float("nan")),
             summary.get("wer", float("nan")), summary["exact_match"], summary["stopped_rate"], summary["n"])
    return summary
