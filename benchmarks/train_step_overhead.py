"""Ratio of the kit's training step time to a bare PyTorch step on the same model and batch.

The kit's step is what ``train.run`` does per optimizer step: HF ``Trainer`` pulling rows from the
dataset, the kit's collator building the batch (processor + labels), forward, backward, gradient
clipping and the same optimizer (``paged_adamw_8bit``). The bare step is forward, backward and
``optimizer.step()`` on a batch built once. Both run in this process, interleaved in rounds, so load
from other processes hits both alike. Target: ratio <= 1.05.

Then the cost of the kit's per-step stage timings (``training.StageTimer``: four callbacks, the samples and
tokens counts, a ``take()`` per logging interval of 10 steps) replayed in this process, as a share of the
kit step measured above. Target <= 2%. (A run with and without them could not resolve 2% on shared cores.)

Last, what on-the-fly augmentation (the ``augment`` section's defaults) adds to building one batch, as a share
of the kit step: the collator over the same rows with and without it, interleaved.

    python benchmarks/train_step_overhead.py [--steps 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time

import bitsandbytes as bnb
import torch
from transformers import Trainer, TrainerCallback

from deepsynth_ocr.collate import OcrCollator
from deepsynth_ocr.config import AugmentConfig, RunConfig
from deepsynth_ocr.data.augment import Augmentations, AugmentingCollator
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.models.backends import load_model
from deepsynth_ocr.training import training_arguments


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


def kit_step_time(model, cfg, dataset, collator, steps: int, out_dir: str) -> float:
    timer = StepTimer()
    cfg.train.max_steps = steps
    trainer = Trainer(model=model, args=training_arguments(cfg, __import__("pathlib").Path(out_dir)),
                      train_dataset=dataset, data_collator=collator, callbacks=[timer])
    trainer.train()
    return statistics.median(timer.times[2:])  # skip optimizer-state creation


def bare_step_time(model, batch, lr: float, steps: int) -> float:
    opt = bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def timing_us_per_step(mask: torch.Tensor, n: int = 20000) -> float:
    """Microseconds per step of what KitTrainer adds to time a step, replayed ``n`` times."""
    from deepsynth_ocr.training import StageTimer

    timer = StageTimer()
    start = time.perf_counter()
    for i in range(n):
        timer.on_step_begin(None, None, None)
        timer.clock.count("samples", mask.shape[0])
        timer.clock.count("tokens", int(mask.sum()))
        timer.on_pre_optimizer_step(None, None, None)
        timer.on_optimizer_step(None, None, None)
        timer.on_step_end(None, None, None)
        if i % 10 == 9:
            timer.take()
    return 1e6 * (time.perf_counter() - start) / n


def collate_ms(collate, rows: list[dict], n: int = 10) -> float:
    start = time.perf_counter()
    for _ in range(n):
        collate(rows)
    return 1000 * (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    cfg = RunConfig.from_yaml(args.config)
    cfg.train.save_steps = 0
    cfg.train.logging_steps = 10_000
    cfg.tracking.wandb = "disabled"
    loaded = load_model(cfg)
    dataset, _ = prepare_manifest(cfg.data.train_path, cfg.data, loaded.processor.tokenizer, loaded.family.default_prompt)
    collator = OcrCollator(loaded.processor, loaded.family)
    batch_size = cfg.train.per_device_batch_size
    batch = collator([dataset[i] for i in range(batch_size)])
    kit, bare = [], []
    for _ in range(args.rounds):
        kit.append(kit_step_time(copy.deepcopy(loaded.model), cfg, dataset, collator, args.steps, "/tmp/deepsynth-bench"))
        bare.append(bare_step_time(copy.deepcopy(loaded.model), batch, cfg.train.learning_rate, args.steps))
    k, b = statistics.median(kit), statistics.median(bare)
    print(f"batch {batch_size}, {args.steps} steps x {args.rounds} rounds, torch threads {torch.get_num_threads()}")
    print(f"kit step  {k * 1000:.1f} ms (Trainer + collator + clipping + paged_adamw_8bit)")
    print(f"bare step {b * 1000:.1f} ms (forward + backward + PagedAdamW8bit.step)")
    print(f"ratio kit/bare: {k / b:.3f}  (target <= 1.05)")
    rows = [dataset[i] for i in range(batch_size)]
    augmenting = AugmentingCollator(collator, Augmentations.from_config(AugmentConfig()), cfg.seed)
    plain_ms, aug_ms = [], []
    for _ in range(args.rounds):
        plain_ms.append(collate_ms(collator, rows))
        aug_ms.append(collate_ms(augmenting, rows))
    p, a = min(plain_ms), min(aug_ms)
    print(f"on-the-fly augmentation (augment defaults): collate {p:.1f} -> {a:.1f} ms per batch of {batch_size}, "
          f"+{a - p:.1f} ms = {100 * (a - p) / (k * 1000):.1f}% of the kit step")
    us = timing_us_per_step(batch["attention_mask"])
    print(f"stage timings per step (StageTimer, replayed): {us:.1f} us = {100 * us / (k * 1e6):.3f}% of the kit step "
          "(target <= 2%)")


if __name__ == "__main__":
    import record  # benchmarks/record.py, beside this script

    record.main("train_step_overhead", main)
