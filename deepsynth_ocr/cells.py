"""What notebook cells call besides the jobs: the config from a notebook's parameters, and displays of a run.

Notebooks hold a parameters cell of plain literals (flat ``RunConfig`` names such as
``train_learning_rate``) and cells that each call one function from here or from the package.
Precedence: ``RunConfig`` defaults < the YAML at ``config_path`` < parameters whose value differs
from the default (so a parameter left at its default never overrides the YAML).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from deepsynth_ocr import keep_unsloth_out_for
from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.runs import RunDirError, RunPaths, new_run_path, open_finished

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Notebook parameters that are not RunConfig fields, on purpose.
EXTRA_PARAMETERS = {
    "config_path": "YAML run config to start from ('' for the defaults).",
    "run_dir": "Directory this notebook writes into ('' for a new runs/<name>_<timestamp>).",
    "finetune_run_dir": "Run directory of a finished fine-tune, whose adapter is evaluated or used.",
    "inputs": "Images, folders, globs or PDFs to read (inference).",
}


def use_project_root() -> Path:
    """Move to the project root when started from ``notebooks/`` (Jupyter's default there), so config
    paths such as ``data/samples/train.jsonl`` mean the same in Jupyter, papermill and the CLI."""
    if Path.cwd().name == "notebooks" and (Path.cwd().parent / "deepsynth_ocr").is_dir():
        os.chdir(Path.cwd().parent)
    return Path.cwd()


def config_from_parameters(namespace: dict, config_path: str = "") -> RunConfig:
    """The run config from a notebook's parameters (pass ``globals()``) over ``config_path``'s YAML."""
    use_project_root()
    base = RunConfig.from_yaml(config_path) if config_path else RunConfig()
    defaults = RunConfig().to_flat()
    changed = {k: namespace[k] for k in defaults if k in namespace and namespace[k] != defaults[k]}
    cfg = RunConfig.from_flat(changed, base=base)
    check_inputs(cfg)
    keep_unsloth_out_for(cfg.model.backend)  # the notebook's jobs import transformers after this cell
    return cfg


def check_inputs(cfg: RunConfig) -> None:
    """Fail early, naming the parameter, when an input path does not exist."""
    for section, name in (("data", "train_path"), ("data", "eval_path")):
        value = getattr(getattr(cfg, section), name)
        if value and not Path(value).exists() and "*" not in value:
            raise ConfigError(
                f"{section}.{name} (notebook parameter {section}_{name}): not found: {value} "
                f"(relative paths are from {Path.cwd()})"
            )


def metrics_table(run_dir: str | Path):
    """Before/after CER, WER and exact match of a run, as a table (pandas DataFrame)."""
    import pandas as pd

    manifest = RunPaths(Path(run_dir)).read_manifest()
    rows = {tag: m for tag, m in (manifest.get("metrics") or {}).items() if isinstance(m, dict)}
    if not rows:
        raise RunDirError(f"{run_dir}: no evaluation metrics in manifest.json (was eval.enabled false?)")
    cols = [c for c in ("cer", "wer", "cer_mean", "cer_median", "exact_match", "stopped_rate", "n")
            if any(c in m for m in rows.values())]
    return pd.DataFrame({tag: {c: m.get(c) for c in cols} for tag, m in rows.items()}).T


def _image(fig):
    """A figure as an inline PNG: shows the same under any matplotlib backend, and only once."""
    import io

    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return Image(data=buf.getvalue(), format="png")


def _image_rows(rows: list[tuple]):
    """``(PIL image or None, caption)`` rows stacked in one figure, shown as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 1.4 * len(rows)))
    for i, (image, caption) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, i + 1)
        if image is not None:
            ax.imshow(image)
        ax.set_axis_off()
        ax.set_title(caption, fontsize=8, loc="left")
    fig.tight_layout()
    return _image(fig)


def _eval_rows(run_dir: str | Path, tag: str) -> list[dict]:
    paths = RunPaths(Path(run_dir))
    return paths.read_jsonl(paths.eval_file(tag))


