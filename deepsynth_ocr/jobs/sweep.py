"""The sweep job: an Optuna study over a search space, one training run directory per trial.

Owns the sweep directory (default ``<output_root>/sweep-<name>``): ``study.journal`` (Optuna's
JournalStorage, unless ``--storage`` names a database URL that several machines share),
``trials/trial_NNN/`` (each trial's own run directory), ``report.html`` and ``best_config.yaml``
(a config that ``deepsynth-ocr train -c`` accepts). The objective is the validation CER after
training; the pruner sees the periodic CER (``eval.every_steps``).

The sweep directory's ``manifest.json`` (kind ``sweep``) has the status, the trials done / wanted, the
best CER and trial, and the worker processes; ``config.yaml`` and ``space.yaml`` are the sweep's own
copies, so ``deepsynth-ocr resume SWEEP_DIR`` needs nothing else.

Fault safety. Rerunning the same command resumes the study: finished trials count towards
``--trials``, and a trial left RUNNING by a process that is gone on this host is marked failed and
queued again with the same parameters, continuing its run directory from its last checkpoint.
SIGTERM / SIGINT stop the study: the running trial checkpoints and is marked ``interrupted`` (not
failed), queued again the same way, and the sweep ends ``interrupted`` (exit 143 / 130). Workers take trials under a file lock in the sweep directory,
so two processes on one study together finish the requested number, never more, and no trial twice.
(Workers on several machines through a database share the study, but not the file lock: each may
start one trial past the count.)
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import logging
import os
import shutil
import signal
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.errors import Interrupted, MissingFileError, RunPruned
from deepsynth_ocr.jobs.notebook import run_notebook
from deepsynth_ocr.jobs.train import train
from deepsynth_ocr.report import figure, png_data_uri
from deepsynth_ocr.runs import (
    RunPaths,
    edit_manifest,
    holder_gone,
    join_workers,
    leave_workers,
    signal_handlers,
    this_process,
)
from deepsynth_ocr.secrets import redact

log = logging.getLogger(__name__)

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class SweepResult:
    sweep_dir: Path
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    best_params: dict


def load_space(path: str | Path, base: RunConfig) -> dict:
    """``section.field: {low, high[, log, type]}`` or ``{choices: [...]}`` per line -> Optuna distributions."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--space: search space file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{path}: expected a mapping of section.field to {{low, high}} or {{choices}}")
    space = {}
    for name, entry in spec.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {name}: expected {{low, high}} or {{choices: [...]}}, got {entry!r}")
        if "choices" in entry:
            space[name] = CategoricalDistribution(list(entry["choices"]))
        elif {"low", "high"} <= set(entry):
            is_int = entry.get("type") == "int" or (isinstance(entry["low"], int) and isinstance(entry["high"], int)
                                                    and entry.get("type") != "float")
            kind = IntDistribution if is_int else FloatDistribution
            space[name] = kind(entry["low"], entry["high"], log=bool(entry.get("log", False)))
        else:
            raise ConfigError(f"{path}: {name}: give low and high, or choices")
        sample = space[name].choices[0] if "choices" in entry else entry["low"]
        trial_config(base, {name: sample}, "check")  # an unknown field fails here, naming it
    return space


def trial_config(base: RunConfig, params: dict, name: str) -> RunConfig:
    """``base`` with a trial's parameters (``section.field: value``) and its own name."""
    cfg = base.with_overrides([f"{k}={json.dumps(v)}" for k, v in params.items()])
    cfg.name = name
    return cfg


@contextlib.contextmanager
def _locked(path: Path):
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _requeue(study, trial, why: str) -> None:
    """Mark a trial that did not finish failed and queue its parameters again (``retry_of``, ``retry_reason``
    ``why``); the retry continues the trial's run directory from its last complete checkpoint."""
    study.tell(trial.number, state=TrialState.FAIL)
    attrs = {"retry_of": trial.number, "retry_reason": why}
    if trial.user_attrs.get("run_dir"):
        attrs["run_dir"] = trial.user_attrs["run_dir"]
    study.enqueue_trial(trial.params, user_attrs=attrs)


