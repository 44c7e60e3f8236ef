"""CER and WER through jiwer, per sample and aggregated.

Definitions the kit commits to (jiwer's own behaviour differs between versions):
- an empty reference scores 0 when the hypothesis is empty too, else 1 per sample (jiwer 4
  returns a raw edit count there, which would not be a rate);
- corpus CER/WER is total edits / total reference length over non-empty references, i.e. what
  jiwer computes for lists; the per-sample mean weights every sample equally instead.
No normalisation is applied beyond stripping the ends: scores are on the text as given.
"""

from __future__ import annotations

import statistics

import jiwer


def _rate(fn, reference: str, hypothesis: str) -> float:
    if not reference.strip():
        return 0.0 if not hypothesis.strip() else 1.0
    return float(fn(reference, hypothesis))


def cer(reference: str, hypothesis: str) -> float:
    return _rate(jiwer.cer, reference, hypothesis)


def wer(reference: str, hypothesis: str) -> float:
    return _rate(jiwer.wer, reference, hypothesis)


def aggregate(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus and per-sample aggregates of CER/WER plus the exact-match rate."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no samples to score")
    cers = [cer(r, h) for r, h in zip(references, hypotheses)]
    wers = [wer(r, h) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
    out = {
        "n": len(references),
        "cer_mean": statistics.fmean(cers),
        "cer_median": statistics.median(cers),
        "wer_mean": statistics.fmean(wers),
        "exact_match": sum(r.strip() == h.strip() for r, h in zip(references, hypotheses)) / len(references),
    }
    if pairs:
        refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
        out["cer"] = float(jiwer.cer(refs, hyps))
        out["wer"] = float(jiwer.wer(refs, hyps))
    return out
