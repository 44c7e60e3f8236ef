"""The jobs UI in a real headless browser (Debian's chromium through chromium-driver and selenium):
launch the smoke preset from the form, watch the log and the loss curve grow without a reload, stop,
resume, see CER before -> after; a UI server killed and restarted while a run trains; a queued second
job that starts when the first ends; two runs compared.

DEEPSYNTH_UI_SCREENSHOTS=docs/ui keeps the screenshots for docs/ui.md (a temporary folder otherwise)."""

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deepsynth_ocr.runs import list_runs, read_run, update_manifest

from .conftest import ROOT
from .runs_helpers import child_env

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UiServer:
    """``deepsynth-ocr ui`` in its own process, as a user starts it; killed and restarted at will."""

    def __init__(self, root: Path, log: Path, *extra: str):
        self.root, self.log, self.port, self.proc, self.extra = root, log, _free_port(), None, list(extra)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "deepsynth_ocr.cli", "ui", "--root", str(self.root),
                                          "--port", str(self.port), *self.extra], cwd=ROOT, env=child_env(), stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/api/runs", timeout=2).status_code == 200:
                    return
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            time.sleep(0.2)
        pytest.fail("the UI did not answer within 60 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def ui(tmp_path):
    if os.environ.get("DEEPSYNTH_UI_SCREENSHOTS"):  # screenshots for the docs show a plain path, not pytest's
        tmp_path = Path("/tmp/deepsynth")
        shutil.rmtree(tmp_path, ignore_errors=True)
        tmp_path.mkdir()
    data = tmp_path / "data"
    shutil.copytree(ROOT / "data" / "samples", data / "samples")
    roots = json.dumps([str(data), str(ROOT / "data")])  # prepare writes into the first; the presets read the second
    server = UiServer(tmp_path / "runs", tmp_path / "ui.log", "-s", f"ui.data_roots={roots}")
    server.data = data
    server.start()
    yield server
    server.stop()
    for info in list_runs(server.root):
        for pid in info.pids:  # a run still going when a test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("DEEPSYNTH_UI_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return lambda driver, name: driver.save_screenshot(str(folder / f"{name}.png"))


def _wait(predicate, timeout=240, what="the page"):
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
        except StaleElementReferenceException:  # the runs table re-renders every two seconds
            value = None
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"{what} did not get there within {timeout} s")