def trial_states(trials) -> dict[int, str]:
    """Each trial's state as a person reads it: ``complete``, ``pruned``, ``running``, ``waiting``, ``failed``,
    or ``interrupted`` / ``died`` for a trial that was stopped and queued again."""
    requeued = {t.user_attrs["retry_of"]: t.user_attrs.get("retry_reason", "died")
                for t in trials if "retry_of" in t.user_attrs}
    return {t.number: requeued.get(t.number, "failed") if t.state == TrialState.FAIL else
            {TrialState.COMPLETE: "complete"}.get(t.state, t.state.name.lower()) for t in trials}


# A trial is created (ask) and then names its worker (pid, host) in two writes; a worker killed between them leaves
# a running trial that names nobody. Seen under the ask lock that the two writes share, such a trial is an orphan,
# except on a database several machines share, where another machine may be between its two writes right now:
# there it counts as an orphan once it is this old.
ORPHAN_AFTER_S = 120


def _reclaim_stale(study, shared_database: bool) -> None:
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "pid" not in t.user_attrs:
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            if shared_database and age < ORPHAN_AFTER_S:
                continue
            log.warning("sweep: trial %d was left running by a worker that died before naming itself: marked failed "
                        "and queued again", t.number)
            _requeue(study, t, "died")
        elif holder_gone(t.user_attrs):
            log.warning("sweep: trial %d was left running by pid %s, which is gone: marked failed and queued again",
                        t.number, t.user_attrs.get("pid"))
            _requeue(study, t, "died")


def _next_trial(study, space: dict, wanted: int, lock: Path, shared_database: bool = False):
    """The next trial to run, or None when the study has (or is running) ``wanted`` trials."""
    with _locked(lock):
        _reclaim_stale(study, shared_database)
        counted = study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING))
        if len(counted) >= wanted:
            return None
        trial = study.ask(space)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        return trial


def _run_trial(trial, base: RunConfig, sweep_dir: Path, notebook: bool) -> float:
    # A retry (of an interrupted or dead trial) continues that trial's directory from its checkpoint.
    retry_dir = trial.user_attrs.get("run_dir")
    run_dir = Path(retry_dir) if retry_dir else sweep_dir / "trials" / f"trial_{trial.number:03d}"
    trial.set_user_attr("run_dir", str(run_dir))
    cfg = trial_config(base, trial.params, f"{base.name}-trial{trial.number:03d}")
    cfg.train.resume = bool(retry_dir)
    if notebook:
        # papermill runs the kit's fine-tune notebook in its own kernel: the same training, no pruning. The
        # notebook starts from the trial's whole config (overrides and parameters included).
        trial_yaml = run_dir.with_suffix(".yaml")
        trial_yaml.parent.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(trial_yaml)
        run_notebook("02_finetune", {}, str(trial_yaml), run_dir)
        after = (RunPaths(run_dir).read_manifest().get("metrics") or {}).get("after") or {}
    else:
        def report(summary: dict, step: int) -> None:
            if summary["cer"] is None:
                raise ConfigError(_NO_OCR_ROWS.format(tasks=", ".join(summary.get("tasks", []))))
            trial.report(summary["cer"], step)
            if trial.should_prune():
                raise RunPruned(step, summary["cer"])

        after = train(cfg, run_dir, on_periodic=report).after or {}
    if after and after.get("cer") is None:
        raise ConfigError(_NO_OCR_ROWS.format(tasks=", ".join(after.get("tasks", []))))
    if after.get("cer") is None:
        raise ConfigError("the trial ran no evaluation after training: the sweep needs data.eval_path (or "
                          "data.eval_size) and eval.enabled")
    return after["cer"]


