"""``deepsynth-ocr sweep``: an Optuna study on shared storage, one run directory per trial, pruning on the
periodic CER, a report and the best config; a killed sweep resumes, two workers share one study."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from deepsynth_ocr.cli import main
from deepsynth_ocr.config import RunConfig

from .conftest import ROOT
from .runs_helpers import child_env

SPACE = ROOT / "configs" / "sweeps" / "smoke-space.yaml"


def _args(root, trials=4, *extra):
    return ["sweep", "-c", "configs/smoke.yaml", "--space", str(SPACE), "--trials", str(trials),
            "-s", f"output_root={root}", "-s", "train.max_steps=6", "-s", "train.save_steps=0",
            "-s", "eval.max_samples=8", "-s", "eval.periodic_samples=8", "-s", "eval.baselines=[]",
            "-s", "tracking.wandb=disabled", *extra]


def _study(sweep_dir):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "study.journal")))
    return optuna.load_study(study_name="smoke", storage=storage)


def _by_state(study):
    trials = study.get_trials(deepcopy=False)
    return {s.name: [t for t in trials if t.state == s] for s in TrialState}


@pytest.mark.slow
def test_a_four_trial_sweep_prunes_on_the_periodic_cer_and_writes_its_report_and_best_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(_args(tmp_path, 4, "-s", "eval.every_steps=3")) == 0
    sweep_dir = tmp_path / "sweep-smoke"
    states = _by_state(_study(sweep_dir))
    assert len(states["COMPLETE"]) + len(states["PRUNED"]) == 4 and not states["RUNNING"]
    for t in states["COMPLETE"] + states["PRUNED"]:
        manifest = json.loads((sweep_dir / "trials" / f"trial_{t.number:03d}" / "manifest.json").read_text())
        assert manifest["status"] == ("ok" if t.state == TrialState.COMPLETE else "pruned")
        if t.state == TrialState.COMPLETE:
            assert t.value == manifest["metrics"]["after"]["cer"]  # the objective is the CER after training
    best = RunConfig.from_yaml(sweep_dir / "best_config.yaml")  # what `train -c` accepts
    winner = min(states["COMPLETE"], key=lambda t: t.value)
    assert best.train.learning_rate == pytest.approx(winner.params["train.learning_rate"])
    assert best.lora.r == winner.params["lora.r"]
    page = (sweep_dir / "report.html").read_text()
    assert page.count("<tr><td>") == 4 and "CER against train.learning_rate" in page
    assert "best: CER" in capsys.readouterr().out


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_ends_with_exactly_the_requested_complete_trials(tmp_path):
    cmd = [sys.executable, "-m", "deepsynth_ocr.cli", *_args(tmp_path, 4, "-s", "eval.every_steps=0")]
    sweep_dir = tmp_path / "sweep-smoke"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (sweep_dir / "study.journal").is_file() and len(_by_state(_study(sweep_dir))["COMPLETE"]) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.1)
    proc.wait(timeout=60)
    killed = _by_state(_study(sweep_dir))
    assert len(killed["COMPLETE"]) == 2
    subprocess.run(cmd, cwd=ROOT, env=child_env(), check=True, capture_output=True)
    states = _by_state(_study(sweep_dir))
    assert len(states["COMPLETE"]) == 4 and not states["RUNNING"] and not states["WAITING"]
    dirs = {t.user_attrs["run_dir"] for t in states["COMPLETE"]}
    assert len(dirs) == 4  # each complete trial has its own run directory
    # The trial the kill cut short ran again with its parameters; a kill inside Optuna's ask leaves only some of
    # them sampled, and the retry samples the rest.
    for t in killed["RUNNING"]:
        assert any(c.params.items() >= t.params.items() and c.user_attrs.get("retry_of") == t.number
                   for c in states["COMPLETE"])


@pytest.mark.slow
def test_two_workers_on_one_study_finish_the_requested_trials_and_none_twice(tmp_path):
    cmd = [sys.executable, "-m", "deepsynth_ocr.cli", *_args(tmp_path, 4, "-s", "eval.every_steps=0")]
    workers = [subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    errors = [w.communicate(timeout=600)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [e[-1500:] for e in errors]
    states = _by_state(_study(tmp_path / "sweep-smoke"))
    assert len(states["COMPLETE"]) == 4 and not states["RUNNING"] and not states["FAIL"]
    pids = {t.user_attrs["pid"] for t in states["COMPLETE"]}
    assert len(pids) == 2  # both workers took trials
    assert len({t.user_attrs["run_dir"] for t in states["COMPLETE"]}) == 4


def test_a_search_space_naming_an_unknown_field_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    space = tmp_path / "space.yaml"
    space.write_text("train.learning_rat: {low: 1.0e-3, high: 1.0e-2}\n")
    args = _args(tmp_path)
    args[args.index("--space") + 1] = str(space)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.learning_rat" in err and "unknown field" in err


@pytest.mark.slow
def test_trials_can_be_papermill_runs_of_the_fine_tune_notebook(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(_args(tmp_path, 1, "--notebook", "-s", "eval.every_steps=0")) == 0
    (trial,) = _study(tmp_path / "sweep-smoke").get_trials(deepcopy=False)
    run_dir = tmp_path / "sweep-smoke" / "trials" / "trial_000"
    assert trial.state == TrialState.COMPLETE and (run_dir / "02_finetune.ipynb").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert trial.value == manifest["metrics"]["after"]["cer"]
    assert RunConfig.from_yaml(run_dir / "config.yaml").lora.r == trial.params["lora.r"]


def test_a_trial_whose_worker_died_before_naming_itself_is_queued_again(tmp_path):
    """A worker killed between creating a trial and writing its pid left a running trial that named nobody: never
    reclaimed, it counted towards --trials forever and a resumed sweep ended one trial short."""
    from deepsynth_ocr.jobs.sweep import _next_trial, study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=study_storage(tmp_path))
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    orphan = study.ask(space)  # ... and the worker died here
    retry = _next_trial(study, space, 2, tmp_path / "ask.lock")
    assert study.get_trials(deepcopy=False)[orphan.number].state == TrialState.FAIL
    assert retry.params == orphan.params and retry.user_attrs["retry_of"] == orphan.number
    assert retry.user_attrs["pid"] == os.getpid()
    # On a database several machines share, a young trial that names nobody may be another machine's, mid-ask.
    young = study.ask(space)
    _next_trial(study, space, 10, tmp_path / "ask.lock", shared_database=True)
    assert study.get_trials(deepcopy=False)[young.number].state == TrialState.RUNNING
