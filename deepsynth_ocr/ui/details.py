"""What the UI's pages show of a run directory, read from its files (no torch): curves, samples,
checkpoints, config, the console log's tail, a sweep's trials, and a comparison of runs.

Everything returned here is text a page shows, so every string passes ``secrets.redact`` first.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import yaml

from deepsynth_ocr.checkpoint_scores import read_score
from deepsynth_ocr.metrics import sample_label, summarize_rows, task_metric_rows
from deepsynth_ocr.runs import RunInfo, RunPaths, read_run
from deepsynth_ocr.secrets import redact

TAIL_BYTES = 64 * 1024  # what a page shows of a console log when it first opens
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal colour and cursor codes
METRIC_LABELS = {"cer": "CER", "qa_f1": "Q&A token F1", "summarize_rouge_l": "ROUGE-L"}


TRAIN_CURVES = {"loss": "loss", "lr": "learning_rate", "grad_norm": "grad_norm"}


def series(run_dir: Path) -> dict:
    """``{"loss" | "lr" | "grad_norm": [[step, value], ...], "cer": [[step, cer, tag], ...]}`` from metrics.jsonl; a
    resumed run's later rows replace the earlier ones of the same step."""
    curves: dict[str, dict[int, float]] = {name: {} for name in TRAIN_CURVES}
    cer: dict[tuple, float] = {}
    for row in RunPaths(run_dir).read_jsonl(RunPaths(run_dir).metrics):
        if "loss" in row and "eval" not in row and isinstance(row.get("step"), int):
            for name, key in TRAIN_CURVES.items():
                if isinstance(row.get(key), (int, float)):
                    curves[name][row["step"]] = row[key]
        elif row.get("eval") in ("before", "periodic", "after") and row.get("cer") is not None:
            cer[(row["step"], row["eval"])] = row["cer"]
    return {**{name: sorted([s, v] for s, v in points.items()) for name, points in curves.items()},
            "cer": sorted([s, v, tag] for (s, tag), v in cer.items())}


def eta_seconds(info: RunInfo) -> float | None:
    progress = info.manifest.get("progress") or {}
    pace, step, total = progress.get("s_per_step"), progress.get("step"), progress.get("max_steps")
    if info.status != "running" or not pace or step is None or not total:
        return None
    return round(pace * max(0, total - step))


def summary(info: RunInfo) -> dict:
    """One row of the runs list."""
    return redact({**info.to_dict(), "dir_name": info.dir.name, "eta_s": eta_seconds(info),
                   "device": info.manifest.get("device"), "error": info.error})


def checkpoints(run_dir: Path) -> list[dict]:
    """The run's checkpoints by step, each with the periodic eval's score at its step where one was taken
    (``checkpoint_scores``), its rank by that score (1: best) and whether it became the run's adapter."""
    out = []
    folder = RunPaths(run_dir).checkpoints
    for path in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1) if folder.is_dir() else []:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        score = read_score(path)
        out.append({"name": path.name, "step": path.name.split("-")[-1], "size_mb": round(size / 2**20, 2),
                    "complete": (path / "trainer_state.json").is_file(), "metric": METRIC_LABELS.get(score.get("metric")),
                    "value": score.get("value"), "rank_value": score.get("rank_value"), "rank": None})
    ranked = sorted((c for c in out if c["rank_value"] is not None), key=lambda c: c["rank_value"])
    for rank, c in enumerate(ranked, 1):
        c["rank"] = rank
    adapter_from = (read_run(run_dir).manifest.get("selection") or {}).get("adapter_from")
    for c in out:
        c["is_adapter"] = c["name"] == adapter_from
    return out


def config_text(run_dir: Path) -> str:
    path = RunPaths(run_dir).config
    return redact(path.read_text(encoding="utf-8")) if path.is_file() else ""


