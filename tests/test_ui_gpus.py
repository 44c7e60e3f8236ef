"""Issue 30 item 5: a slot per GPU. On a machine whose nvidia-smi lists two GPUs (a stand-in script here: this
machine has none), each job gets CUDA_VISIBLE_DEVICES of the GPU it asked for or of a free one, a job waits while
its GPU is busy while a later one takes the free GPU, the queue is reordered and cancelled, a run started outside
the UI holds the GPU its process names, and the runs page shows each GPU's use and job."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.runs import read_run, update_manifest, write_launch
from deepsynth_ocr.ui.app import create_ui_app
from deepsynth_ocr.ui.scheduler import process_gpu

from .conftest import ROOT

SMI = """#!/bin/sh
case "$*" in
  *index*) printf '0, NVIDIA H100 80GB HBM3, 37, 1024, 81559\\n1, NVIDIA H100 80GB HBM3, [N/A], 3, 81559\\n' ;;
  *) exit 2 ;;
esac
"""


def _exec_done(proc: subprocess.Popen) -> subprocess.Popen:
    """``proc`` once its exec has completed: Popen can return while /proc still shows the parent's environment."""
    deadline = time.time() + 10
    while b"CUDA_VISIBLE_DEVICES=" not in Path(f"/proc/{proc.pid}/environ").read_bytes() and time.time() < deadline:
        time.sleep(0.01)
    return proc


@pytest.fixture
def ui(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.chdir(ROOT)
    procs = []

    def fake_start(launch, env=None, cwd=None):  # a process that stands for the job, recorded as start() does
        proc = _exec_done(subprocess.Popen(["sleep", "60"], env=env)) if env else subprocess.Popen(["sleep", "60"])
        procs.append(proc)
        write_launch(launch.run_dir, proc.pid, launch.kind, launch.name, launch.args)
        return proc

    monkeypatch.setattr("deepsynth_ocr.ui.scheduler.start", fake_start)
    cfg = RunConfig()
    cfg.output_root, cfg.ui.data_roots = str(tmp_path / "runs"), [str(tmp_path)]
    client = TestClient(create_ui_app(cfg))
    client.headers["X-CSRF-Token"] = client.get("/").text.split('name="csrf" content="')[1].split('"')[0]
    yield client, client.app.state.ui, procs
    for p in procs:
        p.kill()


def _launch(client, name, gpu=""):
    r = client.post("/api/launch", json={"preset": "smoke.yaml", "fields": {"name": name}, "gpu": gpu})
    assert r.status_code == 200, r.text
    return r.json()


def _gpu_of(state, run) -> int | None:
    return process_gpu(read_run(state.root / run).pids[0])


def test_each_job_gets_its_gpu_waits_for_it_and_the_queue_reorders(ui):
    client, state, procs = ui
    assert state.scheduler.slots == 2 and "GPU 1: NVIDIA H100 80GB HBM3 (79.6 GiB)" in client.get("/launch").text
    a = _launch(client, "a", "1")
    b = _launch(client, "b")
    assert (a["state"], b["state"]) == ("started", "started")
    assert (_gpu_of(state, a["run"]), _gpu_of(state, b["run"])) == (1, 0)  # asked for GPU 1; the free one, 0
    c, d, e = _launch(client, "c"), _launch(client, "d", "1"), _launch(client, "e")
    assert {c["state"], d["state"], e["state"]} == {"queued"}
    assert [q["run"] for q in client.get("/api/queue").json()] == [c["run"], d["run"], e["run"]]
    assert client.post(f"/api/queue/{e['run']}/move", json={"to": "top"}).status_code == 200
    moved = client.post(f"/api/queue/{d['run']}/move", json={"to": "up"}).json()["queue"]
    assert [(q["run"], q["gpu"]) for q in moved] == [(e["run"], None), (d["run"], 1), (c["run"], None)]
    assert client.post(f"/api/queue/{a['run']}/move", json={"to": "up"}).status_code == 400  # not queued
    gpus = {g["index"]: g for g in client.get("/api/gpus").json()}
    assert (gpus[0]["job"], gpus[1]["job"], gpus[0]["utilization"], gpus[1]["utilization"]) == (b["run"], a["run"], 37.0, None)

    procs[0].send_signal(signal.SIGKILL)  # a's process ends: GPU 1 frees
    procs[0].wait()
    update_manifest(state.root / a["run"], name="a", kind="train", status="ok")
    state.scheduler.tick()
    assert [q["run"] for q in client.get("/api/queue").json()] == [d["run"], c["run"]]  # e, first in line, took GPU 1
    assert _gpu_of(state, e["run"]) == 1
    procs[1].send_signal(signal.SIGKILL)  # b ends: GPU 0 frees; d waits for GPU 1, so c (any) starts on 0
    procs[1].wait()
    update_manifest(state.root / b["run"], name="b", kind="train", status="ok")
    state.scheduler.tick()
    assert [q["run"] for q in client.get("/api/queue").json()] == [d["run"]] and _gpu_of(state, c["run"]) == 0
    assert client.post(f"/api/runs/{d['run']}/stop").json() == {"stopped": "cancelled while queued"}
    assert client.get("/api/queue").json() == []
    bad = client.post("/api/launch", json={"preset": "smoke.yaml", "fields": {}, "gpu": "7"})
    assert bad.status_code == 400 and "0..1" in bad.json()["errors"]["gpu"]


def test_a_run_started_outside_the_ui_holds_the_gpu_its_process_names(ui, tmp_path):
    client, state, procs = ui
    outside = _exec_done(subprocess.Popen(["sleep", "60"], env={**os.environ, "CUDA_VISIBLE_DEVICES": "1"}))
    procs.append(outside)
    run_dir = state.root / "cli_20261206_100000"
    run_dir.mkdir(parents=True)
    update_manifest(run_dir, name="cli", kind="train", status="running", created_at="2026-12-06T10:00:00", versions={})
    (run_dir / ".lock").write_text(json.dumps({"pid": outside.pid, "host": socket.gethostname()}))
    assert state.scheduler.gpus_in_use() == {1: run_dir.name}
    started = _launch(client, "next")
    assert _gpu_of(state, started["run"]) == 0  # the free one
    assert _launch(client, "later")["state"] == "queued"
