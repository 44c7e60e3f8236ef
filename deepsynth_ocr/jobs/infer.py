"""The batch OCR job: load the model (base or merged weights, plus ``infer.adapter``), read every input.

The output is one resumable JSONL file (``infer.ocr_inputs``), not a run directory.
"""

from __future__ import annotations

from pathlib import Path

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.infer import InferSummary, ocr_inputs, require_some_input
from deepsynth_ocr.models.backends import LoadedModel, load_base


def load_for_inference(cfg: RunConfig) -> LoadedModel:
    """Base model (or merged weights) from ``cfg.model``, with ``cfg.infer.adapter`` attached if set."""
    loaded = load_base(cfg)
    if cfg.infer.adapter:
        loaded = loaded.with_adapter(cfg.infer.adapter)
    loaded.model.eval()
    return loaded


def infer(specs: list[str], out_path: str | Path, cfg: RunConfig, loaded: LoadedModel | None = None) -> InferSummary:
    """OCR ``specs`` (files, folders, globs, PDFs) into ``out_path``; loads the model unless given one."""
    expanded = require_some_input(specs)  # before the model loads: a typo costs no minute of loading
    if cfg.infer.backend == "hf" and loaded is None:
        cfg.validate()
        loaded = load_for_inference(cfg)
    return ocr_inputs(specs, out_path, cfg, loaded, expanded)