def _find(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def _fill(driver, fields: dict) -> None:
    """Type (or choose) each launch-form field's value."""
    from selenium.webdriver.support.ui import Select

    for name, value in fields.items():
        (box,) = _find(driver, "#field-" + name.replace(".", "-"))
        if box.tag_name == "select":
            Select(box).select_by_visible_text(value)
        else:
            box.clear()
            box.send_keys(value)


def _launch_from_form(driver, ui, fields: dict) -> tuple[str, str]:
    """Fill the launch form over the smoke preset and submit it; returns (run directory name, started/queued)."""
    driver.get(ui.url + "/launch")
    _wait(lambda: _find(driver, "#field-train-max_steps"), 60, "the preset's fields")
    _fill(driver, fields)
    _find(driver, "#launch")[0].click()
    link = _wait(lambda: _find(driver, "#launch-result a"), 30, "the launch result")[0]
    return link.text, _find(driver, "#launch-result")[0].text.split(":")[0]


def _loss_points(driver) -> int:
    lines = _find(driver, "#loss-chart polyline")
    return int(lines[0].get_attribute("data-count")) if lines else 0


def _status(driver) -> str:
    return _find(driver, "#status")[0].text


SMOKE = {"eval.max_samples": "16", "tracking.wandb": "disabled", "train.save_steps": "1000"}


def test_markup_in_a_run_name_and_a_prediction_renders_as_text_in_the_browser(ui, browser):
    markup = "<img src=x onerror=window.__pwned=1>"
    run_dir = ui.root / f"x{markup}_20261205_100000"
    (run_dir / "eval").mkdir(parents=True)
    update_manifest(run_dir, name=f"x{markup}", kind="train", status="ok", created_at="2026-12-05T10:00:00",
                    versions={}, error="<script>window.__pwned=1</script>")
    row = {"id": "r1", "image": None, "reference": "ab", "prediction": f"<script>window.__pwned=1</script>{markup}"}
    (run_dir / "eval" / "after.jsonl").write_text(json.dumps(row) + "\n")
    browser.get(ui.url + "/")
    link = _wait(lambda: _find(browser, "#runs tbody a"), 30, "the runs list")[0]
    assert link.text == run_dir.name
    link.click()
    _wait(lambda: _find(browser, "#samples"), 30, "the run page")
    assert markup in _find(browser, "#samples")[0].text and "<script>" in _find(browser, "#error")[0].text
    time.sleep(1)
    assert browser.execute_script("return window.__pwned === undefined")


def test_launch_watch_stop_resume_to_cer_before_and_after_in_the_browser(ui, browser, shots):
    name, state = _launch_from_form(browser, ui, {**SMOKE, "name": "ui-smoke", "train.max_steps": "150"})
    shots(browser, "launch")
    assert state == "started" and name.startswith("ui-smoke_")
    browser.get(f"{ui.url}/runs/{name}")
    browser.execute_script("window.__samePage = true")  # gone if the page reloads
    first = _wait(lambda: _loss_points(browser) >= 2 and _loss_points(browser), what="the loss curve")
    _wait(lambda: _loss_points(browser) > first, what="the loss curve growing")
    log = _find(browser, "#log")[0].text
    assert "INFO deepsynth_ocr" in log and "'loss'" in log
    shots(browser, "run-training")
    _find(browser, '[data-action="stop"]')[0].click()
    _wait(lambda: _status(browser) == "interrupted", 120, "the status interrupted")
    stopped_at = read_run(ui.root / name).manifest["stopped_at_step"]
    assert 0 < stopped_at < 150
    _find(browser, '[data-action="resume"]')[0].click()
    _wait(lambda: _status(browser) == "ok", 300, "the resumed run finishing")
    cer = _wait(lambda: _find(browser, "#cer")[0].text, 30, "the CER line")
    before, after = map(float, re.fullmatch(r"CER (\d\.\d{4}) → (\d\.\d{4})", cer).groups())
    assert after < before  # the smoke fine-tune reads its domain better
    assert browser.execute_script("return window.__samePage === true")  # all of it without a reload
    assert "resuming from" in _find(browser, "#log")[0].text
    browser.execute_script("window.scrollTo(0, 0)")
    shots(browser, "run-finished")


def test_the_page_survives_a_ui_restart_a_queued_job_starts_when_the_first_ends_and_two_runs_compare(ui, browser, shots):
    first, state = _launch_from_form(browser, ui, {**SMOKE, "name": "ui-long", "train.max_steps": "120"})
    second, queued = _launch_from_form(browser, ui, {**SMOKE, "name": "ui-short", "train.max_steps": "30",
                                                      "train.learning_rate": "0.002"})
    assert (state, queued) == ("started", "queued")
    browser.get(ui.url + "/")
    _wait(lambda: any("queued" in r.text for r in _find(browser, f'#runs tr[data-run="{second}"]')), 30, "the queued row")
    shots(browser, "runs-queued")

    browser.get(f"{ui.url}/runs/{first}")
    browser.execute_script("window.__samePage = true")
    _wait(lambda: _loss_points(browser) >= 2, what="the first run training")
    ui.kill()  # the UI server dies; the run, in its own session, trains on
    assert read_run(ui.root / first).status == "running"
    seen = len(_find(browser, "#log")[0].text)
    ui.start()
    _wait(lambda: len(_find(browser, "#log")[0].text) > seen, 120, "the log after the restart")
    assert browser.execute_script("return window.__samePage === true")  # the page reconnected by itself
    _wait(lambda: read_run(ui.root / first).status == "ok", 300, "the first run finishing")
    _wait(lambda: read_run(ui.root / second).status in ("starting", "running", "ok"), 60, "the queued run starting")
    _wait(lambda: read_run(ui.root / second).status == "ok", 300, "the queued run finishing")
    assert read_run(ui.root / second).created_at >= read_run(ui.root / first).ended_at  # it waited for the first

    browser.get(ui.url + "/")
    for run in (first, second):
        _wait(lambda run=run: _find(browser, f'#runs tr[data-run="{run}"] input'), 30, "the rows")[0].click()
    _find(browser, "#compare-selected")[0].click()
    _wait(lambda: _find(browser, "#compare-metrics"), 30, "the compare page")
    assert {e.get_attribute("data-series") for e in _find(browser, "#loss-chart polyline")} == {first, second}
    rows = {r.text.split(" ")[0]: r.text for r in _find(browser, "#compare-config tbody tr")}
    assert "train.max_steps 120 30" in rows["train.max_steps"] and "train.learning_rate" in rows
    assert len(_find(browser, "#compare-rows tbody tr")) == 10
    shots(browser, "compare")


def test_prepare_a_source_on_the_data_page_and_read_an_image_on_the_try_it_page(ui, browser, shots):
    browser.get(ui.url + "/data")
    _find(browser, "#source")[0].send_keys(str(ui.data / "samples" / "eval.jsonl"))
    _find(browser, "#name")[0].send_keys("samples-eval")
    _find(browser, "#prepare-form button")[0].click()
    _wait(lambda: _find(browser, "#prepare-result a"), 30, "the prepare link")[0].click()

    def report_shown():
        browser.refresh()
        return _find(browser, "#counts")

    counts = _wait(report_shown, 120, "the prepare report")[0].text
    assert counts.startswith("read 16 = kept 16 + rejected 0")
    _wait(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#dataset-rows img')].every(i => i.complete && i.naturalWidth > 0)"), 30, "thumbnails")
    shots(browser, "data")

    browser.get(ui.url + "/try")
    image = sorted((ROOT / "data" / "smoke-domain" / "images").iterdir())[0]
    _find(browser, "#file")[0].send_keys(str(image))
    _find(browser, "#try-form button")[0].click()
    text = _wait(lambda: _find(browser, "#try-result pre"), 120, "the text read")[0].text
    assert text.strip() and _find(browser, "#try-status")[0].text == "read with base"
    shots(browser, "try")


def test_clone_a_run_into_the_form_with_overrides_and_launch_exactly_the_command_the_preview_showed(ui, browser):
    """Issue 30: the run page's Clone link fills the launch form from that run's config; the task and augmentation
    fields, the overrides box and the command preview; a bad override is refused next to the box and nothing starts;
    fixed, the launch runs the previewed command (the run directory aside: it is named when the run starts)."""
    from selenium.webdriver.support.ui import Select

    from deepsynth_ocr.config import RunConfig

    run_dir = ui.root / "invoices_20261205_100000"
    run_dir.mkdir(parents=True)
    update_manifest(run_dir, name="invoices", kind="train", status="ok", created_at="2026-12-05T10:00:00", versions={})
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.name, cfg.train.max_steps = "invoices", 77
    cfg.to_yaml(run_dir / "config.yaml")
    browser.get(ui.url + "/runs/" + run_dir.name)
    _wait(lambda: _find(browser, "#clone"), 30, "the run page")[0].click()
    _wait(lambda: [b for b in _find(browser, "#field-train-max_steps") if b.get_attribute("value") == "77"], 30,
          "the cloned run's fields")
    assert _find(browser, "#clone-of")[0].text == run_dir.name and not _find(browser, "#preset")
    _fill(browser, {"train.max_steps": "3", "eval.max_samples": "4", "tracking.wandb": "disabled"})
    Select(_find(browser, "#field-data-task")[0]).select_by_visible_text("markdown")
    _find(browser, "#field-augment-enabled")[0].click()
    _find(browser, "#overrides")[0].send_keys("eval.batch_size=4\nlora.r=-3")
    _find(browser, "#launch")[0].click()
    error = _wait(lambda: _find(browser, '[data-error-for="overrides"]')[0].text, 30, "the override's error")
    assert error.startswith("line 2: lora.r")
    assert [r.dir.name for r in list_runs(ui.root)] == [run_dir.name]  # nothing started
    _find(browser, "#overrides")[0].clear()
    _find(browser, "#overrides")[0].send_keys("eval.batch_size=4\ntrain.warmup_steps=1")
    _find(browser, "#preview")[0].click()
    command = _wait(lambda: _find(browser, "#command")[0].text, 30, "the command preview")
    assert f"-c {run_dir / 'config.yaml'}" in command and "-s train.max_steps=3" in command
    assert "-s 'data.task=\"markdown\"'" in command and "-s augment.enabled=true" in command and "-s eval.batch_size=4" in command
    _find(browser, "#launch")[0].click()
    started = _wait(lambda: _find(browser, "#launch-result a"), 30, "the launch")[0].text
    argv = json.loads((ui.root / started / ".launch").read_text())["argv"]

    def without_run_dir(args):
        return [a for i, a in enumerate(args) if a != "--run-dir" and (i == 0 or args[i - 1] != "--run-dir")]

    assert without_run_dir(shlex.split(command))[-len(without_run_dir(argv)):] == without_run_dir(argv)
    assert shlex.split(command)[: -len(argv)] == [sys.executable, "-m", "deepsynth_ocr.cli"]


def test_the_charts_have_ticks_hover_titles_lr_and_grad_norm_curves_and_a_centred_single_point(ui, browser, shots):
    """Issue 30 item 7: five ticks per axis instead of min/max only, a title on every point (the browser's hover),
    learning-rate and gradient-norm curves beside the loss, and a one-point CER chart drawn mid-plot."""
    run_dir = ui.root / "curves_20261205_100000"
    run_dir.mkdir(parents=True)
    update_manifest(run_dir, name="curves", kind="train", status="ok", created_at="2026-12-05T10:00:00", versions={})
    rows = [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-3 * (1 - s / 100), "grad_norm": 0.5 + s / 100} for s in range(1, 61)]
    rows.append({"step": 60, "eval": "after", "cer": 0.25})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    browser.get(ui.url + "/runs/" + run_dir.name)
    _wait(lambda: _loss_points(browser) == 60, 30, "the loss curve")
    for chart in ("lr-chart", "grad-norm-chart"):
        (line,) = _find(browser, f"#{chart} polyline")
        assert line.get_attribute("data-count") == "60"
    assert len(_find(browser, "#loss-chart .y-tick")) == 5 and len(_find(browser, "#loss-chart .x-tick")) == 5
    titles = [t.get_attribute("textContent") for t in _find(browser, "#grad-norm-chart circle.point title")]
    assert len(titles) == 60 and titles[9] == "step 10: 0.600"
    assert [t.text for t in _find(browser, "#cer-chart .x-tick")] == ["59", "60", "61"]  # no tick twice
    (point,) = _find(browser, "#cer-chart circle.point")
    assert abs(float(point.get_attribute("cx")) - (58 + 347 / 2)) < 1 and 15 < float(point.get_attribute("cy")) < 195
    browser.execute_script("document.querySelector('.charts').scrollIntoView()")
    shots(browser, "run-charts")


def test_the_correction_loop_error_analysis_to_corrections_to_a_fine_tune_that_reads_the_corrected_rows(ui, browser, shots):
    """Issue 30 items 3 and 4 in the browser: an evaluation's worst rows with their diffs (markup as text), a failure
    filter, eight rows corrected and added to a corrections dataset, "Fine-tune on v0001" from the same page, and the
    new run's CER on exactly those rows falls. The first reading is written by the test (its rows are the smoke
    domain's eval rows with wrong readings); the fine-tune and both of its evaluations are the kit's own."""
    from selenium.webdriver.support.ui import Select

    from .test_ui_errors import make_run

    shutil.copytree(ROOT / "data" / "smoke-domain", ui.data / "domain")
    wrong = {i: "x" * (i % 3) + "<b>q</b>" for i in range(8)}
    wrong[8] = ""
    source = make_run(ui.root, "shelf-codes", ui.data, wrong)
    browser.get(f"{ui.url}/runs/{source}")
    _wait(lambda: _find(browser, "#errors-link"), 30, "the run page")[0].click()
    rows = _wait(lambda: _find(browser, "#error-rows tbody tr"), 30, "the error rows")
    assert "<b>q</b>" in rows[0].find_element("css selector", ".diff ins").text  # markup shown as text
    Select(_find(browser, "#filter-kind")[0]).select_by_value("empty")
    _find(browser, "#errors-filter button")[0].click()
    _wait(lambda: [r.get_attribute("data-id") for r in _find(browser, "#error-rows tbody tr")] == ["eval_0008"], 30, "the filter")
    browser.get(f"{ui.url}/runs/{source}/errors?kind=error&order=file")
    for tr in _wait(lambda: _find(browser, "#error-rows tbody tr"), 30, "the rows")[:8]:
        tr.find_element("css selector", ".use-reference").click()  # the person's correction: the true text
        tr.find_element("css selector", ".tick").click()
    name = _find(browser, "#dataset-name")[0]
    name.clear()
    name.send_keys("shelf-fixes")
    shots(browser, "errors")
    _find(browser, "#add-corrections")[0].click()
    assert "v0001.jsonl with 8 rows (8 added)" in _wait(lambda: _find(browser, "#errors-result")[0].text, 30, "the result")
    _wait(lambda: _find(browser, '#corrections tr[data-dataset="shelf-fixes"] a.train-on'), 30, "the new version")[0].click()
    version = ui.data / "corrections" / "shelf-fixes" / "v0001.jsonl"
    _wait(lambda: [b for b in _find(browser, "#field-data-train_path") if b.get_attribute("value") == str(version)], 30,
          "the launch form with the corrections")
    _fill(browser, {**SMOKE, "name": "shelf-fixed", "train.max_steps": "40"})
    _find(browser, "#launch")[0].click()
    run = _wait(lambda: _find(browser, "#launch-result a"), 30, "the launch")[0].text
    _wait(lambda: read_run(ui.root / run).status in ("ok", "failed"), 300, "the fine-tune on the corrections")
    assert read_run(ui.root / run).status == "ok", (ui.root / run / "console.log").read_text()[-3000:]

    fixed = {json.loads(line)["source"].rsplit(" ", 1)[-1] for line in version.read_text().splitlines()}
    assert fixed == {f"eval_{i:04d}" for i in range(8)}

    def cer_of(tag, ids):
        rows = [json.loads(line) for line in (ui.root / run / "eval" / f"{tag}.jsonl").read_text().splitlines()]
        chosen = [r for r in rows if r["id"] in ids]
        assert len(chosen) == len(ids)
        return sum(r["char_edits"] for r in chosen) / sum(r["ref_chars"] for r in chosen)

    before, after = cer_of("before", fixed), cer_of("after", fixed)
    assert after < 0.5 * before, (before, after)  # the corrected rows are now read (measured here: 0.69 -> 0.03)
    browser.get(f"{ui.url}/runs/{run}/errors?vs={source}")
    _wait(lambda: _find(browser, "#error-rows th"), 30, "the new run's errors")
    shots(browser, "errors-after")

    # Item 6: the playground reads a corrected page with the new fine-tune, the base beside it.
    before = {json.loads(line)["id"]: json.loads(line) for line in (ui.root / run / "eval" / "before.jsonl").read_text().splitlines()}
    after = {json.loads(line)["id"]: json.loads(line) for line in (ui.root / run / "eval" / "after.jsonl").read_text().splitlines()}
    row = next(after[i] for i in sorted(fixed) if after[i]["exact"] and not before[i]["exact"])
    browser.get(f"{ui.url}/try?model={run}")
    _find(browser, "#file")[0].send_keys(row["image"])
    _find(browser, "#try-form button")[0].click()
    columns = _wait(lambda: _find(browser, "#try-result .reading"), 120, "the two readings")
    texts = {c.get_attribute("data-column"): c.find_element("css selector", "pre").text for c in columns}
    assert texts == {"fine-tune": row["reference"], "base": before[row["id"]]["prediction"]}
    shots(browser, "try-side-by-side")


def test_early_stopping_keeps_the_best_checkpoint_which_is_evaluated_and_exported_from_its_row(ui, browser, shots):
    """Issue 30 item 1 in the browser: a run launched from the form with keep-best and early stopping stops early
    (measured: CER 0.344 at step 40, then two evaluations without a gain, stopped at 48); its best checkpoint is
    rank 1 and the run's adapter, and that row's Evaluate and Export both finish."""
    browser.get(ui.url + "/launch")
    _wait(lambda: _find(browser, "#field-train-max_steps"), 60, "the form")
    _fill(browser, {**SMOKE, "name": "early", "train.max_steps": "80", "train.learning_rate": "0.01",
                    "eval.every_steps": "4", "train.save_steps": "4", "train.early_stopping_patience": "2", "eval.max_samples": "8"})
    _find(browser, "#field-train-keep_best")[0].click()
    # the adapter export only (export.merged=false): the merged weights' own export is tested in tests/test_export.py
    _find(browser, "#overrides")[0].send_keys("eval.periodic_samples=8\neval.baselines=[]\ntrain.save_total_limit=2\n"
                                              "export.merged=false")
    _find(browser, "#launch")[0].click()
    run = _wait(lambda: _find(browser, "#launch-result a"), 30, "the launch")[0].text
    _wait(lambda: read_run(ui.root / run).status in ("ok", "failed"), 300, "the early-stopped run")
    manifest = read_run(ui.root / run).manifest
    assert manifest["status"] == "ok", (ui.root / run / "console.log").read_text()[-3000:]
    selection = manifest["selection"]
    best = selection["adapter_from"]
    assert selection["stopped_early_at"] < 80 and best == f"checkpoint-{selection['best_step']}"
    browser.get(f"{ui.url}/runs/{run}")
    row = _wait(lambda: _find(browser, f'#checkpoints tr[data-checkpoint="{best}"]'), 30, "the checkpoints")[0]
    assert "(best)" in row.text and "the run's adapter" in row.text
    row.find_element("css selector", "[data-evaluate]").click()
    evaluation = _wait(lambda: _find(browser, "#evaluate-result"), 30, "the evaluation launch")[0].text
    _find(browser, f'[data-export="{best}"]')[0].click()
    _wait(lambda: "export started" in _find(browser, "#action-result")[0].text, 30, "the export launch")
    browser.execute_script("document.getElementById('checkpoints-section').scrollIntoView()")
    shots(browser, "checkpoints")
    export = ui.root / run / f"export-{best}"
    _wait(lambda: (export / "README.md").is_file() or read_run(ui.root / evaluation).status == "failed", 300, "the export")
    assert f"This export is `{best}` of the run" in (export / "README.md").read_text()
    _wait(lambda: read_run(ui.root / evaluation).status in ("ok", "failed"), 300, "the evaluation")
    assert read_run(ui.root / evaluation).status == "ok"
    # the same 8 rows as the periodic evaluation that ranked the checkpoint: the same score
    assert read_run(ui.root / evaluation).manifest["metrics"]["after"]["cer"] == pytest.approx(
        json.loads((ui.root / run / "checkpoints" / best / "deepsynth_eval.json").read_text())["value"], abs=1e-6)
