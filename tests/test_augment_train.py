"""On-the-fly augmentation while training: reproducible per (seed, epoch, row), different across epochs,
applied to every training image and to no evaluation image. (Resume exactness with it on is the SIGKILL
test in test_resume.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import torch
from PIL import Image

from deepsynth_ocr.collate import make_collator
from deepsynth_ocr.config import AugmentConfig
from deepsynth_ocr.data import augment as augment_module
from deepsynth_ocr.data.augment import Augmentations, AugmentingCollator
from deepsynth_ocr.training import AugmentEpoch

from .conftest import SAMPLES


def _rows(n: int = 4) -> list[dict]:
    ds = datasets.load_dataset("json", data_files=str(SAMPLES / "train.jsonl"), split="train").select(range(n))
    return [{"id": r["id"], "text": r["text"], "prompt": "<image>\nFree OCR.",
             "image": Image.open(SAMPLES / r["image"]).convert("RGB")} for r in ds]


def test_augmented_batches_repeat_for_the_same_epoch_and_change_with_the_next(tiny_parts):
    _, processor, family = tiny_parts
    plain = make_collator(processor, family)
    aug = Augmentations.from_config(AugmentConfig(probability=1.0))
    wrapped = AugmentingCollator(plain, aug, seed=7)
    rows = _rows()
    first = wrapped(rows)["pixel_values"]
    assert torch.equal(first, AugmentingCollator(plain, aug, seed=7)(rows)["pixel_values"])  # a fresh process: same
    assert not torch.equal(first, plain(rows)["pixel_values"])  # it does degrade
    assert not torch.equal(first, AugmentingCollator(plain, aug, seed=8)(rows)["pixel_values"])
    # a row's degradation does not depend on the batch it lands in (a resume skips batches)
    assert torch.equal(wrapped(rows[1:2])["pixel_values"][0], first[1])
    callback = AugmentEpoch(wrapped)
    callback.on_epoch_begin(None, SimpleNamespace(epoch=2.5), None)  # a run resumed in the middle of epoch 2
    assert wrapped.epoch == 2
    assert not torch.equal(wrapped(rows)["pixel_values"], first)
    assert wrapped.pad_id == plain.pad_id and wrapped.tokenizer is plain.tokenizer  # the rest is the collator's


def test_training_augments_every_training_image_and_no_evaluation_image(smoke_cfg, monkeypatch):
    from deepsynth_ocr.jobs.train import train

    calls = []
    real = augment_module.augment
    monkeypatch.setattr(augment_module, "augment", lambda image, aug, rng: calls.append(1) or real(image, aug, rng))
    smoke_cfg.augment.enabled = True
    smoke_cfg.train.max_steps, smoke_cfg.train.save_steps = 2, 0
    smoke_cfg.eval.max_samples, smoke_cfg.tracking.wandb = 4, "disabled"
    result = train(smoke_cfg)
    t = smoke_cfg.train
    assert result.before is not None and result.after is not None  # evaluation ran, before and after
    assert len(calls) == t.max_steps * t.per_device_batch_size * t.gradient_accumulation_steps
