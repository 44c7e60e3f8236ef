"""The stand-alone evaluation job: the base model, optionally an adapter, and the baselines on one eval set.

Writes a run directory of its own (``eval/before.jsonl``, ``eval/after.jsonl``, baselines, report).
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepsynth_ocr.baselines import run_baselines
from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.evaluate import evaluate_dataset
from deepsynth_ocr.models.backends import load_base
from deepsynth_ocr.report import write_report
from deepsynth_ocr.runs import Run

log = logging.getLogger(__name__)


def evaluate(cfg: RunConfig, adapter_dir: str | Path | None = None, run_dir: str | Path | None = None) -> tuple[Path, dict]:
    """Score the base model (``before``), the adapter's fine-tuned model (``after``) when given, and the
    baselines on ``data.eval_path``, into a new run directory with ``report.html``."""
    cfg.validate()
    if not cfg.data.eval_path:
        raise ConfigError("data.eval_path: stand-alone evaluation needs an eval manifest")
    with Run.start(cfg, run_dir, kind="evaluate") as run:
        with run.stage("load"):
            loaded = load_base(cfg)
        # A prepare output directory gives its validation split, as for the eval set of a training run.
        dataset, report = prepare_manifest(cfg.data.eval_path, cfg.data, loaded.processor.tokenizer,
                                           loaded.family.default_prompt, split="validation", prepare_cfg=cfg.prepare)
        (log.warning if report.rejected else log.info)("data %s", report.summary())
        with run.stage("eval_before"):
            summaries = {"before": evaluate_dataset(loaded, dataset, cfg.eval, run.paths.eval_file("before"), "before")}
        if adapter_dir:
            with run.stage("eval_after"):
                summaries["after"] = evaluate_dataset(loaded.with_adapter(adapter_dir), dataset, cfg.eval,
                                                      run.paths.eval_file("after"), "after")
        with run.stage("baselines"):
            summaries |= {f"baseline_{k}": v for k, v in run_baselines(dataset, cfg.eval, run.paths.eval_dir).items()}
        for tag, summary in summaries.items():
            run.log_metrics({"step": 0, "eval": tag, **summary})
        run.update(metrics=summaries, adapter=str(adapter_dir) if adapter_dir else None)
    write_report(run.dir)
    return run.dir, summaries
