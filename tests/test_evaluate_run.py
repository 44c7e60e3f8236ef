"""A training run ends with report.html holding periodic CER points and baselines; `deepsynth-ocr
evaluate --run` rescores base, fine-tuned and baselines into a new run directory with its report."""

import json

import pytest

from deepsynth_ocr.cli import main


@pytest.mark.slow
def test_training_run_logs_cer_over_steps_and_writes_the_report_then_cli_evaluate(smoke_cfg, tmp_path, capsys):
    from deepsynth_ocr.jobs.train import train

    smoke_cfg.train.max_steps = 4
    smoke_cfg.train.save_steps = 0
    smoke_cfg.train.logging_steps = 1
    smoke_cfg.eval.every_steps = 2
    smoke_cfg.eval.periodic_samples = 3
    smoke_cfg.eval.max_samples = 4
    smoke_cfg.tracking.wandb = "disabled"
    result = train(smoke_cfg)
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    periodic = [r for r in records if r.get("eval") == "periodic"]
    assert [r["step"] for r in periodic] == [2, 4] and all(r["n"] == 3 for r in periodic)
    assert {r["eval"] for r in records if "eval" in r} == {"before", "after", "periodic", "baseline_tesseract", "baseline_rapidocr"}
    page = (result.run_dir / "report.html").read_text()
    assert "baseline: tesseract" in page and "baseline: rapidocr" in page and page.count("<div class='sample'>") == 4
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert 0 < manifest["timings"]["eval_periodic_s"] < manifest["timings"]["train_s"]

    out_root = tmp_path / "evals"
    assert main(["evaluate", "--run", str(result.run_dir), "-s", f"output_root={out_root}", "-s", "eval.baselines=[tesseract]"]) == 0
    printed = capsys.readouterr().out
    assert "before: CER" in printed and "after: CER" in printed and "baseline_tesseract: CER" in printed
    (eval_dir,) = list(out_root.iterdir())
    after = [json.loads(x) for x in (eval_dir / "eval" / "after.jsonl").read_text().splitlines()]
    trained_after = [json.loads(x) for x in (result.run_dir / "eval" / "after.jsonl").read_text().splitlines()]
    # the reloaded adapter predicts exactly what the live fine-tuned model predicted at the end of training
    assert [r["prediction"] for r in after] == [r["prediction"] for r in trained_after]
    assert (eval_dir / "report.html").is_file()


def test_standalone_evaluation_of_a_prepared_directory_uses_its_validation_split(smoke_cfg, tmp_path):
    import datasets

    from deepsynth_ocr.jobs.evaluate import evaluate
    from deepsynth_ocr.jobs.prepare import prepare

    smoke_cfg.prepare.output_dir = str(tmp_path / "prepared")
    smoke_cfg.prepare.validation_size = 4
    prepared = prepare(smoke_cfg, progress=False).output_dir
    smoke_cfg.data.eval_path = str(prepared)
    smoke_cfg.eval.baselines = []
    eval_dir, summaries = evaluate(smoke_cfg, None, tmp_path / "eval")
    ids = [json.loads(x)["id"] for x in (eval_dir / "eval" / "before.jsonl").read_text().splitlines()]
    assert ids == datasets.load_from_disk(str(prepared))["validation"]["id"]
    assert summaries["before"]["n"] == 4