def _eval_image(row: dict):
    from PIL import Image

    return Image.open(row["image"]).convert("RGB") if row.get("image") and Path(row["image"]).is_file() else None


def sample_predictions(run_dir: str | Path, tag: str = "after", n: int = 6):
    """``n`` eval images with reference, prediction and CER (from ``eval/<tag>.jsonl``)."""
    return _image_rows([(_eval_image(r), f"ref: {r['reference']!r}   pred: {r['prediction']!r}   CER {r['cer']:.2f}")
                        for r in _eval_rows(run_dir, tag)[:n]])


def before_after_samples(run_dir: str | Path, n: int = 6):
    """``n`` eval images, each with its reference, the base model's and the fine-tuned model's prediction."""
    before = {r["id"]: r for r in _eval_rows(run_dir, "before")}
    return _image_rows([
        (_eval_image(r), f"ref: {r['reference']!r}   base: {before[r['id']]['prediction']!r} "
                         f"(CER {before[r['id']]['cer']:.2f})   fine-tuned: {r['prediction']!r} (CER {r['cer']:.2f})")
        for r in _eval_rows(run_dir, "after")[:n] if r["id"] in before
    ])


def training_curves(run_dir: str | Path):
    """The report's loss and CER/WER-over-steps plots for a run (from ``metrics.jsonl``)."""
    from deepsynth_ocr.report import error_rate_figure, loss_figure

    paths = RunPaths(Path(run_dir))
    records = paths.read_jsonl(paths.metrics)
    baselines = {r["eval"].removeprefix("baseline_"): r for r in records if str(r.get("eval", "")).startswith("baseline_")}
    return [_image(fig) for fig in (loss_figure(records), error_rate_figure(records, baselines)) if fig is not None]


def prepare_data(cfg: RunConfig, run_dir: str = ""):
    """``jobs.prepare.prepare`` writing into ``<run_dir>/dataset`` unless ``prepare.output_dir`` is set."""
    from deepsynth_ocr.jobs.prepare import prepare

    if run_dir and not cfg.prepare.output_dir:
        cfg.prepare.output_dir = str(Path(run_dir) / "dataset")
    result = prepare(cfg)
    print(result.summary())
    return result


def prepare_table(result):
    """Per source: read, kept, rejected and the count of each rejection reason (pandas DataFrame)."""
    import pandas as pd

    return pd.DataFrame([{"source": r.source, "read": r.read, "kept": r.kept, "rejected": r.rejected, **r.by_reason()}
                         for r in result.reports]).fillna(0)


def dataset_samples(path: str | Path, split: str = "train", n: int = 6):
    """``n`` rows of a prepared dataset: image, prompt and target text."""
    import datasets

    ds = datasets.load_from_disk(str(path))[split]
    rows = ds.select(range(min(n, len(ds))))
    return _image_rows([(r["image"].convert("RGB"), f"{r['prompt']!r} -> {r['text']!r}") for r in rows])


def run_config_path(run_dir: str) -> str:
    """A finished run's resolved ``config.yaml`` ('' when no run is given)."""
    return str(open_finished(run_dir).config) if run_dir else ""


def adapter_dir(run_dir: str) -> str | None:
    """A finished run's ``adapter/`` directory (None when no run is given), checked to exist."""
    if not run_dir:
        return None
    return str(open_finished(run_dir, need_adapter=True).adapter)


def output_file(run_dir: str, cfg: RunConfig, filename: str) -> Path:
    """``<run_dir>/<filename>``, in a new run directory when ``run_dir`` is empty."""
    directory = Path(run_dir) if run_dir else new_run_path(cfg.output_root, cfg.name)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / filename


def show_report(run_dir: str | Path):
    """The run's self-contained ``report.html``, shown inline."""
    from IPython.display import HTML

    return HTML(RunPaths(Path(run_dir)).report.read_text(encoding="utf-8"))


def predictions_table(path: str | Path, n: int = 20):
    """The first ``n`` rows of an inference JSONL (pandas DataFrame)."""
    import pandas as pd

    return pd.DataFrame([json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()[:n]])
