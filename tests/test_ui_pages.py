"""The jobs UI's other pages through its HTTP API: prepare a source and read its report and samples, read
an upload with the base (the same text as `deepsynth-ocr infer`), the memory estimate, a sweep and an
export launched with the right command lines, delete refused while a run is live, the queue on disk."""

import json
import os
import shlex
import shutil
import socket
import subprocess
import time

import pytest
from fastapi.testclient import TestClient

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.runs import read_run, update_manifest
from deepsynth_ocr.ui.app import create_ui_app

from .conftest import ROOT, SAMPLES


@pytest.fixture
def ui(tmp_path, monkeypatch):
    """The UI over tmp/runs with tmp/data as its only data root; ``started`` collects what it launched."""
    monkeypatch.chdir(ROOT)
    data = tmp_path / "data"
    shutil.copytree(SAMPLES, data / "samples")
    cfg = RunConfig()
    cfg.output_root, cfg.ui.data_roots, cfg.ui.gpu_slots = str(tmp_path / "runs"), [str(data)], 1
    client = TestClient(create_ui_app(cfg))
    csrf = client.get("/").text.split('name="csrf" content="')[1].split('"')[0]
    client.headers["X-CSRF-Token"] = csrf
    return client, client.app.state.ui, data


def _capture(monkeypatch) -> list:
    started = []

    def fake_start(launch, env=None, cwd=None):
        started.append(launch)
        return subprocess.Popen(["sleep", "30"])

    monkeypatch.setattr("deepsynth_ocr.ui.scheduler.start", fake_start)
    return started


def test_prepare_from_the_data_page_shows_read_kept_rejected_and_samples(ui):
    client, state, data = ui
    source = data / "samples" / "mixed.jsonl"
    good = (data / "samples" / "eval.jsonl").read_text().splitlines()[:6]
    source.write_text("\n".join(good + [json.dumps({"id": "bad", "image": "nope.png", "text": "x"})]) + "\n")
    refused = client.post("/api/prepare", json={"source": "/etc/passwd", "name": "x"})
    assert refused.status_code == 400 and "data roots" in refused.json()["errors"]["source"]
    assert client.post("/api/prepare", json={"source": str(source), "name": "../x"}).status_code == 400
    assert client.post("/api/prepare", json={"source": str(source), "name": "mixed"}).json() == {"name": "mixed"}
    report = data / "prepared" / "mixed" / "report.json"
    deadline = time.time() + 180
    while not report.is_file() and time.time() < deadline:
        time.sleep(0.5)
    page = client.get("/data/mixed").text
    assert "read 7 = kept 6 + rejected 1" in page and "missing_image" in page and "mixed.jsonl:7" in page
    splits = json.loads(report.read_text())["splits"]
    assert splits == {"train": 6}  # 5% of 6 rows for validation rounds to none: that split is left out, not a crash
    assert page.count('class="thumb"') == 6  # the train split's rows, each with its image
    image = client.get("/data/mixed/image/0")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert "mixed" in client.get("/data").text


