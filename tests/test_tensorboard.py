"""tracking.tensorboard: every number the run logs (training steps, periodic and final evaluations) is in TensorBoard
event files in the run directory, read back with TensorBoard's own reader; off, there are none."""

from __future__ import annotations

import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _settings(*extra):
    return ["train.max_steps=4", "train.logging_steps=1", "eval.max_samples=4", "eval.every_steps=2",
            "eval.periodic_samples=4", "eval.baselines=[]", "tracking.wandb=disabled", *extra]


def test_the_runs_numbers_are_tensorboard_scalars_in_the_run_directory(smoke_cfg):
    from deepsynth_ocr.jobs.train import train

    result = train(smoke_cfg.with_overrides(_settings("tracking.tensorboard=true")))
    board = EventAccumulator(str(result.run_dir / "tensorboard"))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "eval_before/cer", "eval_after/cer", "eval_periodic/cer"} <= tags
    assert [e.step for e in board.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in board.Scalars("eval_periodic/cer")] == [2, 4]
    assert board.Scalars("eval_after/cer")[0].value == pytest.approx(result.after["cer"])


def test_off_by_default_and_a_clear_error_without_the_package(smoke_cfg, monkeypatch):
    from deepsynth_ocr.errors import UserError
    from deepsynth_ocr.jobs.train import train

    result = train(smoke_cfg.with_overrides(_settings("train.max_steps=1", "eval.enabled=false")))
    assert not (result.run_dir / "tensorboard").exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were missing
    with pytest.raises(UserError, match="tracking.tensorboard: the tensorboard package is not installed"):
        train(smoke_cfg.with_overrides(_settings("train.max_steps=1", "tracking.tensorboard=true")))
