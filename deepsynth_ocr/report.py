"""``report.html`` for a run directory: one self-contained file that opens in a browser with no server.

Built only from the run directory's files (``config.yaml``, ``metrics.jsonl``, ``eval/*.jsonl``,
``manifest.json``), so ``deepsynth-ocr report RUN_DIR`` can rebuild it at any time. Plots and
images are inlined as base64 PNGs. With ``tracking.log_images: false`` (the privacy switch) the
report holds metrics only: no images, no reference or predicted texts.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from deepsynth_ocr import metrics
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.runs import RunDirError, RunPaths

log = logging.getLogger(__name__)

WORST_N = 20
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def png_data_uri(fig) -> str:
    """A matplotlib figure as an inline ``data:`` URI, for self-contained HTML."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def figure(figsize=(6, 3.2)):
    # A bare Figure renders with savefig under any backend: no matplotlib.use(), which would
    # switch the backend of a notebook that imports the kit and stop its inline plots.
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "deepsynth-ocr-matplotlib"))
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def loss_figure(records: list[dict]):
    """Training loss against steps (``metrics.jsonl`` records), or None when none was logged."""
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r and "eval" not in r]
    if not losses:
        return None
    fig, ax = figure()
    ax.plot(*zip(*losses, strict=True), marker=".")
    ax.set(xlabel="step", ylabel="training loss", title="Loss")
    ax.grid(alpha=0.3)
    return fig


