"""Export a fine-tuned ``LoadedModel``: the adapter, merged weights, a model card, an optional hub push.

Library code of plain values; ``jobs.export`` finds a run's adapter and feeds this module.

Every export verifies itself in a fresh process: the exported files are loaded there from scratch
(base + ``load_adapter`` for the adapter, ``from_pretrained`` for the merged weights) and their
logits on a fixed batch are compared with the fine-tuned model's: identical for the adapter, within
``MERGED_RTOL`` of the largest logit for the merged weights (see there). Merged weights keep the
training dtype (bfloat16 in the GPU recipes, float32 for the CPU tiny model). Only the last
``COMPARED_POSITIONS`` positions of the logits are compared, so a real checkpoint's vocabulary
does not turn the check into gigabytes of temporary files.

Layout of ``<out>``: ``adapter/``, ``merged/``, ``README.md`` (the model card), ``verification.json``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from deepsynth_ocr.collate import make_collator
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.models.adapters import logits
from deepsynth_ocr.models.backends import LoadedModel, checkpoint_source, load_base

log = logging.getLogger(__name__)

# How far merged logits may drift, relative to the largest logit on the fixed batch. Merging computes
# (W + s*B*A) x where the adapter computed W x + s*B(A x): the same function with the float additions in
# another order, so the drift is rounding and scales with the logits and the dtype's precision. Measured
# on the tiny base after the smoke fine-tune (largest logit 14.2): float32 3.5e-6 relative (5e-5 absolute,
# which an absolute 1e-5 bound would reject), bfloat16 2.3e-2 (the model in bfloat16 differs from itself
# in float32 by 2.8e-2). float16 has 8x finer steps than bfloat16.
MERGED_RTOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
COMPARED_POSITIONS = 32
CONFIG_NAME = "deepsynth_config.yaml"  # the run config, so the export can be reloaded on its own


class ExportError(RuntimeError):
    """An export that does not reproduce the fine-tuned model: a real failure, not a user's mistake."""


def compared_logits(model, batch: dict) -> torch.Tensor:
    return logits(model, batch, last=COMPARED_POSITIONS)


def _reload(kind: str, directory: Path):
    """The exported model, loaded as a user would load it (runs in the fresh process)."""
    cfg = RunConfig.from_yaml(directory / CONFIG_NAME)
    if kind == "adapter":
        return load_base(cfg).with_adapter(directory).model
    cfg.model.name_or_path = str(directory)
    return load_base(cfg).model


def merged_tolerance(expected: torch.Tensor, dtype: torch.dtype) -> float:
    """The largest logit difference a merged export in ``dtype`` may show (see ``MERGED_RTOL``)."""
    return MERGED_RTOL[dtype] * max(1.0, expected.abs().max().item())


