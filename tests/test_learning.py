"""The tiny model must really learn to read: images reach the decoder, labels and EOS are right."""

import json

import pytest

from deepsynth_ocr.data.synthetic import random_strings, write_sample_set
from deepsynth_ocr.jobs.train import train


@pytest.mark.slow
def test_memorises_16_rendered_samples_exactly_with_eos(tmp_path, smoke_cfg):
    texts = random_strings(16, seed=123)
    manifest = write_sample_set(tmp_path / "data", {"train": texts})["train"]
    cfg = smoke_cfg
    cfg.name = "learning"
    cfg.data.train_path = cfg.data.eval_path = str(manifest)
    cfg.train.max_steps = 300
    cfg.train.save_steps = 0
    cfg.tracking.wandb = "disabled"
    result = train(cfg)
    rows = [json.loads(line) for line in (result.run_dir / "eval" / "after.jsonl").read_text().splitlines()]
    predictions = [r["prediction"] for r in rows]
    # Distinct images must give distinct predictions: a model that ignores the image cannot pass.
    assert len(set(predictions)) == 16, predictions
    assert [r["prediction"] for r in rows] == [r["reference"] for r in rows]
    assert all(r["stopped"] for r in rows), "every prediction must end with EOS, not at max_new_tokens"
    assert result.before["exact_match"] == 0.0 and result.after["exact_match"] == 1.0
