"""Launching jobs as processes: the one builder of each job's command line, and the one starter.

A ``Launch`` is a job's ``deepsynth-ocr`` arguments with its run directory fixed before the process
starts (so the caller, a test or the UI, knows where to look from the first moment). ``start`` runs it
as its own process group and session (a Ctrl-C in the launcher's terminal, or the launcher exiting,
does not reach it) with its output appended to the run's ``console.log``, and leaves a ``.launch``
record that the run-directory owner reads until the job holds its lock. ``resume_launch`` continues a
run by its directory: exactly that run, from its last complete checkpoint.

Imports no torch: building and starting a command is cheap, the job's process pays for the model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.runs import LIVE, RESUMABLE, RunDirError, RunPaths, new_run_path, read_run, write_launch

PROGRAM = (sys.executable, "-m", "deepsynth_ocr.cli")


@dataclass
class Launch:
    """A job's command line with its run directory fixed."""

    kind: str  # train, evaluate, sweep, notebook
    name: str
    run_dir: Path
    args: list[str]  # what follows ``deepsynth-ocr``

    @property
    def command(self) -> list[str]:
        return [*PROGRAM, *self.args]


def _sets(overrides) -> list[str]:
    return [arg for item in overrides for arg in ("-s", item)]


def _config_args(config: str | Path | None, flag: str = "-c") -> list[str]:
    return [flag, str(config)] if config else []


def train_launch(config: str | Path | None, overrides=(), run_dir: str | Path | None = None) -> Launch:
    """``deepsynth-ocr train``; the config is checked here, so a bad value fails before anything starts."""
    cfg = RunConfig.load(config, list(overrides))
    run_dir = Path(run_dir) if run_dir else new_run_path(cfg.output_root, cfg.name)
    return Launch("train", cfg.name, run_dir, ["train", *_config_args(config), *_sets(overrides), "--run-dir", str(run_dir)])


def evaluate_launch(config: str | Path | None, overrides=(), adapter: str | Path | None = None,
                    run_dir: str | Path | None = None) -> Launch:
    """``deepsynth-ocr evaluate`` of the base (and ``adapter``) on ``data.eval_path``."""
    cfg = RunConfig.load(config, list(overrides))
    run_dir = Path(run_dir) if run_dir else new_run_path(cfg.output_root, f"{cfg.name}-eval")
    extra = ["--adapter", str(adapter)] if adapter else []
    return Launch("evaluate", cfg.name, run_dir,
                  ["evaluate", *_config_args(config), *_sets(overrides), *extra, "--run-dir", str(run_dir)])


def sweep_launch(config: str | Path | None, space: str | Path, trials: int, overrides=(),
                 sweep_dir: str | Path | None = None, storage: str | None = None, notebook: bool = False) -> Launch:
    """``deepsynth-ocr sweep``; the same sweep directory resumes the study."""
    cfg = RunConfig.load(config, list(overrides))
    sweep_dir = Path(sweep_dir) if sweep_dir else Path(cfg.output_root) / f"sweep-{cfg.name}"
    extra = (["--storage", storage] if storage else []) + (["--notebook"] if notebook else [])
    return Launch("sweep", cfg.name, sweep_dir, ["sweep", *_config_args(config), "--space", str(space),
                                                 "--trials", str(trials), *_sets(overrides), *extra,
                                                 "--run-dir", str(sweep_dir)])