@pytest.mark.slow
def test_try_it_reads_an_upload_with_the_same_text_as_infer(ui, tmp_path):
    from deepsynth_ocr.jobs.infer import infer

    client, state, _ = ui
    image = ROOT / "data" / "smoke-domain" / "images" / sorted((ROOT / "data" / "smoke-domain" / "images").iterdir())[0].name
    r = client.post("/api/try", data={"model": "base"}, files={"file": (image.name, image.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    (page,) = r.json()["pages"]
    cfg = RunConfig()
    infer([str(image)], tmp_path / "out.jsonl", cfg)
    expected = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["text"]
    assert [r["text"] for r in page["readings"]] == [expected] and page["page"] is None
    assert client.post("/api/try", data={"model": "nope"}, files={"file": ("a.png", image.read_bytes())}).status_code == 400
    text = client.post("/api/try", data={"model": "base"}, files={"file": ("a.txt", b"hello there, not an image")})
    assert text.status_code == 415 and "not an image format" in text.json()["error"]
    state.cfg.ui.max_upload_mb = 0.001
    big = client.post("/api/try", data={"model": "base"}, files={"file": ("a.png", image.read_bytes() * 4)})
    assert big.status_code == 413 and "ui.max_upload_mb" in big.json()["error"]


def test_a_sweep_launched_from_the_form_gets_its_own_directory_and_command(ui, monkeypatch):
    client, state, _ = ui
    started = _capture(monkeypatch)
    body = {"kind": "sweep", "preset": "smoke.yaml", "space": "smoke-space.yaml", "trials": 3,
            "fields": {"train.max_steps": "20", "eval.max_samples": "8"}}
    r = client.post("/api/launch", json=body)
    assert r.status_code == 200 and r.json()["state"] == "started"
    (launch,) = started
    assert launch.kind == "sweep" and launch.run_dir.name.startswith("sweep-smoke_")
    args = launch.args
    assert args[0] == "sweep" and args[args.index("--trials") + 1] == "3"
    assert args[args.index("--space") + 1] == str(ROOT / "configs" / "sweeps" / "smoke-space.yaml")
    assert "train.max_steps=20" in args and args[-2:] == ["--run-dir", str(launch.run_dir)]
    bad = client.post("/api/launch", json={**body, "trials": 0})
    assert bad.status_code == 400 and "trials" in bad.json()["errors"]


def test_a_second_launch_waits_in_the_queue_on_disk_and_a_queued_run_can_be_cancelled(ui, monkeypatch):
    client, state, _ = ui
    started = _capture(monkeypatch)
    first = client.post("/api/launch", json={"preset": "smoke.yaml", "fields": {"name": "a"}}).json()
    update_manifest(state.root / first["run"], name="a", kind="train", status="running")  # as the job would
    (state.root / first["run"] / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    second = client.post("/api/launch", json={"preset": "smoke.yaml", "fields": {"name": "b"}}).json()
    assert (first["state"], second["state"]) == ("started", "queued") and len(started) == 1
    assert read_run(state.root / second["run"]).status == "queued"
    assert len(list((state.root / ".ui" / "queue").glob("*.json"))) == 1  # survives a restart of the UI
    refused = client.post(f"/api/runs/{second['run']}/delete")
    assert refused.status_code == 400 and "queued" in refused.json()["error"]
    assert client.post(f"/api/runs/{second['run']}/stop").json() == {"stopped": "cancelled while queued"}
    assert read_run(state.root / second["run"]).status == "interrupted"
    state.scheduler.tick()
    assert len(started) == 1  # nothing left to start


def test_export_needs_an_adapter_and_launches_deepsynth_ocr_export(ui, monkeypatch):
    client, state, _ = ui
    started = _capture(monkeypatch)
    run_dir = state.root / "smoke_20261205_100000"
    run_dir.mkdir(parents=True)
    update_manifest(run_dir, name="smoke", kind="train", status="ok")
    refused = client.post(f"/api/runs/{run_dir.name}/export")
    assert refused.status_code == 400 and "no adapter/" in refused.json()["error"]
    (run_dir / "adapter").mkdir()
    r = client.post(f"/api/runs/{run_dir.name}/export").json()
    assert r["state"] == "started" and started[0].args == ["export", str(run_dir)]
    assert started[0].run_dir == run_dir / "export"  # its log there; the run's own status untouched
    assert read_run(run_dir).status == "ok"
    missing = client.post(f"/api/runs/{run_dir.name}/export", json={"checkpoint": "checkpoint-5"})
    assert missing.status_code == 400 and "no 'checkpoint-5'" in missing.json()["error"]
    (run_dir / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors").write_bytes(b"")
    assert client.post(f"/api/runs/{run_dir.name}/export", json={"checkpoint": "checkpoint-5", "push": "not a repo"}).status_code == 400
    r = client.post(f"/api/runs/{run_dir.name}/export", json={"checkpoint": "checkpoint-5", "push": "me/shelf-ocr"}).json()
    assert started[1].args == ["export", str(run_dir), "--checkpoint", "checkpoint-5", "--push", "me/shelf-ocr"]
    assert r["out"] == str(run_dir / "export-checkpoint-5")


def test_the_memory_estimate_warns_when_a_recipe_will_not_fit_the_gpu(ui):
    client, state, _ = ui
    none = client.get("/api/estimate", params={"family": "deepseek-ocr-2", "load_in_4bit": True, "batch": 2}).json()
    assert none["fits"] is False and "no GPU" in none["note"]
    state.gpus[:] = [{"name": "Tesla T4", "memory_gib": 15.0}]
    small = client.get("/api/estimate", params={"family": "deepseek-ocr-2", "backend": "unsloth", "load_in_4bit": True,
                                                "batch": 2}).json()
    big = client.get("/api/estimate", params={"family": "deepseek-ocr-2", "backend": "hf", "batch": 8}).json()
    assert small["fits"] is True and small["gpu"] == "Tesla T4" and small["weights_gib"] < big["weights_gib"]
    assert big["fits"] is False and "lower train.per_device_batch_size" in big["note"]
    assert client.get("/api/estimate", params={"family": "nope"}).status_code == 400


def test_launched_runs_resume_by_directory_from_the_run_page(ui, monkeypatch):
    client, state, _ = ui
    started = _capture(monkeypatch)
    run_dir = state.root / "smoke_20261205_100000"
    run_dir.mkdir(parents=True)
    update_manifest(run_dir, name="smoke", kind="train", status="interrupted", versions={})
    (run_dir / "config.yaml").write_text("name: smoke\n")
    r = client.post(f"/api/runs/{run_dir.name}/resume").json()
    assert r == {"run": run_dir.name, "state": "started"}
    assert started[0].args == ["train", "-c", str(run_dir / "config.yaml"), "-s", "train.resume=true", "--run-dir", str(run_dir)]


def test_q_and_a_runs_show_their_own_metric_on_the_run_page_and_in_compare(ui):
    """Runs scored by token F1 (no OCR rows): the compare table has a 'qa token F1 after' row per run and the
    run page labels each sample with EM/F1, not a CER it does not have."""
    client, state, _ = ui
    root = state.root
    for name, f1 in (("qa-a_20261205_100000", 0.25), ("qa-b_20261205_100001", 0.5)):
        run = root / name
        (run / "eval").mkdir(parents=True)
        summary = {"n": 1, "cer": None, "tasks": ["qa"], "qa_n": 1, "qa_exact_match": 0.0, "qa_f1": f1}
        (run / "manifest.json").write_text(json.dumps({"kind": "train", "status": "ok", "name": name.split("_")[0],
                                                       "metrics": {"before": summary, "after": summary}}))
        (run / "config.yaml").write_text("name: x\n")
        row = {"id": "q1", "task": "qa", "reference": "blue", "prediction": "light blue", "em": False, "f1": 2 / 3,
               "cer": 1.5, "wer": 1.0}
        for tag in ("before", "after"):
            (run / "eval" / f"{tag}.jsonl").write_text(json.dumps(row) + "\n")
    page = client.get("/compare?run=qa-a_20261205_100000&run=qa-b_20261205_100001").text
    assert "qa token F1 after</td><td>0.2500</td><td>0.5000</td>" in page.replace("\n", "")
    run_page = client.get("/runs/qa-a_20261205_100000").text
    assert "EM 0 F1 0.667" in run_page and "CER 1.500" not in run_page


def test_the_run_page_ranks_checkpoints_by_their_eval_score_and_marks_the_runs_adapter(ui):
    """Issue 30: each checkpoint with the periodic eval's CER at its step (written by train.keep_best's
    ``selection`` at save time), rank 1 the best, and the one that became the run's adapter named."""
    from deepsynth_ocr.checkpoint_scores import SCORE_FILE as CHECKPOINT_SCORE_FILE

    client, state, _ = ui
    run = state.root / "ranked_20261206_100000"
    for step, cer in ((100, 0.31), (200, 0.22), (300, 0.27)):
        folder = run / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
        (folder / CHECKPOINT_SCORE_FILE).write_text(json.dumps({"step": step, "metric": "cer", "value": cer,
                                                                 "rank_value": cer}))
    (run / "checkpoints" / "checkpoint-400").mkdir()  # saved between evaluations: listed, not ranked
    (run / "manifest.json").write_text(json.dumps({"kind": "train", "status": "ok", "name": "ranked",
                                                   "selection": {"adapter_from": "checkpoint-200"}}))
    (run / "config.yaml").write_text("name: ranked\n")
    page = client.get(f"/runs/{run.name}").text
    rows = {r.split('"')[0]: r for r in page.split('<tr data-checkpoint="')[1:]}
    assert list(rows) == ["checkpoint-100", "checkpoint-200", "checkpoint-300", "checkpoint-400"]
    assert "CER 0.2200" in rows["checkpoint-200"] and "1 (best)" in rows["checkpoint-200"]
    assert 'class="best"' in rows["checkpoint-200"] and "the run's adapter" in rows["checkpoint-200"]
    assert "CER 0.3100" in rows["checkpoint-100"] and ">3<" in rows["checkpoint-100"] and "the run's adapter" not in rows["checkpoint-100"]
    assert "not scored" in rows["checkpoint-400"]
    # "Resume from it": the launch form over this run's config with train.resume_from on that checkpoint
    assert f'href="/launch?clone={run.name}&amp;resume_from=checkpoint-200"' in rows["checkpoint-200"]
    assert "data-resume-from" not in rows["checkpoint-400"]  # no trainer state: nothing to resume from
    form = client.get(f"/launch?clone={run.name}&resume_from=checkpoint-200").text
    assert f"train.resume_from={run / 'checkpoints' / 'checkpoint-200'}</textarea>" in form
    assert client.get(f"/launch?clone={run.name}&resume_from=checkpoint-9").status_code == 404
    assert client.get(f"/launch?clone={run.name}&resume_from=../../x").status_code == 404


def test_the_console_log_reaches_the_page_without_terminal_colour_codes(tmp_path):
    from deepsynth_ocr.ui.details import read_log

    log = tmp_path / "console.log"
    log.write_bytes(b"\x1b[32m[INFO] 2026-12-06 [RapidOCR] base.py:23: Using engine_name: onnxruntime\x1b[0m\n"
                    b"step 1\rstep 2\n")
    text, offset = read_log(log, 0)
    assert text == "[INFO] 2026-12-06 [RapidOCR] base.py:23: Using engine_name: onnxruntime\nstep 2\n"
    assert offset == log.stat().st_size


def test_a_checkpoint_is_evaluated_from_the_run_page_as_a_new_evaluation_run(ui, monkeypatch):
    """Issue 30: the Evaluate button of a checkpoint row launches ``deepsynth-ocr evaluate`` of that checkpoint's
    adapter (and the base) on the run's eval set or another under the data roots; the launched command runs."""
    from deepsynth_ocr.cli import main
    from deepsynth_ocr.jobs.train import train

    client, state, data = ui
    started = _capture(monkeypatch)
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml").with_overrides([
        "model.name_or_path=random", f"output_root={state.root}", f"data.train_path={data / 'samples' / 'train.jsonl'}",
        f"data.eval_path={data / 'samples' / 'eval.jsonl'}", "train.max_steps=2", "train.save_steps=2",
        "eval.enabled=false", "tracking.wandb=disabled"])
    run_dir = train(cfg).run_dir
    url = f"/api/runs/{run_dir.name}/evaluate"
    assert "Evaluate</button>" in client.get(f"/runs/{run_dir.name}").text
    for body, words in [({"checkpoint": "../adapter"}, "checkpoint-N"), ({"checkpoint": "checkpoint-9"}, "no 'checkpoint-9'"),
                        ({"checkpoint": "checkpoint-2", "eval_path": "/etc/passwd"}, "outside the UI's data roots")]:
        refused = client.post(url, json=body)
        assert refused.status_code == 400 and words in refused.text, (body, refused.text)
    assert started == []
    reply = client.post(url, json={"checkpoint": "checkpoint-2", "eval_path": str(data / "samples" / "eval.jsonl")}).json()
    (launch,) = started
    assert reply == {"run": launch.run_dir.name, "state": "started"} and launch.kind == "evaluate"
    assert launch.args[launch.args.index("--adapter") + 1] == str(run_dir / "checkpoints" / "checkpoint-2")
    assert launch.run_dir.parent == state.root and launch.run_dir.name.startswith("smoke-checkpoint-2-eval_")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main([*launch.args, "-s", "eval.max_samples=4", "-s", "eval.baselines=[]", "-s", "tracking.wandb=disabled"]) in (0, None)
    metrics = read_run(launch.run_dir).manifest["metrics"]
    assert metrics["after"]["n"] == 4 and metrics["before"]["n"] == 4


def test_the_overrides_box_and_the_command_preview_are_checked_as_a_launch_is(ui, monkeypatch):
    """Issue 30: any key=value beyond the form's fields, validated like -s, and the exact command shown before
    anything starts; a bad line, a path outside the data roots or a UI-owned key is refused by line."""
    client, state, data = ui
    started = _capture(monkeypatch)
    body = {"preset": "smoke.yaml", "fields": {"train.max_steps": "20", "data.task": "qa", "augment.enabled": "true"},
            "overrides": "# comments and blank lines are skipped\n\neval.batch_size=4\ntrain.warmup_steps=1\n"}
    preview = client.post("/api/launch/preview", json=body)
    assert preview.status_code == 200 and not started  # a preview starts nothing
    command = preview.json()["command"]
    assert "-m deepsynth_ocr.cli train -c " in command and "-s train.max_steps=20" in command
    assert "-s 'data.task=\"qa\"'" in command and "-s augment.enabled=true" in command
    launched = client.post("/api/launch", json=body).json()
    assert shlex.split(command)[:-1] == started[0].command[:-1]  # the same command; only the run's time stamp moves
    assert started[0].args[:3] == ["train", "-c", str(ROOT / "configs" / "smoke.yaml")]
    assert 'data.task="qa"' in started[0].args and "augment.enabled=true" in started[0].args
    assert "eval.batch_size=4" in started[0].args and "-s eval.batch_size=4" in command
    assert launched["state"] == "started"
    task = client.post("/api/launch/preview", json={**body, "fields": {"data.task": "nope"}})
    assert "data.task" in task.json()["errors"]["data.task"]  # the form's own field names the bad value
    for bad, says in [("eval.batch_size=nope", "line 1: eval.batch_size"), ("data.task=qa", "has its own field"), ("no equals sign", "line 1: write section.field=value"),
                      ("output_root=/tmp/elsewhere", "set by the UI"), ("ui.host=0.0.0.0", "set by the UI"),
                      ("train.max_steps=5", "has its own field"), ("\nprepare.output_dir=/etc", "line 2: prepare.output_dir"),
                      ("data.eval_path=/etc/passwd", "has its own field"), ("lora.r=-1", "lora.r"),
                      ("train.resume_from=/etc", "not a checkpoint under the runs root")]:
        refused = client.post("/api/launch/preview", json={**body, "overrides": bad})
        assert refused.status_code == 400 and says in refused.json()["errors"]["overrides"], (bad, refused.json())
    model_outside = client.post("/api/launch/preview", json={**body, "overrides": "", "fields": {"model.name_or_path": "/etc"}})
    assert "outside the UI's data roots" in model_outside.json()["errors"]["model.name_or_path"]
    hub_id = client.post("/api/launch/preview", json={**body, "overrides": "", "fields": {"model.name_or_path": "owner/model"}})
    assert hub_id.status_code == 200  # a hub id names no local path
    assert len(started) == 1


def test_a_run_is_cloned_into_the_form_with_its_own_config(ui, monkeypatch):
    client, state, _ = ui
    started = _capture(monkeypatch)
    run_dir = state.root / "invoices_20261205_100000"
    run_dir.mkdir(parents=True)
    update_manifest(run_dir, name="invoices", kind="train", status="ok", versions={})
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.name, cfg.train.max_steps, cfg.lora.r = "invoices", 77, 8
    cfg.to_yaml(run_dir / "config.yaml")
    assert 'href="/launch?clone=invoices_20261205_100000"' in client.get(f"/runs/{run_dir.name}").text
    page = client.get(f"/launch?clone={run_dir.name}")
    assert page.status_code == 200 and 'data-clone="invoices_20261205_100000"' in page.text
    assert client.get("/launch?clone=../../etc").status_code == 404
    fields = {f["name"]: f["value"] for f in client.get(f"/api/runs/{run_dir.name}/form").json()["fields"]}
    assert (fields["name"], fields["train.max_steps"], fields["lora.r"]) == ("invoices", 77, 8)
    r = client.post("/api/launch", json={"clone": run_dir.name, "fields": {"name": "invoices-v2", "train.max_steps": "90"}})
    assert r.status_code == 200 and r.json()["run"].startswith("invoices-v2_")
    args = started[0].args
    assert args[:3] == ["train", "-c", str(run_dir / "config.yaml")] and "train.max_steps=90" in args
    assert "lora.r=8" not in " ".join(args)  # kept from the clone's config, not re-sent


def test_the_form_is_saved_as_a_preset_that_loads_back_and_is_never_overwritten(ui, tmp_path):
    """Issue 30 item 5: "Save preset" writes the form (fields and overrides) as configs/NAME.yaml, resolved; the preset
    list offers it and it fills the form with those values."""
    client, state, data = ui
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    state.configs = configs
    body = {"preset": "smoke.yaml", "fields": {"train.max_steps": "42", "data.task": "markdown", "augment.enabled": "true"},
            "overrides": "eval.batch_size=4", "name": "shelf-markdown"}
    saved = client.post("/api/presets", json=body)
    assert saved.status_code == 200 and saved.json() == {"preset": "shelf-markdown.yaml"}, saved.text
    cfg = RunConfig.from_yaml(configs / "shelf-markdown.yaml")
    assert (cfg.train.max_steps, cfg.data.task, cfg.augment.enabled, cfg.eval.batch_size) == (42, "markdown", True, 4)
    assert cfg.output_root == RunConfig().output_root  # not the UI's runs root
    assert "shelf-markdown.yaml" in client.get("/launch").text
    fields = {f["name"]: f["value"] for f in client.get("/api/presets/shelf-markdown.yaml").json()["fields"]}
    assert fields["train.max_steps"] == 42 and fields["data.task"] == "markdown"
    again = client.post("/api/presets", json={**body, "fields": {"train.max_steps": "7"}})
    assert again.status_code == 409 and "never overwritten" in again.json()["errors"]["preset_name"]
    assert RunConfig.from_yaml(configs / "shelf-markdown.yaml").train.max_steps == 42
    bad = client.post("/api/presets", json={**body, "name": "x", "fields": {"lora.r": "-1"}})
    assert bad.status_code == 400 and "lora.r" in bad.json()["errors"] and not (configs / "x.yaml").exists()
    assert client.post("/api/presets", json={**body, "name": "../up"}).status_code == 400


def test_the_evaluate_page_scores_the_base_with_a_chosen_baseline_as_a_run_with_the_scores_side_by_side(ui, monkeypatch):
    """Issue 30 item 2: choose the base (through a preset), an eval set under the data roots, one baseline and a row
    limit; the evaluation is a new run whose page lists the base and the baseline on the same rows."""
    from deepsynth_ocr.cli import main

    client, state, data = ui
    started = _capture(monkeypatch)
    page = client.get("/evaluate").text
    assert '<option selected>base</option>' in page and 'value="tesseract"' in page
    eval_set = str(data / "samples" / "eval.jsonl")
    body = {"model": "base", "preset": "smoke.yaml", "eval_path": eval_set, "baselines": ["tesseract"], "max_samples": "4"}
    for bad, field in [({"baselines": ["abbyy"]}, "baselines"), ({"eval_path": "/etc"}, "eval_path"), ({"model": "nope"}, None)]:
        refused = client.post("/api/evaluate", json={**body, **bad})
        assert refused.status_code in (400, 404) and (field is None or field in refused.json()["errors"]), refused.text
    assert started == []
    reply = client.post("/api/evaluate", json=body).json()
    (launch,) = started
    assert reply["state"] == "started" and launch.kind == "evaluate" and "--adapter" not in launch.args
    assert 'eval.baselines=["tesseract"]' in launch.args and "eval.max_samples=4" in launch.args
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main([*launch.args, "-s", "tracking.wandb=disabled"]) in (0, None)
    run_page = client.get(f"/runs/{launch.run_dir.name}").text
    rows = [part.split('"')[0] for part in run_page.split('data-eval="')[1:]]
    assert rows == ["before", "baseline_tesseract"] and "tesseract (baseline)" in run_page