def flat_config(run_dir: Path) -> dict:
    path = RunPaths(run_dir).config
    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    flat = {}
    for key, value in (data or {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return redact(flat)


TAG = re.compile(r"[A-Za-z0-9_]{1,64}")  # an evaluation's name: eval/<tag>.jsonl


def eval_tags(run_dir: Path) -> list[str]:
    """The run's evaluations (``eval/<tag>.jsonl``): before, after, then baselines and others by name."""
    folder = RunPaths(run_dir).eval_dir
    tags = [p.stem for p in folder.glob("*.jsonl") if TAG.fullmatch(p.stem)] if folder.is_dir() else []
    return sorted(tags, key=lambda t: ({"before": 0, "after": 1}.get(t, 2), t))


@functools.lru_cache(maxsize=16)
def _read_eval(path: str, mtime_ns: int, size: int) -> tuple[dict, ...]:
    return tuple(RunPaths(Path(path).parent.parent).read_jsonl(Path(path)))


def eval_rows(run_dir: Path, tag: str) -> tuple[dict, ...]:
    """An evaluation's rows in file order, parsed once per version of the file (a page's thumbnails and its export
    read the same rows)."""
    path = RunPaths(run_dir).eval_file(tag)
    if not TAG.fullmatch(tag) or not path.is_file():
        return ()
    stat = path.stat()
    return _read_eval(str(path), stat.st_mtime_ns, stat.st_size)


EVAL_LABELS = {"before": "base model", "after": "fine-tuned"}


def scores(run_dir: Path) -> list[dict]:
    """Each evaluation of the run (base, fine-tune, each classical baseline) scored from its rows, side by side:
    ``[{tag, label, n, cer, wer, exact_match, catastrophic_rate, tasks}]``."""
    out = []
    for tag in eval_tags(run_dir):
        rows = eval_rows(run_dir, tag)
        if not rows:
            continue
        try:
            summary = summarize_rows(list(rows))
        except (KeyError, TypeError, ValueError):  # rows without their per-sample scores: listed, not scored
            summary = {"n": len(rows)}
        label = EVAL_LABELS.get(tag) or (f"{tag.removeprefix('baseline_')} (baseline)" if tag.startswith("baseline_") else tag)
        out.append(redact({"tag": tag, "label": label, "n": summary["n"], "cer": summary.get("cer"), "wer": summary.get("wer"),
                           "exact_match": summary.get("exact_match"), "catastrophic_rate": summary.get("catastrophic_rate"),
                           "task_metrics": [(METRIC_LABELS.get(k, k), summary[k]) for k in ("qa_f1", "summarize_rouge_l") if k in summary]}))
    return out


def samples(run_dir: Path, n: int = 8) -> list[dict]:
    """The first ``n`` eval rows with the prediction before and after training side by side."""
    before_rows, after_rows = eval_rows(run_dir, "before"), eval_rows(run_dir, "after")
    before = {r.get("id"): r for r in before_rows}
    out = []
    for index, row in enumerate(after_rows[:n] or before_rows[:n]):
        first = before.get(row.get("id"), {})
        out.append(redact({"index": index, "id": row.get("id"), "reference": row.get("reference"),
                           "before": first.get("prediction"), "before_score": sample_label(first, 3) if first else "",
                           "after": row.get("prediction") if after_rows else None,
                           "after_score": sample_label(row, 3) if after_rows else "",
                           "has_image": bool(row.get("image"))}))
    return out


def read_log(path: Path, offset: int | None) -> tuple[str, int]:
    """New text of a console log from byte ``offset`` (None: its last ``TAIL_BYTES``) and the next offset. A
    progress bar's carriage-return redraws are kept to their last state."""
    if not path.is_file():
        return "", 0
    size = path.stat().st_size
    if offset is None or offset > size:
        offset = max(0, size - TAIL_BYTES)
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(size - offset)
    end = data.rfind(b"\n") + 1  # whole lines only; the rest comes with the next read
    text = ANSI.sub("", data[:end].decode("utf-8", errors="replace"))  # libraries colour their log lines
    lines = [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r") for line in text.split("\n")]
    return redact("\n".join(lines)), offset + end


def sweep_trials(sweep_dir: Path) -> list[dict]:
    """Each trial of a sweep: number, state, CER, parameters, run directory; read from where the study lives (its
    journal file, or the database the sweep's manifest names)."""
    url = (RunPaths(sweep_dir).read_manifest().get("sweep") or {}).get("storage")
    if url and "***" in url:  # the manifest masks a password: the UI cannot connect with it
        return []
    if not url and not (sweep_dir / "study.journal").is_file():
        return []
    import optuna

    from deepsynth_ocr.jobs.sweep import study_storage, trial_states

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage(sweep_dir, url)
    rows = []
    for summary_ in optuna.get_all_study_summaries(storage):
        trials = optuna.load_study(study_name=summary_.study_name, storage=storage).get_trials(deepcopy=False)
        states = trial_states(trials)
        rows += [redact({"number": t.number, "state": states[t.number], "cer": t.value, "params": t.params,
                         "run_dir": Path(t.user_attrs.get("run_dir", "")).name}) for t in trials]
    return rows


def compare(infos: list[RunInfo], n_rows: int = 10) -> dict:
    """Curves, metrics and config differences of several runs, and the same eval rows' predictions."""
    configs = {i.dir.name: flat_config(i.dir) for i in infos}
    keys = sorted({k for c in configs.values() for k in c})
    differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs.values()}) > 1
                 and k not in ("name", "output_root")]
    after = {i.dir.name: {r.get("id"): r for r in eval_rows(i.dir, "after")} for i in infos}
    ids = [r.get("id") for r in eval_rows(infos[0].dir, "after")][:n_rows] if infos else []
    return redact({
        "runs": [summary(i) for i in infos],
        # each task's own metric after training (Q&A token F1, ROUGE-L, ...), never averaged into the CER rows
        "task_metrics": [{"label": label, "values": values} for label, values in task_metric_rows(
            [((i.manifest.get("metrics") or {}).get("after") or {}) for i in infos])],
        "series": {i.dir.name: series(i.dir) for i in infos},
        "config": [{"key": k, "values": [configs[i.dir.name].get(k) for i in infos]} for k in differing],
        "rows": [{"id": row_id, "reference": after[infos[0].dir.name][row_id].get("reference"),
                  "predictions": [after[i.dir.name].get(row_id, {}).get("prediction") for i in infos]} for row_id in ids],
    })