def _params(parameters: dict) -> list[str]:
    """``-p NAME VALUE`` pairs, each value written as the YAML that ``config.parse_value`` reads back."""
    return [arg for k, v in parameters.items()
            for arg in ("-p", k, yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n..."))]


def notebook_run_dir(parameters: dict, config_path: str | Path | None) -> Path:
    """A new run directory named by the notebook's ``name`` / ``output_root`` parameters, else its config's."""
    flat = (RunConfig.from_yaml(config_path) if config_path else RunConfig()).to_flat()
    return new_run_path(parameters.get("output_root", flat["output_root"]), parameters.get("name", flat["name"]))


def notebook_launch(notebook: str, config: str | Path | None = None, parameters: dict | None = None,
                    run_dir: str | Path | None = None) -> Launch:
    """``deepsynth-ocr notebook`` (papermill) with ``parameters`` (flat config names)."""
    parameters = dict(parameters or {})
    run_dir = Path(run_dir) if run_dir else notebook_run_dir(parameters, config)
    name = parameters.get("name") or (RunConfig.load(config).name if config else RunConfig().name)
    return Launch("notebook", name, run_dir,
                  ["notebook", notebook, *_config_args(config, "-f"), *_params(parameters), "--run-dir", str(run_dir)])


def export_launch(run_dir: str | Path, checkpoint: str = "") -> Launch:
    """``deepsynth-ocr export`` of a finished run into ``RUN/export`` (or of one checkpoint into
    ``RUN/export-checkpoint-N``); its output goes to ``console.log`` there."""
    run_dir = Path(run_dir)
    if checkpoint:
        return Launch("export", run_dir.name, run_dir / f"export-{checkpoint}",
                      ["export", str(run_dir), "--checkpoint", checkpoint])
    return Launch("export", run_dir.name, run_dir / "export", ["export", str(run_dir)])


def prepare_launch(sources: list[str], out: str | Path, config: str | Path | None = None) -> Launch:
    """``deepsynth-ocr prepare`` of ``sources`` into ``out`` (a dataset, its report.json and console.log)."""
    return Launch("prepare", Path(out).name, Path(out), ["prepare", *map(str, sources), *_config_args(config), "--out", str(out)])


def resume_launch(run_dir: str | Path) -> Launch:
    """The command that continues the run in ``run_dir`` (same directory, from its last complete checkpoint):
    a training run, a notebook run or a sweep that was interrupted, died or failed."""
    info = read_run(run_dir)
    paths = RunPaths(info.dir)
    if info.status in LIVE:
        raise RunDirError(f"{info.dir} is {info.status} (pid {', '.join(map(str, info.pids)) or '?'}); "
                          f"stop it first: deepsynth-ocr stop {info.dir}")
    if info.kind not in RESUMABLE:
        raise RunDirError(f"{info.dir} is a {info.kind} run: it has no checkpoint to continue; run the job again")
    if info.status == "ok":
        raise RunDirError(f"{info.dir} finished (status ok); there is nothing to resume")
    m = info.manifest
    if info.kind == "train":
        if not paths.config.is_file():
            raise RunDirError(f"{info.dir} has no config.yaml to resume from")
        args = ["train", "-c", str(paths.config), "-s", "train.resume=true", "--run-dir", str(info.dir)]
    elif info.kind == "notebook":
        params = {**(m.get("notebook_parameters") or {}), "train_resume": True}
        args = ["notebook", m["notebook_name"], *_config_args(m.get("config_path"), "-f"), *_params(params),
                "--run-dir", str(info.dir)]
    else:
        sweep = m.get("sweep") or {}
        if not sweep:
            raise RunDirError(f"{info.dir}: a sweep directory without its manifest's sweep record; rerun the sweep command")
        extra = (["--storage", sweep["storage"]] if sweep.get("storage") else []) + (["--notebook"] if sweep.get("notebook") else [])
        args = ["sweep", "-c", str(info.dir / "config.yaml"), "--space", str(info.dir / "space.yaml"),
                "--trials", str(sweep["trials"]), *extra, "--run-dir", str(info.dir)]
    return Launch(info.kind, info.name, info.dir, args)


def start(launch: Launch, env: dict | None = None, cwd: str | Path | None = None) -> subprocess.Popen:
    """Start ``launch`` as its own process group, its output appended to the run's ``console.log``."""
    launch.run_dir.mkdir(parents=True, exist_ok=True)
    # Until the child's pid is known the launcher stands for it, so the directory never reads "died".
    write_launch(launch.run_dir, os.getpid(), launch.kind, launch.name, launch.args)
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    with RunPaths(launch.run_dir).console_log.open("ab") as out:
        proc = subprocess.Popen(launch.command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, cwd=cwd)
    write_launch(launch.run_dir, proc.pid, launch.kind, launch.name, launch.args)
    return proc