def verify_in_fresh_process(kind: str, directory: Path, batch: dict, expected: torch.Tensor, atol: float) -> dict:
    """Reload ``directory`` in a new Python process; its logits on ``batch`` must match ``expected``
    within ``atol``. Returns ``{"max_logit_diff": ..., "allowed": atol}``."""
    with tempfile.TemporaryDirectory() as tmp:
        batch_path, out_path = Path(tmp) / "batch.pt", Path(tmp) / "logits.pt"
        torch.save(batch, batch_path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-m", "deepsynth_ocr.export", kind, str(directory), str(batch_path), str(out_path)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise ExportError(f"{kind} export at {directory} does not reload in a fresh process:\n{proc.stderr[-3000:]}")
        got = torch.load(out_path)
    diff = (got - expected).abs().max().item()
    if diff > atol:
        raise ExportError(f"{kind} export at {directory} reloads with logits off by {diff:.3g} (allowed {atol:g})")
    log.info("%s export verified in a fresh process: max logit diff %.3g (allowed %g)", kind, diff, atol)
    return {"max_logit_diff": diff, "allowed": atol}


# Each task's own columns: OCR rows by CER/WER, Q&A rows by exact match and token F1, summaries by ROUGE-L.
CARD_METRICS = (("OCR", ("cer", "wer", "exact_match", "catastrophic_rate"), ("CER", "WER", "exact match", "catastrophic")),
                ("Q&A", ("qa_exact_match", "qa_f1"), ("exact match", "token F1")),
                ("summaries", ("summarize_rouge_l",), ("ROUGE-L",)))


def _metrics_table(metrics: dict) -> list[str]:
    """Before/after rows per task the eval set holds (OCR alone, with n/a, when nothing was measured)."""
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    lines = []
    for task, keys, labels in CARD_METRICS:
        if task != "OCR" and not any(k in m for m in (before, after) for k in keys):
            continue
        if task == "OCR" and lines == [] and any(k in m for m in (before, after) for k in ("qa_f1", "summarize_rouge_l")) \
                and all(m.get("cer") is None for m in (before, after)):
            continue  # an eval set without OCR rows: no CER row of n/a
        lines += [f"| {task} | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for tag, m in (("before", before), ("after", after)):
            lines.append(f"| {tag} | " + " | ".join("n/a" if m.get(k) is None else f"{m[k]:.4f}" for k in keys) + " |")
        lines.append("")
    return lines


def model_card(cfg: RunConfig, verification: dict, manifest: dict | None = None, data: list | None = None,
               checkpoint: dict | None = None) -> str:
    """Markdown model card: base model, data summary (``data``: the run's data report), config,
    before/after metrics (from the run's ``manifest``), verification. ``checkpoint`` (name and periodic eval
    score): the export is that checkpoint's adapter, whose score replaces the run's final metrics."""
    from huggingface_hub import ModelCardData

    source = checkpoint_source(cfg.model)
    base = source or f"{cfg.model.family} (random, built in code by deepsynth-ocr)"
    manifest, data = manifest or {}, data or []
    # base_model names a hub repository; a local directory (such as the tiny base) is not one.
    meta = ModelCardData(base_model=source if source and not Path(source).exists() else None, library_name="peft", pipeline_tag="image-text-to-text",
                         tags=["ocr", "deepseek-ocr", "lora", "deepsynth-ocr"])
    lines = ["---", meta.to_yaml(), "---", f"# OCR fine-tune of {base}", "",
             "LoRA fine-tune made with deepsynth-ocr. `adapter/` holds the LoRA adapter, `merged/` (when present) "
             "the base model with the adapter merged in.", "", "## Base model", "", f"- family: `{cfg.model.family}`",
             f"- checkpoint: `{base}`" + (f" at revision `{cfg.model.revision}`" if cfg.model.revision else ""), "",
             "## Data", ""]
    lines += [f"- `{r.get('source')}`: read {r.get('read')}, kept {r.get('kept')}, rejected {r.get('rejected')}" for r in data] or ["- (no data report)"]
    precision = (manifest.get("parameters") or {}).get("language_model_precision") or {}
    quantised = "4-bit (NF4)" if precision.get("4bit") else "8-bit (LLM.int8)" if precision.get("8bit") else ""
    lines += ["", "## Metrics (same eval set before and after fine-tuning)", ""]
    if quantised:  # the run evaluated the quantised model; the exports are the unquantised base + adapter
        lines += [f"Measured by the run on the {quantised} base model plus the adapter. The exports below hold the "
                  "unquantised base plus the same adapter, whose outputs differ from the quantised model's by the "
                  "quantisation error; re-run `deepsynth-ocr evaluate` on `merged/` for its own CER.", ""]
    if checkpoint:  # the run's before/after metrics are its final adapter's, not this checkpoint's
        score = (f"{checkpoint['metric']} {checkpoint['value']:.4f} at step {checkpoint.get('step')} (periodic evaluation)"
                 if checkpoint.get("value") is not None else "not scored (saved between periodic evaluations)")
        lines += [f"This export is `{checkpoint['name']}` of the run, not its final adapter: {score}. Run "
                  "`deepsynth-ocr evaluate` with this adapter for its full before/after table.", ""]
    else:
        lines += _metrics_table(manifest.get("metrics") or {})
    lines += ["", "## Export verification (reloaded in a fresh process, logits on a fixed batch)", "",
              "Each export against the model it was made from: the " + ("unquantised " if quantised else "")
              + "base plus the adapter.", ""]
    lines += [f"- {kind}: max logit difference {v['max_logit_diff']:.3g} (allowed {v['allowed']:.3g})"
              for kind, v in verification.items()]
    lines += ["", "## Usage", "", "From this folder, with `pip install deepsynth-ocr` (or the kit's checkout) installed: "
              "the command line, or the same from Python.", "", "```bash",
              f"deepsynth-ocr infer page.png -o predictions.jsonl -c adapter/{CONFIG_NAME} -s infer.adapter=adapter", "```",
              "", "```python", "from deepsynth_ocr.config import RunConfig", "from deepsynth_ocr.jobs.infer import infer", "",
              f'cfg = RunConfig.from_yaml("adapter/{CONFIG_NAME}")', 'cfg.infer.adapter = "adapter"',
              'infer(["page.png"], "predictions.jsonl", cfg)  # one JSON line per image: file, text, n_tokens, error',
              "```", ""]
    lines += ["## Loading", "", "Load the adapter with `deepsynth_ocr.models.adapters.load_adapter(base_model, 'adapter')`. "
              "With peft 0.21 and transformers 5.x, `PeftModel.from_pretrained` silently loads none of a DeepSeek-OCR-2 "
              "adapter's weights. `merged/` loads with `AutoModelForImageTextToText.from_pretrained`.", "",
              "## Training config", ""] + ([f"The run trained on the {quantised} base; the config below is the "
                                            "export's, which reloads the base unquantised.", ""] if quantised else []) + [
              "```yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def export_model(loaded: LoadedModel, cfg: RunConfig, out_dir: str | Path, batch: dict,
                 manifest: dict | None = None, data: list | None = None, checkpoint: dict | None = None) -> dict:
    """Export the fine-tuned peft model of ``loaded`` to ``out_dir`` and verify each export in a fresh process.

    With ``export.merged`` the adapter is merged into the model in place (export last, or pass a copy).
    ``manifest`` and ``data`` (the run's manifest and data report) feed the model card.
    Returns ``{kind: {"max_logit_diff", "allowed"}}``; raises ``ExportError`` when an export does not reproduce the model.
    """
    model, processor = loaded.model, loaded.processor
    out_dir = Path(out_dir)
    expected = compared_logits(model, batch)
    verification = {}
    adapter_dir = out_dir / "adapter"
    model.save_pretrained(str(adapter_dir))
    processor.save_pretrained(str(adapter_dir))
    cfg.to_yaml(adapter_dir / CONFIG_NAME)
    verification["adapter"] = verify_in_fresh_process("adapter", adapter_dir, batch, expected, atol=0.0)
    if cfg.export.merged:
        merged_dir = loaded.save_merged(out_dir / "merged")
        cfg.to_yaml(merged_dir / CONFIG_NAME)
        verification["merged"] = verify_in_fresh_process("merged", merged_dir, batch, expected,
                                                         atol=merged_tolerance(expected, model.dtype))
    (out_dir / "verification.json").write_text(json.dumps(verification, indent=2))
    (out_dir / "README.md").write_text(model_card(cfg, verification, manifest, data, checkpoint), encoding="utf-8")
    if cfg.export.hub_repo_id:
        push_to_hub(out_dir, cfg.export.hub_repo_id, cfg.export.hub_private)
    return verification


def push_to_hub(out_dir: Path, repo_id: str, private: bool) -> str:
    """Upload the export folder (card, adapter, merged) to ``repo_id``; needs HF_TOKEN and a network."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    url = api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, commit_message="deepsynth-ocr export")
    log.info("pushed %s to %s", out_dir, url)
    return str(url)


def fixed_batch(loaded: LoadedModel, cfg: RunConfig, n: int = 2) -> dict:
    """The first ``n`` training rows as a model batch: the same rows every time for the same data."""
    ds, _ = prepare_manifest(cfg.data.train_path, cfg.data, loaded.processor.tokenizer, loaded.family.default_prompt)
    return make_collator(loaded.processor, loaded.family)([ds[i] for i in range(min(n, len(ds)))])


if __name__ == "__main__":  # the fresh process of verify_in_fresh_process
    kind, directory, batch_path, out_path = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.save(compared_logits(_reload(kind, directory), torch.load(batch_path)), out_path)
