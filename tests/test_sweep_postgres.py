"""Sweeps on the storage several machines share: a throwaway PostgreSQL server (`.ci/postgres.sh`: initdb into a
temporary directory, a unix socket there, no TCP port, stopped at the end), started by `.ci/run` for the suite or by
this test. Two workers in separate processes share
one study; one is SIGKILLed in the middle of a trial, and the study still ends with exactly the trials asked for,
none lost and none counted twice. The UI's trial table reads the same database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from .conftest import ROOT
from .runs_helpers import child_env
from .test_sweep import _args, _by_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    """``postgresql://`` URL of a throwaway server: the one `.ci/run` started for the suite
    (``$DEEPSYNTH_TEST_POSTGRES``), else one started here with the same script (.ci/postgres.sh)."""
    if os.environ.get("DEEPSYNTH_TEST_POSTGRES"):
        yield os.environ["DEEPSYNTH_TEST_POSTGRES"]
        return
    folder = Path(tempfile.mkdtemp(prefix="deepsynth-pg-"))
    script = ROOT / ".ci" / "postgres.sh"
    started = subprocess.run(["bash", str(script), "start", str(folder)], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(script), "stop", str(folder)], capture_output=True, timeout=60)


def _study(url):
    return optuna.load_study(study_name="smoke", storage=url)


def test_two_workers_on_postgresql_lose_no_trial_when_one_is_killed_mid_trial(postgres, tmp_path):
    from deepsynth_ocr.ui.details import sweep_trials

    cmd = [sys.executable, "-m", "deepsynth_ocr.cli", *_args(tmp_path, 4, "-s", "eval.every_steps=0",
                                                            "-s", "train.max_steps=12"), "--storage", postgres]
    first = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    killed_trial = None
    while killed_trial is None and time.time() < deadline:
        try:
            running = _by_state(_study(postgres))["RUNNING"]
        except KeyError:  # the study is not created yet
            running = []
        mine = [t for t in running if t.user_attrs.get("pid") == first.pid]
        if mine:
            time.sleep(1.0)  # into the trial's training
            first.send_signal(signal.SIGKILL)
            killed_trial = mine[0].number
        assert first.poll() is None or killed_trial is not None, "the first worker ended before it could be killed"
        time.sleep(0.1)
    assert killed_trial is not None, "the first worker never took a trial"
    first.wait(timeout=60)
    err = second.communicate(timeout=600)[1]
    assert second.returncode == 0, err[-2000:]
    states = _by_state(_study(postgres))
    assert len(states["COMPLETE"]) == 4 and not states["RUNNING"] and not states["WAITING"]
    assert len({t.user_attrs["run_dir"] for t in states["COMPLETE"]}) == 4  # none counted twice
    (dead,) = [t for t in states["FAIL"] if t.number == killed_trial]  # the killed one, marked failed ...
    retry = [c for c in states["COMPLETE"] if c.user_attrs.get("retry_of") == killed_trial]
    assert len(retry) == 1 and retry[0].params == dead.params  # ... and run again with its parameters
    rows = sweep_trials(tmp_path / "sweep-smoke")  # the UI reads the database the manifest names
    assert sorted(r["number"] for r in rows if r["state"] == "complete") == sorted(t.number for t in states["COMPLETE"])
    assert {r["state"] for r in rows if r["number"] == killed_trial} == {"died"}
    assert all(t.state == TrialState.COMPLETE for t in retry)