def error_rate_figure(records: list[dict], baselines: dict[str, dict]):
    """CER/WER before, during and after training, with baseline CERs as lines; None without evals."""
    evals = sorted((r["step"], r.get("cer"), r.get("wer")) for r in records if r.get("eval") in ("before", "periodic", "after"))
    if not evals:
        return None
    fig, ax = figure()
    for i, name in ((1, "CER"), (2, "WER")):
        points = [(e[0], e[i]) for e in evals if e[i] is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=f"model {name}")
    for name, summary in baselines.items():
        if summary["cer"] is not None:
            ax.axhline(summary["cer"], linestyle="--", linewidth=1, label=f"{name} CER", color="grey")
    ax.set(xlabel="step", ylabel="error rate", title="CER / WER over training steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plots(records: list[dict], baselines: dict[str, dict]) -> dict[str, str]:
    figures = {"loss": loss_figure(records), "cer": error_rate_figure(records, baselines)}
    return {name: png_data_uri(fig) for name, fig in figures.items() if fig is not None}


def _task_table(summaries: dict[str, dict]) -> list[str]:
    """Each task's own metric per engine (``metrics.task_metric_rows``), when the eval set holds more than OCR rows."""
    rows = metrics.task_metric_rows(list(summaries.values()))
    if all(s.get("tasks", ["ocr"]) == ["ocr"] for s in summaries.values()) or not rows:
        return []
    out = ["<h2>Per task</h2><table id='tasks'><tr><th>metric</th>"
           + "".join(f"<th>{html.escape(name)}</th>" for name in summaries) + "</tr>"]
    out += [f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td>{_fmt(v)}</td>" for v in values) + "</tr>"
            for label, values in rows]
    out.append("</table><p class='muted'>Each task is scored by its own metric; the CER table above covers the "
               "OCR rows only.</p>")
    return out




def _thumbnail(path: str | None) -> str:
    if not path or not Path(path).is_file():
        return '<span class="muted">image not available</span>'
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((480, 160))
        if im.height < 48:  # tiny line images are unreadable at their own size
            im = im.resize((im.width * 48 // im.height, 48), Image.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return f'<img alt="sample" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _diff_html(reference: str, prediction: str) -> str:
    tags = {"equal": "span", "delete": "del", "insert": "ins"}
    return "".join(f"<{tags[op]}>{html.escape(text)}</{tags[op]}>" for op, text in metrics.char_diff(reference, prediction))


def _fmt(x, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.4f}"


COLUMNS = (("cer", "CER (corpus)", False), ("wer", "WER (corpus)", False), ("cer_mean", "CER mean", False),
           ("cer_median", "CER median", False), ("cer_p90", "CER p90", False), ("exact_match", "exact", True),
           ("catastrophic_rate", "catastrophic", True), ("n", "n", False))

STYLE = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.muted{color:#888}.plots img{margin-right:12px}
.sample{border:1px solid #ddd;border-radius:6px;padding:8px;margin:8px 0}.sample img{display:block;margin-bottom:4px}
.text{font-family:DejaVu Sans Mono,monospace;white-space:pre-wrap;unicode-bidi:plaintext}
del{background:#fdd;color:#900}ins{background:#dfd;color:#060;text-decoration:none}
"""


def build_html(run_dir: Path) -> str:
    paths = RunPaths(run_dir)
    cfg = yaml.safe_load(paths.config.read_text()) if paths.config.is_file() else {}
    privacy = not cfg.get("tracking", {}).get("log_images", True)
    manifest = paths.read_manifest()
    records = paths.read_jsonl(paths.metrics)
    evals = {"before (base model)": paths.read_jsonl(paths.eval_file("before")),
             "after (fine-tuned)": paths.read_jsonl(paths.eval_file("after"))}
    evals |= {f"baseline: {p.stem.removeprefix('baseline_')}": paths.read_jsonl(p)
              for p in sorted(paths.eval_dir.glob("baseline_*.jsonl"))}
    evals = {k: v for k, v in evals.items() if v}
    norm = metrics.TextNormalization().describe()
    for r in records:  # the normalisation the run recorded with its eval summaries
        norm = r.get("normalization", norm)
    summaries = {name: metrics.summarize_rows(rows, norm) for name, rows in evals.items()}
    plots = _plots(records, {k.removeprefix("baseline: "): v for k, v in summaries.items() if k.startswith("baseline")})

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>DeepSynth OCR report: {html.escape(run_dir.name)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>Run {html.escape(run_dir.name)}</h1>",
             f"<p>status <b>{html.escape(str(manifest.get('status', 'unknown')))}</b>, model "
             f"{html.escape(str(cfg.get('model', {}).get('family', '?')))} "
             f"{html.escape(str(manifest.get('checkpoint') or cfg.get('model', {}).get('name_or_path', '')))}; "
             "scores after normalisation "
             f"<code>{html.escape(json.dumps(norm))}</code></p>",
             "<h2>Before / after / baselines</h2>"]
    if summaries:
        parts.append("<table id='scores'><tr><th>engine</th>" + "".join(f"<th>{h}</th>" for _, h, _ in COLUMNS) + "</tr>")
        for name, s in summaries.items():
            cells = "".join(f"<td>{s['n'] if key == 'n' else _fmt(s.get(key), pct)}</td>" for key, _, pct in COLUMNS)
            parts.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
        parts.append("</table><p class='muted'>catastrophic = CER &gt; 1 or a repetition loop.</p>")
        parts += _task_table(summaries)
    else:
        parts.append("<p class='muted'>no evaluation in this run.</p>")
    parts.append("<h2>Training</h2><div class='plots'>")
    parts += [f"<img alt='{name} plot' src='{uri}'>" for name, uri in plots.items()]
    parts.append("</div>" if plots else "<p class='muted'>no training metrics logged.</p></div>")

    worst_source = next((k for k in ("after (fine-tuned)", "before (base model)") if k in evals), None)
    parts.append(f"<h2>{WORST_N} worst samples{f' ({worst_source})' if worst_source else ''}</h2>")
    if privacy:
        parts.append("<p class='muted'>hidden: tracking.log_images is false (privacy), so no images or texts are shown.</p>")
    elif worst_source:
        worst = sorted(evals[worst_source], key=lambda r: -metrics.badness(r))[:WORST_N]
        for r in worst:
            flags = " <b>loop</b>" if r.get("looped") else ""
            task = f" [{html.escape(r['task'])}]" if r.get("task", "ocr") != "ocr" else ""
            parts.append(
                f"<div class='sample'><b>{html.escape(str(r['id']))}</b>{task} {metrics.sample_label(r)}{flags}"
                f"{_thumbnail(r.get('image'))}"
                f"<div>reference: <span class='text' dir='auto'>{html.escape(r['reference'])}</span></div>"
                f"<div>prediction: <span class='text' dir='auto'>{html.escape(r['prediction'])}</span></div>"
                f"<div>diff: <span class='text' dir='auto'>{_diff_html(r['reference'], r['prediction'])}</span></div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from the run directory's files; returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    out = RunPaths(run_dir).report
    out.write_text(build_html(run_dir), encoding="utf-8")
    log.info("report written: %s", out)
    return out


def find_browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    raise UserError(f"no headless browser found (looked for {', '.join(BROWSERS)}); "
                            "install Debian's chromium (`make setup` does it)")


def _headless(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout, check=True)


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 2400) -> Path:
    """Render ``html_path`` in headless Chromium and save a screenshot (proof that it opens)."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    _headless([f"--window-size={width},{height}", f"--screenshot={png_path}", Path(html_path).resolve().as_uri()])
    if not png_path.is_file():
        raise RuntimeError(f"chromium ran but wrote no screenshot at {png_path}")
    return png_path


def rendered_dom(html_path: str | Path) -> str:
    """The DOM Chromium built from ``html_path`` (what a user's browser would show)."""
    return _headless(["--dump-dom", Path(html_path).resolve().as_uri()]).stdout
