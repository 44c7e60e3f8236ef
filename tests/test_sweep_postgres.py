"""Sweeps on the storage several machines share: a PostgreSQL server this test starts itself (initdb into a
temporary directory, a unix socket there, no TCP port, stopped at the end). Two workers in separate processes share
one study; one is SIGKILLed in the middle of a trial, and the study still ends with exactly the trials asked for,
none lost and none counted twice. The UI's trial table reads the same database."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
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


def _server_binaries() -> Path:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    assert found, "PostgreSQL's server binaries (initdb, pg_ctl) are missing: apt-get install postgresql"
    return Path(found).parent


@pytest.fixture(scope="module")
def postgres():
    """``postgresql://`` URL of a throwaway server; the server refuses to run as root, so as root it runs as nobody."""
    bindir = _server_binaries()
    folder = Path(tempfile.mkdtemp(prefix="deepsynth-pg-"))
    as_root = os.geteuid() == 0
    if as_root:
        shutil.chown(folder, "nobody")

    def run(*cmd) -> None:
        line = " ".join(shlex.quote(str(c)) for c in cmd)
        subprocess.run(["su", "nobody", "-s", "/bin/sh", "-c", line] if as_root else line, shell=not as_root,
                       check=True, capture_output=True, timeout=60)

    run(bindir / "initdb", "-D", folder / "db", "-A", "trust", "-U", "deepsynth")
    run(bindir / "pg_ctl", "-D", folder / "db", "-o", f"-k {folder} -c listen_addresses=''", "-l", folder / "pg.log",
        "-w", "start")
    try:
        yield f"postgresql://deepsynth@/postgres?host={folder}"
    finally:
        run(bindir / "pg_ctl", "-D", folder / "db", "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


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
