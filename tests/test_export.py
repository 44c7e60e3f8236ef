"""Exports reload in a fresh process and reproduce the fine-tuned logits; the card says what it is."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepsynth_ocr import export
from deepsynth_ocr.export import ExportError, export_model, fixed_batch, verify_in_fresh_process
from deepsynth_ocr.models.backends import load_base


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short real LoRA training run (eval off), its live fine-tuned model and a fixed batch."""
    from deepsynth_ocr.config import RunConfig
    from deepsynth_ocr.jobs.train import train

    from .conftest import ROOT, SAMPLES

    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.output_root = str(tmp_path_factory.mktemp("runs"))
    cfg.data.train_path = str(SAMPLES / "train.jsonl")
    cfg.data.eval_path = ""
    cfg.train.max_steps, cfg.train.learning_rate = 8, 2e-3
    cfg.train.save_steps = 0
    cfg.tracking.wandb = "disabled"
    result = train(cfg)
    loaded = result.loaded
    return cfg, result.run_dir, loaded, fixed_batch(loaded, cfg)


def _card_sources(run_dir):
    """The run's manifest and data report, which the model card summarises."""
    from deepsynth_ocr.runs import RunPaths

    paths = RunPaths(run_dir)
    return paths.read_manifest(), json.loads(paths.data_report.read_text())


@pytest.mark.slow
def test_adapter_and_merged_exports_reproduce_the_fine_tuned_logits(trained, tmp_path, monkeypatch):
    cfg, run_dir, loaded, batch = trained
    pushed = []

    class FakeApi:  # the push itself needs a network: record what would be uploaded
        def create_repo(self, repo_id, private, exist_ok):
            pushed.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, commit_message):
            pushed.append(("upload", repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())))
            return f"https://hub.example/{repo_id}"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    cfg.export.hub_repo_id = "someone/tiny-ocr"
    fine_tuned = export.compared_logits(loaded.model, batch)
    base_logits = export.compared_logits(load_base(cfg).model, batch)
    assert (fine_tuned - base_logits).abs().max() > 1e-3  # the adapter really changes the model

    verification = export_model(loaded, cfg, tmp_path / "export", batch, *_card_sources(run_dir))
    assert verification["adapter"] == {"max_logit_diff": 0.0, "allowed": 0.0}  # exact
    merged = verification["merged"]
    assert merged["allowed"] == pytest.approx(1e-5 * fine_tuned.abs().max().item())  # float32 logits > 1 here
    assert merged["max_logit_diff"] <= merged["allowed"]
    out = tmp_path / "export"
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()
    assert json.loads((out / "verification.json").read_text()) == verification

    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and "pipeline_tag: image-text-to-text" in card
    assert "train.jsonl`: read 32, kept 32, rejected 0" in card  # data summary from data_report.json
    assert "| before | n/a" in card  # eval was off in this run: the table says so instead of inventing numbers
    assert "learning_rate: 0.002" in card and "adapter: max logit difference 0 (allowed 0)" in card
    assert pushed == [("create", "someone/tiny-ocr", True), ("upload", "someone/tiny-ocr", ["README.md", "adapter", "merged", "verification.json"])]


@pytest.mark.slow
def test_a_bfloat16_export_verifies_within_the_16_bit_bound(trained, tmp_path):
    """The GPU recipes train in bfloat16: its merged export must pass its own bound, the adapter stays exact."""

    cfg, run_dir, loaded, _ = trained
    cfg = copy.deepcopy(cfg)
    cfg.model.dtype, cfg.export.hub_repo_id = "bfloat16", ""
    tuned = load_base(cfg).with_adapter(run_dir / "adapter")
    model = tuned.model
    batch = fixed_batch(loaded, cfg)
    largest = export.compared_logits(model, batch).abs().max().item()
    verification = export_model(tuned, cfg, tmp_path / "export", batch, *_card_sources(run_dir))
    assert verification["adapter"]["max_logit_diff"] == 0.0
    merged = verification["merged"]
    assert merged["allowed"] == pytest.approx(export.MERGED_RTOL[torch.bfloat16] * largest)
    assert 0.0 < merged["max_logit_diff"] <= merged["allowed"]  # rounding shows in 16 bits, within the bound


def test_merged_tolerance_scales_with_the_logits_and_the_dtype():
    small, large = torch.tensor([[0.1, -0.5]]), torch.tensor([[3.0, -14.2]])
    assert export.merged_tolerance(small, torch.float32) == pytest.approx(1e-5)  # never below 1e-5 absolute
    assert export.merged_tolerance(large, torch.float32) == pytest.approx(1.42e-4)
    assert export.merged_tolerance(large, torch.bfloat16) == pytest.approx(0.71)


