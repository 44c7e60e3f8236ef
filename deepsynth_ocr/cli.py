"""``deepsynth-ocr``: command-line entry points, each parsing its arguments and calling one job.

A mistake the user can fix (``errors.UserError``: a config field, a missing file, the wrong machine)
is printed as one line with exit code 2; anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deepsynth_ocr import keep_unsloth_out_for, logs
from deepsynth_ocr.config import RunConfig, parse_value
from deepsynth_ocr.errors import RunStopped, UserError
from deepsynth_ocr.runs import LIVE, RunDirError, RunPaths, find_run, list_runs, load_config, open_finished, read_run


def cmd_evaluate(args) -> int:
    from deepsynth_ocr.jobs.evaluate import evaluate

    cfg = load_config(args.run, args.config, args.set)
    adapter = args.adapter or (str(open_finished(args.run, need_adapter=True).adapter) if args.run else None)
    run_dir, summaries = evaluate(cfg, adapter, args.run_dir)
    from deepsynth_ocr.evaluate import describe

    for tag, s in summaries.items():
        print(f"{tag}: {describe(s)}")
    print(f"report: {RunPaths(run_dir).report}")
    return 0


def cmd_infer(args) -> int:
    from deepsynth_ocr.jobs.infer import infer

    cfg = load_config(args.run, args.config, args.set)
    logs.configure(cfg.log.format)
    if args.run and not cfg.infer.adapter:
        cfg.infer.adapter = str(open_finished(args.run, need_adapter=True).adapter)
    print(infer(args.inputs, args.out, cfg))
    print(f"results: {args.out}")
    return 0


def cmd_export(args) -> int:
    from deepsynth_ocr.export import ExportError
    from deepsynth_ocr.jobs.export import export

    cfg = load_config(args.run_dir, None, args.set)
    cfg.export.merged = cfg.export.merged and not args.no_merged
    cfg.export.hub_repo_id = args.push or cfg.export.hub_repo_id
    cfg.export.hub_private = cfg.export.hub_private and not args.public
    try:
        out_dir, verification = export(args.run_dir, args.out, cfg, args.checkpoint or "")
    except ExportError as e:
        print(f"deepsynth-ocr export: verification failed: {e}", file=sys.stderr)
        return 1
    for kind, v in verification.items():
        print(f"{kind}: reloaded in a fresh process, max logit difference {v['max_logit_diff']:.3g} (allowed {v['allowed']:.3g})")
    print(f"export: {out_dir}")
    return 0


def cmd_report(args) -> int:
    from deepsynth_ocr.report import screenshot, write_report

    path = write_report(args.run_dir)
    print(f"report: {path}")
    if args.screenshot:
        print(f"screenshot: {screenshot(path, args.screenshot)}")
    return 0


def cmd_train(args) -> int:
    from deepsynth_ocr.evaluate import compare
    from deepsynth_ocr.jobs.train import train

    result = train(RunConfig.load(args.config, args.set), args.run_dir)
    if result.before and result.after:
        print(compare(result.before, result.after))
    print(f"run directory: {result.run_dir}")
    return 0


def cmd_prepare(args) -> int:
    import logging

    from deepsynth_ocr.jobs.prepare import prepare

    cfg = RunConfig.load(args.config, args.set)
    cfg.prepare.sources = args.sources or cfg.prepare.sources
    cfg.prepare.output_dir = args.out or cfg.prepare.output_dir
    cfg.data.source_type = args.type or cfg.data.source_type
    cfg.data.strict = args.strict or cfg.data.strict
    cfg.prepare.hub_repo_id = args.push or cfg.prepare.hub_repo_id
    logs.configure(cfg.log.format, logging.WARNING)
    result = prepare(cfg)  # validates the config again, with the flags applied
    print(result.summary())
    return 0


def cmd_sweep(args) -> int:

    from deepsynth_ocr.jobs.sweep import sweep

    cfg = RunConfig.load(args.config, args.set)
    logs.configure(cfg.log.format)
    r = sweep(cfg, args.space, args.trials, args.run_dir, args.storage, args.notebook)
    print(f"sweep: {r.complete} complete, {r.pruned} pruned, {r.failed} failed trials in {r.sweep_dir}")
    if r.best_value is not None:
        print(f"best: CER {r.best_value:.4f} with {r.best_params}; config: {r.sweep_dir / 'best_config.yaml'}")
    print(f"report: {r.sweep_dir / 'report.html'}")
    return 0


def cmd_notebook(args) -> int:
    from deepsynth_ocr.jobs.notebook import NotebookFailed, run_notebook

    logs.configure(args.log_format or "text")
    parameters = {key: parse_value(value) for key, value in args.param}
    try:
        run_dir = run_notebook(args.name, parameters, args.config, args.run_dir)
    except NotebookFailed as e:
        print(f"deepsynth-ocr notebook: {e}", file=sys.stderr)
        return 1
    metrics = RunPaths(run_dir).read_manifest().get("metrics") or {}
    if isinstance(metrics.get("before"), dict) and isinstance(metrics.get("after"), dict):
        from deepsynth_ocr.evaluate import compare

        print(compare(metrics["before"], metrics["after"]))
    print(f"run directory: {run_dir}")
    return 0


def cmd_serve(args) -> int:
    from deepsynth_ocr.jobs.serve import serve

    cfg = load_config(args.run, args.config, args.set)
    flags = {"host": args.host, "port": args.port, "backend": args.backend, "max_batch_size": args.max_batch_size,
             "max_wait_ms": args.max_wait_ms, "api_keys_file": args.api_key_file, "file_root": args.allow_files_under}
    for name, value in flags.items():
        if value is not None:
            setattr(cfg.serve, name, value)
    if args.model:
        cfg.model.name_or_path = args.model
    cfg.serve.adapters = [*cfg.serve.adapters, *args.adapter]
    cfg.serve.log_content = cfg.serve.log_content or args.log_content
    return serve(cfg, args.run, args.vllm_script, args.dry_run)


def _cer(before, after) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    return "" if before is None and after is None else f"{fmt(before)} -> {fmt(after)}"


def _steps(info) -> str:
    return "" if info.step is None and info.total is None else f"{info.step or 0}/{info.total or '?'}"


def _size_mib(path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def cmd_prune(args) -> int:
    from deepsynth_ocr.runs import prune_runs

    doomed = prune_runs(args.root, args.keep, args.older_than, dry_run=True)
    sizes = {info.dir: _size_mib(info.dir) for info in doomed}
    verb = "would remove" if args.dry_run else "removing"
    for info in doomed:
        print(f"{verb} {info.dir} ({info.kind}, {info.status}, started {info.created_at}, {sizes[info.dir]:.1f} MiB)")
    if not args.dry_run:
        prune_runs(args.root, args.keep, args.older_than)
    print(f"{'would remove' if args.dry_run else 'removed'} {len(doomed)} run(s), {sum(sizes.values()):.1f} MiB; "
          "running and queued runs are never removed")
    return 0


def cmd_archive(args) -> int:
    from deepsynth_ocr.jobs.archive import archive_runs

    dest = args.to or str(Path(args.root).parent / "archives")
    for out in archive_runs(args.run[1:], args.root, dest):
        print(f"archived {out} ({out.stat().st_size / 2**20:.1f} MiB); `deepsynth-ocr runs restore {out}` brings it back")
    return 0


def cmd_restore(args) -> int:
    from deepsynth_ocr.jobs.archive import restore_run

    if len(args.run) < 2:
        raise RunDirError("runs restore: name the archive(s): deepsynth-ocr runs restore ARCHIVE.tar.gz [--root DIR]")
    for archive in args.run[1:]:
        print(f"restored {restore_run(archive, args.root)}")
    return 0


def cmd_runs(args) -> int:
    action = args.run[0] if args.run else None
    if action in ("prune", "archive", "restore"):
        return {"prune": cmd_prune, "archive": cmd_archive, "restore": cmd_restore}[action](args)
    if len(args.run) > 1:
        raise RunDirError(f"runs: one run at a time, got {len(args.run)}; `runs archive RUN...` takes several")
    if args.run:
        info = read_run(find_run(args.run[0], args.root))
        if args.json:
            print(json.dumps({**info.to_dict(), "manifest": info.manifest}, indent=2, default=str))
        else:
            for key, value in info.to_dict().items():
                print(f"{key:12} {'' if value is None else value}")
        return 0
    runs = list_runs(args.root, args.status, args.name)
    if args.json:
        print(json.dumps([i.to_dict() for i in runs], indent=2, default=str))
        return 0
    if not runs:
        print(f"no runs under {args.root}" + (" matching the filter" if args.status or args.name else ""))
        return 0
    rows = [("RUN", "KIND", "STATUS", "STARTED", "STEPS", "CER BEFORE -> AFTER", "PID")]
    rows += [(i.dir.name, i.kind, i.status, (i.created_at or "").replace("T", " "), _steps(i),
              _cer(i.cer_before, i.cer_after), ",".join(map(str, i.pids))) for i in runs]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_stop(args) -> int:
    from deepsynth_ocr.runs import stop_run, wait_stopped

    run_dir = find_run(args.run, args.root)
    pids = stop_run(run_dir)
    print(f"sent SIGTERM to pid {', '.join(map(str, pids))}: training saves a checkpoint at the end of its step, "
          "then stops")
    if args.no_wait:
        return 0
    info = wait_stopped(run_dir, args.timeout)
    if info.status in LIVE:
        print(f"still {info.status} after {args.timeout:g} s; `deepsynth-ocr runs {run_dir}` shows it", file=sys.stderr)
        return 1
    print(f"{run_dir}: {info.status}" + (f"; continue with: deepsynth-ocr resume {run_dir}" if info.status != "ok" else ""))
    return 0


def cmd_resume(args) -> int:
    from deepsynth_ocr.jobs.launch import resume_launch, start

    launch = resume_launch(find_run(args.run, args.root))
    if args.detach:
        proc = start(launch)
        print(f"resumed {launch.run_dir} in the background (pid {proc.pid}); output: {RunPaths(launch.run_dir).console_log}")
        return 0
    print(f"resuming {launch.run_dir}: deepsynth-ocr {' '.join(launch.args)}")
    return main(launch.args)


def cmd_ui(args) -> int:
    from deepsynth_ocr.jobs.ui import ui

    cfg = RunConfig.load(args.config, args.set)
    for name, value in {"host": args.host, "port": args.port}.items():
        if value is not None:
            setattr(cfg.ui, name, value)
    cfg.output_root = args.root or cfg.output_root
    return ui(cfg)


def _add_set(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.FIELD=VALUE", help=help)
    p.add_argument("--log-format", choices=logs.FORMATS, help="log lines as text (default) or one JSON object per "
                   "line (log.format)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deepsynth-ocr", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fine-tune with a YAML run config; writes a run directory")
    p.add_argument("--config", "-c", help="YAML run config (e.g. configs/smoke.yaml)")
    _add_set(p, "override a config field, e.g. -s train.max_steps=20 (repeatable)")
    p.add_argument("--run-dir", help="write into this directory (default: a new OUTPUT_ROOT/NAME_TIMESTAMP)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="score the base model, an adapter and the baselines on data.eval_path; writes a report")
    p.add_argument("--run", help="a run directory: its config and adapter/ are used")
    p.add_argument("--adapter", help="adapter directory to score as the fine-tuned model")
    p.add_argument("--config", "-c", help="YAML run config")
    _add_set(p, "override a config field")
    p.add_argument("--run-dir", help="write into this directory (default: a new OUTPUT_ROOT/NAME_TIMESTAMP)")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("infer", help="batch OCR of images, folders, globs and PDFs to a resumable JSONL file")
    p.add_argument("inputs", nargs="+", help="image files, folders, globs (quote them) or PDFs")
    p.add_argument("--out", "-o", required=True, help="JSONL output; inputs already in it are skipped")
    p.add_argument("--run", help="a run directory: its config and adapter/ are used")
    p.add_argument("--config", "-c", help="YAML run config (model section; infer section for batch size, dpi, ...)")
    _add_set(p, "override a config field, e.g. -s infer.batch_size=8 (repeatable)")
    p.set_defaults(func=cmd_infer)
    p = sub.add_parser("export", help="adapter + merged weights + model card, each verified in a fresh process")
    p.add_argument("run_dir", help="a finished run directory with adapter/")
    p.add_argument("--out", "-o", help="output directory (default RUN_DIR/export)")
    p.add_argument("--checkpoint", metavar="checkpoint-N", help="export this checkpoint's adapter instead of the run's "
                   "final one (into RUN_DIR/export-checkpoint-N; the run need not have finished)")
    p.add_argument("--no-merged", action="store_true", help="export the adapter only")
    p.add_argument("--push", metavar="USER/NAME", help="also upload to this hub repo (needs HF_TOKEN)")
    p.add_argument("--public", action="store_true", help="create the hub repo public (default private)")
    _add_set(p, "override a config field")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("report", help="(re)build RUN_DIR/report.html; optionally screenshot it in headless Chromium")
    p.add_argument("run_dir")
    p.add_argument("--screenshot", metavar="PNG", help="render the report in headless Chromium and save a screenshot")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("prepare", help="validate, normalise and split data sources into a saved dataset + report")
    p.add_argument("sources", nargs="*", help="paths, globs of shards or hub names (else prepare.sources from the config)")
    p.add_argument("--config", "-c", help="YAML run config (its data and prepare sections apply)")
    p.add_argument("--out", "-o", help="output directory (prepare.output_dir; default data/prepared/<name>)")
    p.add_argument("--type", help="source type instead of inferring it: jsonl, csv, parquet, folder, webdataset, hf_disk, hub")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row instead of reporting it")
    p.add_argument("--push", metavar="OWNER/NAME", help="push the prepared dataset to this Hub dataset repository "
                   "(prepare.hub_repo_id; private unless prepare.hub_private is false); the token is checked first")
    _add_set(p, "override a config field, e.g. -s prepare.test_size=200 (repeatable)")
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("sweep", help="an Optuna study over a search space: one run directory per trial, a report, the best config")
    p.add_argument("--config", "-c", help="YAML run config every trial starts from")
    p.add_argument("--space", required=True, help="YAML search space: section.field: {low, high[, log]} or {choices: [...]}")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    p.add_argument("--run-dir", "--sweep-dir", dest="run_dir",
                   help="sweep directory (default OUTPUT_ROOT/sweep-NAME; the same one resumes)")
    p.add_argument("--storage", help="Optuna storage URL shared by several machines (default: a journal file in the sweep directory)")
    p.add_argument("--notebook", action="store_true", help="run each trial as a papermill execution of 02_finetune (no pruning)")
    _add_set(p, "override a config field for every trial")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("serve", help="an OpenAI-compatible OCR server for a run's fine-tune (or a model and adapters)")
    p.add_argument("--run", help="a finished run directory: its config, and its adapter served under the run's name")
    p.add_argument("--model", help="base model: hub id or checkpoint directory (model.name_or_path)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="also serve this LoRA adapter as model NAME (repeatable)")
    p.add_argument("--config", "-c", help="YAML run config (model, infer and serve sections)")
    p.add_argument("--host", help="listen address (serve.host, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (serve.port, default 8000)")
    p.add_argument("--backend", choices=["hf", "vllm"], help="hf: this process; vllm: write and run the vLLM recipe's command")
    p.add_argument("--max-batch-size", type=int, help="images per batch (serve.max_batch_size)")
    p.add_argument("--max-wait-ms", type=int, help="how long a batch waits to fill (serve.max_wait_ms)")
    p.add_argument("--api-key-file", help="file of API keys, one per line (also: $DEEPSYNTH_OCR_API_KEYS, comma-separated)")
    p.add_argument("--allow-files-under", metavar="DIR", help="let requests name image files under DIR (serve.file_root)")
    p.add_argument("--log-content", action="store_true", help="put recognised text in the access log (off: ids and timings only)")
    p.add_argument("--vllm-script", help="where --backend vllm writes its command (default RUN/vllm_serve.sh or ./vllm_serve.sh)")
    p.add_argument("--dry-run", action="store_true", help="--backend vllm: write and print the command, do not start it")
    _add_set(p, "override a config field, e.g. -s serve.max_queue=128 (repeatable)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("runs", help="list runs and sweeps (newest first), show one, `runs prune` finished ones, "
                       "`runs archive RUN...` / `runs restore ARCHIVE...`")
    p.add_argument("run", nargs="*", help="show this run directory (a path, or a directory name under --root); "
                   "`prune` removes finished runs (--keep N and/or --older-than DAYS; never a running one); "
                   "`archive RUN...` writes each finished run as RUN.tar.gz with a manifest (--to DIR); "
                   "`restore ARCHIVE...` unpacks them under --root, checked file by file")
    p.add_argument("--root", default="runs", help="the directory that holds run directories (output_root; default runs)")
    p.add_argument("--status", help="only runs with this status (running, starting, ok, failed, interrupted, died, ...)")
    p.add_argument("--name", help="only runs whose name contains this")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--keep", type=int, help="with `runs prune`: keep the N newest runs, remove the older finished ones")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="with `runs prune`: remove finished runs started over DAYS ago")
    p.add_argument("--dry-run", action="store_true", help="with `runs prune`: print what would go, remove nothing")
    p.add_argument("--to", help="with `runs archive`: the folder the archives go to (default: archives/ beside --root)")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("stop", help="stop a running run or sweep: SIGTERM to its process; training checkpoints first")
    p.add_argument("run", help="run directory (a path, or a directory name under --root)")
    p.add_argument("--root", default="runs", help="the directory that holds run directories (default runs)")
    p.add_argument("--no-wait", action="store_true", help="return at once instead of waiting for the run to stop")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the run to stop (default 300)")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("resume", help="continue an interrupted, died or failed run or sweep in its own directory")
    p.add_argument("run", help="run directory (a path, or a directory name under --root)")
    p.add_argument("--root", default="runs", help="the directory that holds run directories (default runs)")
    p.add_argument("--detach", action="store_true", help="start it in the background, output to its console.log")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("ui", help="the local jobs web UI: launch, watch, stop, resume and compare runs in a browser")
    p.add_argument("--root", help="runs root it shows and launches into (output_root; default runs)")
    p.add_argument("--host", help="listen address (ui.host, default 127.0.0.1; any other needs $DEEPSYNTH_UI_TOKEN)")
    p.add_argument("--port", type=int, help="port (ui.port, default 8700)")
    p.add_argument("--config", "-c", help="YAML run config (its ui section; its model is the Try-it page's base)")
    _add_set(p, "override a config field, e.g. -s ui.gpu_slots=2 (repeatable)")
    p.set_defaults(func=cmd_ui)
    p = sub.add_parser("notebook", help="execute a kit notebook with papermill into a new run directory")
    p.add_argument("name", help="01_prepare_data, 02_finetune, 03_evaluate, 04_inference (or a path)")
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="notebook parameter (flat config name, e.g. -p train_max_steps 20; value read as YAML)")
    p.add_argument("-f", "--config", help="YAML run config the notebook starts from (its config_path)")
    p.add_argument("--run-dir", help="write into this directory instead of a new runs/<name>_<timestamp>")
    p.add_argument("--log-format", choices=logs.FORMATS, help="this command's own log lines as text or JSON (the "
                   "notebook's run follows its config's log.format)")
    p.set_defaults(func=cmd_notebook)
    args = ap.parse_args(argv)
    if getattr(args, "log_format", None) and hasattr(args, "set"):
        args.set.append(f"log.format={args.log_format}")
    try:
        if hasattr(args, "set") and hasattr(args, "config"):  # before any job imports transformers
            keep_unsloth_out_for(load_config(getattr(args, "run", None), args.config, args.set).model.backend)
        return args.func(args)
    except UserError as e:
        print(f"deepsynth-ocr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # interrupted (128 + signal number) or stopped on a non-finite loss (1)
        print(f"deepsynth-ocr {args.command}: stopped: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