# Sweeps minimise CER; Q&A (token F1) and summaries (ROUGE-L) are scored, but not yet an objective.
_NO_OCR_ROWS = ("the sweep minimises CER, and the eval set has no OCR rows (tasks: {tasks}); give it an eval set "
                "with ocr or markdown rows")


def _keep_inputs(cfg: RunConfig, space_path: Path, sweep_dir: Path) -> None:
    """The sweep's own config.yaml and space.yaml (what ``deepsynth-ocr resume`` starts from)."""
    import yaml

    config, space = sweep_dir / "config.yaml", sweep_dir / "space.yaml"
    config.write_text(yaml.safe_dump(redact(cfg.to_dict()), sort_keys=False))
    if not (space.exists() and space.samefile(space_path)):
        shutil.copyfile(space_path, space)


def _trials_record(study, wanted: int) -> tuple[dict, dict | None]:
    """The manifest's ``trials`` counts and ``best`` ({cer, trial})."""
    all_trials = study.get_trials(deepcopy=False)
    states = list(trial_states(all_trials).values())
    record = {"wanted": wanted, "done": states.count("complete") + states.count("pruned"),
              **{s: states.count(s) for s in ("complete", "pruned", "failed", "interrupted", "died", "running")}}
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    return record, ({"cer": best.value, "trial": best.number, "params": best.params} if best else None)


def study_storage(sweep_dir: Path, url: str | None = None):
    """Where the study lives: the database ``url`` several machines share (``postgresql://user@host/db``, any
    SQLAlchemy URL Optuna takes), else the journal file in the sweep directory."""
    if url:
        return url
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(Path(sweep_dir) / "study.journal")))