@pytest.mark.slow
def test_a_broken_adapter_export_fails_verification(trained, tmp_path):
    import shutil


    cfg, run_dir, _, batch = trained  # the live model may already be merged by the export test
    expected = export.compared_logits(load_base(cfg).with_adapter(run_dir / "adapter").model, batch)
    adapter = tmp_path / "adapter"
    shutil.copytree(run_dir / "adapter", adapter)
    cfg.to_yaml(adapter / export.CONFIG_NAME)
    verify_in_fresh_process("adapter", adapter, batch, expected, atol=0.0)  # intact: passes
    weights = adapter / "adapter_model.safetensors"
    state = load_file(str(weights))
    save_file({k: v * 0.5 if "lora_B" in k else v for k, v in state.items()}, str(weights))
    with pytest.raises(ExportError, match="reloads with logits off by"):
        verify_in_fresh_process("adapter", adapter, batch, expected, atol=0.0)


@pytest.mark.slow
def test_cli_export_of_a_run_directory(trained, tmp_path, capsys, monkeypatch):
    """The CLI exports a run directory; with traces on, the export job's span covers its load and export stages."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from deepsynth_ocr import telemetry
    from deepsynth_ocr.cli import main

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "tracer_from_env", lambda service, env=None: provider.get_tracer("test"))
    _, run_dir, _, _ = trained
    assert main(["export", str(run_dir), "-o", str(tmp_path / "out"), "--no-merged"]) == 0
    spans = exporter.get_finished_spans()
    (job,) = [s for s in spans if s.name == "deepsynth-ocr export"]
    assert job.attributes["run_id"] == run_dir.name
    assert sorted(s.name for s in spans if s.parent and s.parent.span_id == job.context.span_id) == ["export", "load"]
    assert "adapter: reloaded in a fresh process, max logit difference 0 (allowed 0)" in capsys.readouterr().out
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out" / "merged").exists() and (tmp_path / "out" / "README.md").is_file()


def test_one_checkpoint_exports_its_own_adapter_with_its_score_on_the_card(trained, tmp_path, capsys):
    """Issue 30: "export" on a checkpoint's row. The checkpoint's adapter (here: the run's with every lora_B zeroed,
    so it differs from the final one) is what lands in the export, and the card gives its periodic score, not the
    run's final before/after table."""
    import shutil

    from deepsynth_ocr.checkpoint_scores import write_score
    from deepsynth_ocr.cli import main

    _, run_dir, _, _ = trained
    run = tmp_path / run_dir.name
    shutil.copytree(run_dir, run)
    folder = run / "checkpoints" / "checkpoint-4"
    shutil.copytree(run / "adapter", folder)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()}, str(folder / "adapter_model.safetensors"))
    write_score(folder, {"step": 4, "metric": "cer", "value": 0.4321, "rank_value": 0.4321})
    assert main(["export", str(run), "--checkpoint", "checkpoint-9", "--no-merged"]) == 2
    assert "has no 'checkpoint-9' (checkpoints: checkpoint-4)" in capsys.readouterr().err
    assert main(["export", str(run), "--checkpoint", "checkpoint-4", "--no-merged"]) == 0
    out = run / "export-checkpoint-4"
    exported = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k for k in exported) and all(not v.any() for k, v in exported.items() if "lora_B" in k)
    card = (out / "README.md").read_text()
    assert "This export is `checkpoint-4` of the run, not its final adapter: cer 0.4321 at step 4" in card
    assert "| OCR | CER" not in card  # the run's final metrics would describe another adapter


@pytest.mark.slow
def test_a_quantised_run_exports_merged_weights_from_the_base_reloaded_unquantised(tmp_path):
    """GPU_AUDIT.md item 6: the GPU recipes train on a 4-bit base; export merges into the unquantised one (the 8-bit
    path is the same code, `model.quantised`; its model card is checked below without a run)."""
    bits, named = "4bit", "4-bit (NF4)"
    from deepsynth_ocr.config import RunConfig
    from deepsynth_ocr.jobs.export import export as export_job
    from deepsynth_ocr.jobs.train import train

    from .conftest import ROOT, SAMPLES

    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.model.name_or_path = "random"
    setattr(cfg.model, f"load_in_{bits}", True)
    cfg.output_root, cfg.data.train_path, cfg.data.eval_path = str(tmp_path / "runs"), str(SAMPLES / "train.jsonl"), ""
    cfg.train.max_steps, cfg.train.save_steps, cfg.tracking.wandb = 2, 0, "disabled"
    run_dir = train(cfg).run_dir
    out, verification = export_job(run_dir)
    assert verification["adapter"]["max_logit_diff"] == 0.0
    assert verification["merged"]["max_logit_diff"] <= verification["merged"]["allowed"]
    merged_config = json.loads((out / "merged" / "config.json").read_text())
    assert "quantization_config" not in merged_config and merged_config.get("dtype") == "float32"
    exported = RunConfig.from_yaml(out / "merged" / export.CONFIG_NAME).model
    assert exported.load_in_4bit is False and exported.load_in_8bit is False
    card = (out / "README.md").read_text()  # says which model each number is of (GPU_AUDIT_2 W4)
    assert f"Measured by the run on the {named} base model plus the adapter" in card
    assert "Each export against the model it was made from: the unquantised base plus the adapter." in card


