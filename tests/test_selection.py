"""Checkpoints ranked by the periodic eval: train.keep_best keeps the best one from rotation and makes it the run's
adapter; train.early_stopping_patience stops after N evaluations without a gain. Training, checkpoints and rotation
are real; the periodic CERs are scripted, so that which step is best is known."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from deepsynth_ocr import evaluate as evaluate_module
from deepsynth_ocr.checkpoint_scores import SCORE_FILE
from deepsynth_ocr.config import ConfigError
from deepsynth_ocr.selection import CheckpointSelection, ranking_metric

SCRIPT = {2: 0.9, 4: 0.3, 6: 0.5, 8: 0.45, 10: 0.6, 12: 0.7}  # step -> periodic CER: best at 4, no gain after it


def _scripted(monkeypatch):
    real = evaluate_module.score_rows

    def score_rows(loaded, rows, cfg, max_new_tokens, desc="generate"):
        summary = real(loaded, rows, cfg, max_new_tokens, desc=desc)
        step = int(desc.removeprefix("eval step ")) if desc.startswith("eval step ") else None
        return {**summary, "cer": SCRIPT[step]} if step in SCRIPT else summary

    monkeypatch.setattr(evaluate_module, "score_rows", score_rows)


def _settings(patience: int, keep_best: bool = True) -> list[str]:
    return ["train.max_steps=30", "train.learning_rate=0.01", "eval.every_steps=2", "train.save_steps=2",
            "train.save_total_limit=2", f"train.keep_best={str(keep_best).lower()}",
            f"train.early_stopping_patience={patience}", "eval.max_samples=4", "eval.periodic_samples=4",
            "eval.baselines=[]", "tracking.wandb=disabled"]


def test_early_stopping_ends_the_run_and_the_best_checkpoint_survives_rotation_as_the_adapter(smoke_cfg, monkeypatch):
    from deepsynth_ocr.jobs.train import train

    _scripted(monkeypatch)
    result = train(smoke_cfg.with_overrides(_settings(patience=3)))
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    selection = manifest["selection"]
    # 6, 8 and 10 bring no gain over step 4's 0.3: the run stops at step 10 of 30, and ends ok.
    assert manifest["status"] == "ok" and selection["stopped_early_at"] == 10 and manifest["metrics"]["steps"] == 10
    assert selection["metric"] == "cer" and selection["best_step"] == 4 and selection["adapter_from"] == "checkpoint-4"
    assert selection["values"] == {str(s): SCRIPT[s] for s in (2, 4, 6, 8, 10)}
    checkpoints = result.run_dir / "checkpoints"
    # save_total_limit 2: 6 and 8 were rotated out, the best was spared next to the newest
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-10", "checkpoint-4"]
    assert json.loads((checkpoints / "checkpoint-4" / SCORE_FILE).read_text())["cer"] == 0.3
    adapter = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")
    best = load_file(checkpoints / "checkpoint-4" / "adapter_model.safetensors")
    last = load_file(checkpoints / "checkpoint-10" / "adapter_model.safetensors")
    assert adapter.keys() == best.keys() and all(adapter[k].equal(best[k]) for k in best)
    assert any(not adapter[k].equal(last[k]) for k in last)  # not the last step's weights


def test_without_keep_best_the_last_step_is_the_adapter_and_every_checkpoint_has_its_score(smoke_cfg, monkeypatch):
    from deepsynth_ocr.jobs.train import train

    _scripted(monkeypatch)
    result = train(smoke_cfg.with_overrides(_settings(patience=0, keep_best=False) + ["train.max_steps=6",
                                                                                    "train.save_total_limit=3"]))
    selection = json.loads((result.run_dir / "manifest.json").read_text())["selection"]
    assert selection["stopped_early_at"] is None and selection["adapter_from"] == "step 6 (the last)"
    scores = {p.name: json.loads((p / SCORE_FILE).read_text())["value"] for p in (result.run_dir / "checkpoints").iterdir()}
    assert scores == {"checkpoint-2": 0.9, "checkpoint-4": 0.3, "checkpoint-6": 0.5}
    adapter = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")
    last = load_file(result.run_dir / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors")
    assert all(adapter[k].equal(last[k]) for k in last)


def test_q_and_a_rows_rank_by_token_f1_where_higher_is_better():
    assert ranking_metric({"cer": None, "qa_f1": 0.7}) == ("qa_f1", 0.7, True)
    assert ranking_metric({"cer": 0.2, "qa_f1": 0.7}) == ("cer", 0.2, False)
    assert ranking_metric({"cer": None}) is None
    selection = CheckpointSelection(patience=2, min_delta=0.05)
    for step, f1 in [(1, 0.5), (2, 0.6), (3, 0.62), (4, 0.64)]:  # +0.02 steps are under min_delta: no gain
        selection.observe({"cer": None, "qa_f1": f1}, step)
    assert selection.stale == 2 and selection.best_any == pytest.approx(-0.6)


@pytest.mark.parametrize("overrides, field", [
    (["train.keep_best=true", "eval.every_steps=0"], "train.keep_best"),
    (["train.early_stopping_patience=2", "eval.every_steps=0"], "train.early_stopping_patience"),
    (["train.keep_best=true", "eval.every_steps=50", "train.save_steps=75"], "train.save_steps"),
    (["train.keep_best=true", "eval.every_steps=50", "train.save_steps=100", "lora.enabled=false",
      "model.load_in_4bit=false"], "train.keep_best"),
])
def test_settings_that_cannot_rank_checkpoints_are_refused_before_anything_loads(smoke_cfg, overrides, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        smoke_cfg.with_overrides(overrides).validate()