def sweep(cfg: RunConfig, space_path: str | Path, trials: int, sweep_dir: str | Path | None = None,
          storage: str | None = None, notebook: bool = False) -> SweepResult:
    """Run trials of ``cfg`` over the space until the study holds ``trials`` finished ones; write the report."""
    cfg.validate()
    if not cfg.eval.enabled:
        raise ConfigError("eval.enabled: a sweep minimises the validation CER after training; enable evaluation")
    space = load_space(space_path, cfg)
    sweep_dir = Path(sweep_dir) if sweep_dir else Path(cfg.output_root) / f"sweep-{cfg.name}"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _keep_inputs(cfg, Path(space_path), sweep_dir)
    storage_url = storage
    storage = study_storage(sweep_dir, storage_url)
    study = optuna.create_study(study_name=cfg.name, storage=storage, direction="minimize", load_if_exists=True,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    me = this_process()

    def record(status: str | None = None, leaving: bool = False, error: str | None = None):
        def edit(manifest: dict) -> None:
            manifest.setdefault("created_at", me["started"])
            manifest.update(name=cfg.name, kind="sweep",
                            sweep={"trials": trials, "storage": storage_url, "notebook": notebook})
            manifest["trials"], manifest["best"] = _trials_record(study, trials)
            if leaving:
                others = leave_workers(manifest, me)
            else:
                join_workers(manifest, me)
                others = manifest["workers"]
            if status == "running" or (status and not others):  # the last worker to leave says how it ended
                manifest["status"] = status
                manifest["error"] = error
            if leaving and not others:
                manifest["ended_at"] = this_process()["started"]
        edit_manifest(sweep_dir, edit)

    stop: list[str] = []  # a signal between trials ends the study before the next one starts

    def between_trials(signum, frame):
        stop.append(signal.Signals(signum).name)
        log.warning("sweep: %s received: stopping before the next trial", stop[-1])

    record("running")
    failures = 0
    try:
        with signal_handlers(between_trials):
            while not stop and (trial := _next_trial(study, space, trials, sweep_dir / "ask.lock", bool(storage_url))) is not None:
                log.info("sweep: trial %d with %s", trial.number, trial.params)
                try:
                    value = _run_trial(trial, cfg, sweep_dir, notebook)
                except RunPruned as e:
                    study.tell(trial, state=TrialState.PRUNED)
                    log.info("sweep: trial %d %s", trial.number, e)
                    record()
                    continue
                except Interrupted as e:  # the trial saved a checkpoint; it runs again, from there, on resume
                    with _locked(sweep_dir / "ask.lock"):
                        _requeue(study, trial, "interrupted")
                    log.warning("sweep: trial %d interrupted (%s); the study stops here", trial.number, e)
                    raise
                except Exception as e:  # one broken trial (a bug, a non-finite loss) must not end the study
                    study.tell(trial, state=TrialState.FAIL)
                    failures += 1
                    log.error("sweep: trial %d failed: %s: %s", trial.number, type(e).__name__, e)
                    if failures > trials:
                        raise RuntimeError(f"sweep: {failures} trials failed; see the trials' console.log under {sweep_dir}") from e
                    record()
                    continue
                study.tell(trial, value)
                log.info("sweep: trial %d CER %.4f", trial.number, value)
                record()
            if stop:
                raise Interrupted(stop[0], f"{stop[0]} received between trials: the study stopped; "
                                           f"continue with: deepsynth-ocr resume {sweep_dir}")
    except Interrupted:
        write_sweep_report(study, cfg, sweep_dir)
        record("interrupted", leaving=True)
        raise
    except BaseException as e:
        record("failed", leaving=True, error=f"{type(e).__name__}: {e}")
        raise
    result = write_sweep_report(study, cfg, sweep_dir)
    record("ok", leaving=True)
    return result


def write_sweep_report(study, cfg: RunConfig, sweep_dir: Path) -> SweepResult:
    """``report.html`` (the trials, CER against each parameter) and ``best_config.yaml``."""
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    if best is not None:
        best_cfg = trial_config(cfg, best.params, f"{cfg.name}-best")
        best_cfg.to_yaml(sweep_dir / "best_config.yaml")
    names = sorted({k for t in all_trials for k in t.params})
    states = trial_states(all_trials)
    rows = "".join(
        f"<tr><td>{t.number}</td><td>{states[t.number]}</td><td>{'' if t.value is None else f'{t.value:.4f}'}</td>"
        + "".join(f"<td>{html.escape(str(t.params.get(n, '')))}</td>" for n in names)
        + f"<td>{html.escape(Path(t.user_attrs.get('run_dir', '')).name)}</td></tr>" for t in all_trials)
    plots = []
    for name in names:
        points = [(t.params[name], t.value) for t in complete if name in t.params]
        if points:
            fig, ax = figure((4, 3))
            ax.scatter([p for p, _ in points], [v for _, v in points])
            ax.set_xlabel(name)
            ax.set_ylabel("validation CER after training")
            if all(isinstance(p, (int, float)) and p > 0 for p, _ in points) and max(p for p, _ in points) / min(p for p, _ in points) > 20:
                ax.set_xscale("log")
            plots.append(f"<img alt='CER against {html.escape(name)}' src='{png_data_uri(fig)}'>")
    best_line = (f"<p>best: trial {best.number}, CER {best.value:.4f}, {html.escape(json.dumps(best.params))}; "
                 "config: <code>best_config.yaml</code></p>") if best else "<p>no trial has completed yet.</p>"
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>sweep " + html.escape(cfg.name) + "</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
            f"</head><body><h1>Sweep {html.escape(cfg.name)}</h1>{best_line}<table id='trials'><tr><th>trial</th>"
            "<th>state</th><th>CER</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names)
            + f"<th>run directory</th></tr>{rows}</table><h2>CER against each parameter</h2>{''.join(plots)}</body></html>")
    (sweep_dir / "report.html").write_text(page, encoding="utf-8")
    count = {s: sum(t.state == s for t in all_trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    return SweepResult(sweep_dir, count[TrialState.COMPLETE], count[TrialState.PRUNED], count[TrialState.FAIL],
                       best.value if best else None, best.params if best else {})