def test_a_push_is_checked_for_a_token_the_hub_accepts_before_any_export_work(tmp_path, monkeypatch, capsys):
    """Issue 33: with export.hub_repo_id set, a missing or refused token stops `deepsynth-ocr export` at once, in one
    line, before the model loads (it used to fail only at the end, after merging and verifying)."""
    from deepsynth_ocr.cli import main
    from deepsynth_ocr.jobs import export as export_job
    from deepsynth_ocr.runs import update_manifest

    run_dir = tmp_path / "run"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: smoke\n")
    update_manifest(run_dir, name="smoke", kind="train", status="ok")
    monkeypatch.setattr(export_job, "load_base", lambda cfg: pytest.fail("the model loaded before the credential check"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no token saved by a login either
    assert main(["export", str(run_dir), "--push", "someone/tiny-ocr"]) == 2
    assert "no Hugging Face token here; set HF_TOKEN" in capsys.readouterr().err

    class Refusing:
        def whoami(self, token):
            raise OSError("401 Unauthorized")

    monkeypatch.setenv("HF_TOKEN", "hf_revoked_0123456789abcdef")
    monkeypatch.setattr("huggingface_hub.HfApi", Refusing)
    assert main(["export", str(run_dir), "--push", "someone/tiny-ocr"]) == 2
    err = capsys.readouterr().err
    assert "did not accept the token" in err and "nothing was done" in err and "hf_revoked" not in err and err.count("\n") == 1

    class Accepting:
        def whoami(self, token):
            return {"name": "someone"}

    monkeypatch.setattr("huggingface_hub.HfApi", Accepting)
    from deepsynth_ocr.hub import check_push_credentials

    assert check_push_credentials("someone/tiny-ocr", "export.hub_repo_id") == "someone"


def test_the_model_card_names_the_8bit_model_the_scores_are_of():
    from deepsynth_ocr.config import RunConfig

    card = export.model_card(RunConfig(), {}, {"parameters": {"language_model_precision": {"4bit": 0, "8bit": 1024}}})
    assert "Measured by the run on the 8-bit (LLM.int8) base model plus the adapter" in card
    assert "The run trained on the 8-bit (LLM.int8) base" in card
    assert "Measured by the run" not in export.model_card(RunConfig(), {}, {"parameters": {}})


def test_the_model_card_has_each_tasks_metrics():
    from deepsynth_ocr.config import RunConfig

    qa = {"cer": None, "qa_exact_match": 0.25, "qa_f1": 0.5}
    card = export.model_card(RunConfig(), {}, {"metrics": {"before": qa, "after": {**qa, "qa_f1": 0.75}}})
    assert "| Q&A | exact match | token F1 |" in card and "| after | 0.2500 | 0.7500 |" in card
    assert "| OCR |" not in card  # no OCR rows in that eval set: no row of n/a CER
    mixed = {"cer": 0.2, "wer": 0.4, "exact_match": 0.5, "catastrophic_rate": 0.0, "summarize_rouge_l": 0.31}
    card = export.model_card(RunConfig(), {}, {"metrics": {"before": mixed, "after": mixed}})
    assert "| OCR | CER | WER | exact match | catastrophic |" in card and "| summaries | ROUGE-L |" in card
    assert "| before | 0.3100 |" in card


@pytest.mark.slow
def test_the_model_cards_usage_snippet_runs_from_the_export_folder(trained, tmp_path, monkeypatch):
    """The Python block under "## Usage", run as written from the export folder, reads a page with the adapter."""
    import re

    from deepsynth_ocr.config import RunConfig

    from .conftest import SAMPLES

    cfg, run_dir, _, _ = trained
    cfg = RunConfig.from_dict(cfg.to_dict())  # the module's run stays as it was for the other tests
    cfg.export.merged, cfg.export.hub_repo_id = False, ""
    # The run's saved adapter on a fresh base, as `deepsynth-ocr export` loads it: an earlier test merged the
    # module's live model in place.
    loaded = load_base(cfg).with_adapter(run_dir / "adapter")
    out = tmp_path / "export"
    export_model(loaded, cfg, out, fixed_batch(loaded, cfg), *_card_sources(run_dir))
    card = (out / "README.md").read_text()
    snippet = re.search(r"## Usage.*?```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.chdir(out)
    (out / "page.png").write_bytes((SAMPLES / "images" / "eval_0000.png").read_bytes())
    exec(compile(snippet, "README.md", "exec"), {})
    (row,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert row["error"] is None and isinstance(row["text"], str) and row["n_tokens"] >= 1
