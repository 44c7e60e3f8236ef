"""Checkpoints ranked by the periodic evaluation: the best kept from rotation and made the run's adapter
(``train.keep_best``), and early stopping after ``train.early_stopping_patience`` evaluations without a gain.

The Trainer keeps ``state.best_global_step`` / ``best_metric`` in every checkpoint's ``trainer_state.json`` and spares
``checkpoint-<best_global_step>`` when it rotates checkpoints, so the best survives ``save_total_limit`` and a resume.
Each checkpoint also gets ``deepsynth_eval.json`` (its step's scores), which the jobs UI lists and ranks.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback

from deepsynth_ocr.checkpoint_scores import write_score

log = logging.getLogger(__name__)


def ranking_metric(summary: dict) -> tuple[str, float, bool] | None:
    """The metric checkpoints are ranked by, as (name, value, higher_is_better): CER where the rows hold OCR, else
    Q&A token F1, else summaries' ROUGE-L; None when the summary has none of them."""
    if summary.get("cer") is not None:
        return "cer", summary["cer"], False
    for key in ("qa_f1", "summarize_rouge_l"):
        if summary.get(key) is not None:
            return key, summary[key], True
    return None


class CheckpointSelection(TrainerCallback):
    """Fed each periodic evaluation through ``observe``; acts at the end of that same step, before the Trainer saves."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.scores: dict[int, dict] = {}  # step -> {"metric", "value", ...} of each periodic evaluation
        self.best: tuple[int, float] | None = None  # (step, value as lower-is-better) among saved steps
        self.best_any: float | None = None  # the best of every evaluation, which early stopping compares with
        self.stale = 0
        self.stopped_early_at: int | None = None
        self.metric: str | None = None

    def observe(self, summary: dict, step: int) -> None:
        ranked = ranking_metric(summary)
        if ranked is None:
            return
        self.metric, value, higher = ranked
        loss_like = -value if higher else value  # lower is better, for every metric
        self.scores[step] = {"step": step, "metric": self.metric, "value": value, "rank_value": loss_like,
                             **{k: summary[k] for k in ("cer", "wer", "qa_f1", "summarize_rouge_l", "n") if k in summary}}
        if self.best_any is None or loss_like < self.best_any - self.min_delta:
            self.best_any, self.stale = loss_like, 0
        else:
            self.stale += 1

    def on_train_begin(self, args, state, control, **kwargs):
        if state.best_global_step and state.best_metric is not None:  # resumed: the best so far is in the state
            self.best = (state.best_global_step, state.best_metric)
            self.best_any = state.best_metric

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        score = self.scores.get(step)
        if score is not None and args.save_steps and step % args.save_steps == 0:
            if self.best is None or score["rank_value"] < self.best[1]:
                self.best = (step, score["rank_value"])
                # The Trainer spares checkpoint-<best_global_step> from rotation and keeps both in trainer_state.json.
                state.best_global_step, state.best_metric = self.best
        if self.patience and self.stale >= self.patience and self.stopped_early_at is None:
            self.stopped_early_at = step
            log.info("early stopping at step %d: %d evaluations without a %s gain over %.4f", step, self.stale,
                     self.metric, abs(self.best_any))
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        score = self.scores.get(state.global_step)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if score is not None and folder.is_dir() and args.should_save:
            write_score(folder, score)

    def best_checkpoint(self, checkpoints: Path) -> Path | None:
        if self.best is None:
            return None
        folder = checkpoints / f"checkpoint-{self.best[0]}"
        return folder if folder.is_dir() else None

    def report(self, final_step: int, kept: str) -> dict:
        """What the manifest records: the metric, every evaluated step's value, the best saved step, what became the
        run's adapter, and where early stopping ended the run."""
        return {"metric": self.metric, "values": {str(s): v["value"] for s, v in sorted(self.scores.items())},
                "best_step": self.best[0] if self.best else None, "final_step": final_step, "adapter_from": kept,
                "stopped_early_at": self.stopped_early_at, "patience": self.patience}

