"""The export job: a finished run's adapter out as adapter + merged weights + model card, each verified.

Reads the run directory through ``runs`` (its config, adapter, manifest, data report) and writes
``<run_dir>/export/`` unless told otherwise; the export itself is the library's (``export.py``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from deepsynth_ocr import telemetry
from deepsynth_ocr.checkpoint_scores import read_score
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.export import export_model, fixed_batch
from deepsynth_ocr.hub import check_push_credentials
from deepsynth_ocr.models.backends import load_base
from deepsynth_ocr.runs import checkpoint_adapter, open_finished

log = logging.getLogger(__name__)


def export(run_dir: str | Path, out_dir: str | Path | None = None, cfg: RunConfig | None = None,
           checkpoint: str = "") -> tuple[Path, dict]:
    """Export a finished run directory (its ``adapter/``) to ``out_dir`` (default ``<run_dir>/export``); or, with
    ``checkpoint`` (``checkpoint-N``), that checkpoint's adapter (default ``<run_dir>/export-checkpoint-N``), which
    needs no finished run: a stopped or died run's checkpoint exports too."""
    paths = open_finished(run_dir, need_adapter=not checkpoint)
    adapter, picked = paths.adapter, None
    if checkpoint:
        adapter = checkpoint_adapter(paths, checkpoint)
        picked = {"name": checkpoint, **read_score(adapter)}
    cfg = cfg or RunConfig.from_yaml(paths.config)
    if cfg.export.hub_repo_id:  # before minutes of merging and verifying, not after them
        log.info("export: pushing to %s as %s", cfg.export.hub_repo_id, check_push_credentials(cfg.export.hub_repo_id, "export.hub_repo_id"))
    if cfg.model.quantised:
        # Merging into NF4 or int8 weights would round the merged update away; the export is the adapter on the
        # unquantised base, which is also what a server loads.
        log.info("export: the run trained on a %s base; the base is reloaded unquantised (model.dtype %s) "
                 "to merge the adapter", cfg.model.quantised, cfg.model.dtype)
        cfg = RunConfig.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "load_in_4bit": False,
                                                               "load_in_8bit": False}})
    out_dir = Path(out_dir) if out_dir else paths.dir / f"export-{checkpoint}" if checkpoint else paths.export
    data = json.loads(paths.data_report.read_text()) if paths.data_report.is_file() else []
    tracer = telemetry.tracer_from_env("deepsynth-ocr")  # None unless OTEL_* asks for traces
    with telemetry.span(tracer, "deepsynth-ocr export", {"run_id": paths.dir.name}):
        with telemetry.span(tracer, "load"):
            loaded = load_base(cfg).with_adapter(adapter)
        with telemetry.span(tracer, "export"):  # merge, save, and each export's verification in a fresh process
            return out_dir, export_model(loaded, cfg, out_dir, fixed_batch(loaded, cfg), paths.read_manifest(), data,
                                         checkpoint=picked)
