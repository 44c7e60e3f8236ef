"""Training pieces of plain values: the Trainer subclass, its arguments, the data a run trains on, callbacks.

No run directory here: ``jobs.train`` composes these and owns where everything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.data.prepare import prepare_manifest, write_data_report
from deepsynth_ocr.devices import to_model, torch_dtype
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.models.adapters import ADAPTER_WEIGHTS, copy_adapter_weights
from deepsynth_ocr.models.families import get_family

log = logging.getLogger(__name__)


def load_data(cfg: RunConfig, tokenizer, family, report_path: Path):
    """Validated train and eval datasets; rejections are logged, written to ``report_path`` and never silent."""
    train_ds, train_report = prepare_manifest(cfg.data.train_path, cfg.data, tokenizer, family.default_prompt,
                                                 prepare_cfg=cfg.prepare)
    reports = [train_report]
    if cfg.data.eval_path:
        eval_ds, eval_report = prepare_manifest(cfg.data.eval_path, cfg.data, tokenizer, family.default_prompt,
                                                   split="validation", prepare_cfg=cfg.prepare)
        reports.append(eval_report)
    elif cfg.data.eval_size:
        if cfg.data.eval_size >= len(train_ds):
            raise ConfigError(f"data.eval_size={cfg.data.eval_size} leaves no training rows out of {len(train_ds)}")
        split = train_ds.train_test_split(test_size=cfg.data.eval_size, seed=cfg.seed)
        train_ds, eval_ds = split["train"], split["test"]
    else:
        eval_ds = None
    for report in reports:
        (log.warning if report.rejected else log.info)("data %s", report.summary())
    write_data_report(reports, report_path)
    return train_ds, eval_ds


class MetricsCallback(TrainerCallback):
    """Hand each of the trainer's log records to ``log_fn(record)`` (the job writes it to metrics.jsonl and W&B)."""

    def __init__(self, log_fn: Callable[[dict], None]):
        self.log_fn = log_fn

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.log_fn({"step": state.global_step, "epoch": state.epoch, **logs})


class KitTrainer(Trainer):
    """``Trainer`` with the kit's batch placement and a resume that restores the adapter by exact key.

    Trainer resumes a PEFT model through ``model.load_adapter``, which hits the deepseek_ocr2 key
    renaming (see ``models/adapters.py``): it restores none of the adapter's tensors and warns nothing,
    while the optimizer, scheduler, RNG state and data position do resume. The override loads the
    checkpoint's adapter file by exact key and fails on any key that does not land; the rest of the
    resume is Trainer's own.
    """

    def _prepare_inputs(self, inputs):
        return to_model(inputs, self.model)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        if not hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / ADAPTER_WEIGHTS
        if not path.is_file():
            raise UserError(f"train.resume: {resume_from_checkpoint} has no {ADAPTER_WEIGHTS}; delete that checkpoint "
                            "directory to resume from the one before it")
        n = copy_adapter_weights(model, load_file(str(path)), "default", str(path))
        log.info("resume: %d adapter tensors restored by exact key from %s", n, path)


def dataloader_workers(cfg: RunConfig) -> int:
    if cfg.train.dataloader_workers >= 0:
        return cfg.train.dataloader_workers
    return 2 if torch.cuda.is_available() else 0


def require_cuda_for_real_checkpoints(cfg: RunConfig) -> None:
    """A real DeepSeek-OCR checkpoint (3 B parameters) is never trained on a CPU: say so before anything starts."""
    if get_family(cfg.model.family).tiny_geometry is None and not torch.cuda.is_available():
        why = "this machine has none"
        if torch.version.cuda:
            why = f"this torch (a CUDA {torch.version.cuda} build) sees none: is the NVIDIA driver new enough for it?"
        raise UserError(f"model.family {cfg.model.family!r} ({cfg.model.name_or_path}) trains on a CUDA GPU and {why} "
                        "Run this recipe on a GPU machine, or configs/smoke.yaml (the tiny model) here")


def training_arguments(cfg: RunConfig, checkpoints: Path) -> TrainingArguments:
    t = cfg.train
    cuda = torch.cuda.is_available()
    dtype = torch_dtype(cfg.model.dtype)
    if t.optim.startswith("paged_") and not cuda:
        log.warning("optimizer %s: no CUDA, so bitsandbytes keeps the 8-bit states unpaged in CPU memory", t.optim)
    return TrainingArguments(
        output_dir=str(checkpoints),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler,
        optim=t.optim,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or None,
        save_total_limit=t.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        use_cpu=not cuda,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=dataloader_workers(cfg),
        disable_tqdm=False,
    )
