"""Issue 30 item 6: the Try-it playground. A checkpoint, the base beside it on the same page, the mode's prompt and
the token limit reach generation (checked against `deepsynth-ocr infer` with the same adapter); the loaded model
holds a job slot (a launch waits, and it is refused while every slot trains) and is unloaded when idle; a reading
is corrected into a corrections dataset."""

import json
import os
import shutil
import socket
import subprocess

import pytest
from fastapi.testclient import TestClient

from deepsynth_ocr import corrections
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.runs import update_manifest
from deepsynth_ocr.ui.app import create_ui_app

from .conftest import ROOT

IMAGES = ROOT / "data" / "smoke-domain" / "images"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short smoke fine-tune with a checkpoint at step 4 (eval off)."""
    from deepsynth_ocr.jobs.train import train

    root = tmp_path_factory.mktemp("runs")
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.output_root, cfg.eval.enabled, cfg.tracking.wandb = str(root), False, "disabled"
    cfg.train.max_steps, cfg.train.save_steps = 8, 4
    return train(cfg).run_dir


@pytest.fixture
def ui(trained, tmp_path, monkeypatch):
    """The UI over a runs root of this test's own, holding a copy of the trained run."""
    monkeypatch.chdir(ROOT)
    shutil.copytree(trained, tmp_path / "runs" / trained.name)
    cfg = RunConfig()
    cfg.output_root, cfg.ui.data_roots, cfg.ui.gpu_slots = str(tmp_path / "runs"), [str(tmp_path / "data")], 1
    client = TestClient(create_ui_app(cfg))
    client.headers["X-CSRF-Token"] = client.get("/").text.split('name="csrf" content="')[1].split('"')[0]
    return client, client.app.state.ui, tmp_path


def _read(client, image, **fields):
    return client.post("/api/try", data=fields, files={"file": (image.name, image.read_bytes(), "image/png")})


def _infer(tmp_path, image, *overrides) -> str:
    from deepsynth_ocr.jobs.infer import infer

    out = tmp_path / f"infer-{len(list(tmp_path.glob('infer-*')))}.jsonl"
    infer([str(image)], out, RunConfig.load(None, list(overrides)))
    return json.loads(out.read_text().splitlines()[0])


def test_a_checkpoint_and_the_base_side_by_side_with_the_modes_prompt_and_token_limit(ui, trained, tmp_path):
    client, state, _ = ui
    image = sorted(IMAGES.iterdir())[3]
    checkpoint = f"{trained.name}/checkpoint-4"
    assert checkpoint in client.get("/try").text and f'<option selected>{checkpoint}</option>' in client.get(f"/try?model={checkpoint}").text
    r = _read(client, image, model=checkpoint, mode="markdown", max_tokens="5", compare="1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["columns"] == ["fine-tune", "base"] and body["prompt"] == "<image>\n<|grounding|>Convert the document to markdown."
    (page,) = body["pages"]
    tuned, base = page["readings"]
    adapter = state.root / trained.name / "checkpoints" / "checkpoint-4"
    prompt = ["infer.prompt=<image>\n<|grounding|>Convert the document to markdown.", "infer.max_new_tokens=5"]
    assert tuned["text"] == _infer(tmp_path, image, *prompt, f"infer.adapter={adapter}")["text"]
    assert base["text"] == _infer(tmp_path, image, *prompt)["text"]
    assert tuned["tokens"] <= 5 and base["tokens"] <= 5
    assert state.playground.key == checkpoint and state.scheduler.held == 1
    question = _read(client, image, model=checkpoint, mode="question", prompt="What code is on the label?", compare="0")
    assert question.json()["prompt"] == "<image>\nWhat code is on the label?" and len(question.json()["pages"][0]["readings"]) == 1
    assert _read(client, image, model=checkpoint, mode="question").status_code == 400  # no question written
    assert _read(client, image, model=checkpoint, max_tokens="0").status_code == 400
    assert _read(client, image, model=f"{trained.name}/checkpoint-99").status_code == 400
    assert state.scheduler.held == 1  # switching models or refusals never take a second slot


def test_the_loaded_model_holds_a_slot_gives_it_to_a_launch_unless_reading_and_is_unloaded_when_idle(ui, trained, monkeypatch):
    client, state, _ = ui
    started = []
    monkeypatch.setattr("deepsynth_ocr.ui.scheduler.start", lambda launch, env=None, cwd=None: started.append(launch) or subprocess.Popen(["true"]))
    image = sorted(IMAGES.iterdir())[0]
    body = {"preset": "smoke.yaml", "fields": {"train.max_steps": "5"}}
    assert _read(client, image, model="base").status_code == 200
    assert state.scheduler.held == 1 and state.playground.key == "base"
    state.playground.busy += 1  # a request reading now: the launch waits for it
    assert client.post("/api/launch", json=body).json()["state"] == "queued" and started == []
    state.scheduler.tick()
    assert started == [] and state.playground.key == "base"
    state.playground.busy -= 1  # the request ends: the next tick unloads the model and starts the launch
    state.scheduler.tick()
    assert state.playground.key is None and state.scheduler.held == 0 and len(started) == 1
    (state.root / started[0].run_dir.name / ".launch").unlink(missing_ok=True)  # the fake start recorded no pid
    assert _read(client, image, model="base").status_code == 200 and state.scheduler.held == 1
    assert client.post("/api/launch", json=body).json()["state"] == "started"  # an idle model gives its slot at once
    assert state.playground.key is None and state.scheduler.held == 0 and len(started) == 2
    (state.root / started[1].run_dir.name / ".launch").unlink(missing_ok=True)
    assert _read(client, image, model="base").status_code == 200
    state.playground.idle_s = 0
    state.scheduler.tick()  # idle past ui.try_idle_minutes: unloaded with no launch waiting
    assert state.playground.key is None and state.scheduler.held == 0
    # every slot training (a live run directory): the playground is refused instead of sharing the GPU
    live = state.root / "busy_20261206_100000"
    live.mkdir()
    update_manifest(live, name="busy", kind="train", status="running", created_at="2026-12-06T10:00:00", versions={})
    (live / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    busy = _read(client, image, model="base")
    assert busy.status_code == 409 and "job slot" in busy.json()["error"] and state.scheduler.held == 0


def test_a_reading_is_corrected_into_a_corrections_dataset(ui, trained):
    client, state, tmp_path = ui
    image = sorted(IMAGES.iterdir())[5]
    page = _read(client, image, model=trained.name).json()["pages"][0]
    added = client.post("/api/try/correct", json={"upload": page["upload"], "text": "k2p9", "dataset": "desk",
                                                  "prompt": "<image>\nFree OCR."})
    assert added.status_code == 200, added.text
    (row,) = corrections.read_rows(tmp_path / "data" / "corrections" / "desk" / "v0001.jsonl")
    assert row["text"] == "k2p9" and row["source"].startswith("try-it upload")
    from PIL import Image

    with Image.open(tmp_path / "data" / "corrections" / "desk" / row["image"]) as a, Image.open(image) as b:
        assert a.convert("RGB").tobytes() == b.convert("RGB").tobytes()  # the page read, kept by the UI
    again = client.post("/api/try/correct", json={"upload": page["upload"], "text": "k2p9", "dataset": "desk"})
    assert again.status_code == 409
    assert client.post("/api/try/correct", json={"upload": "../../etc/passwd", "text": "x", "dataset": "desk"}).status_code == 400
