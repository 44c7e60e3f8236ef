"""``run(cfg)``: load, evaluate, fine-tune, evaluate again, save a verified adapter.

Everything the run produces lands in its run directory (see ``runs.py``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from deepsynth_ocr import versions
from deepsynth_ocr.baselines import run_baselines
from deepsynth_ocr.collate import make_collator
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.prepare import PrepareError, prepare_manifest, write_report
from deepsynth_ocr.devices import to_model, torch_dtype
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.evaluate import PeriodicEvalCallback, evaluate
from deepsynth_ocr.export import MERGED_RTOL
from deepsynth_ocr.models.adapters import ADAPTER_WEIGHTS, copy_adapter_weights, save_adapter
from deepsynth_ocr.models.backends import LoadedModel, checkpoint_source, load_model, require_transformers_for
from deepsynth_ocr.models.families import get_family
from deepsynth_ocr.report import write_report as write_html_report
from deepsynth_ocr.runs import Run
from deepsynth_ocr.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    before: dict | None
    after: dict | None
    train_loss: float | None
    loaded: LoadedModel  # the fine-tuned model, processor and family, for further use in a notebook


def load_data(cfg: RunConfig, tokenizer, family, run_dir: Path):
    """Validated train and eval datasets; rejections are reported, written and never silent."""
    train_ds, train_report = prepare_manifest(cfg.data.train_path, cfg.data, tokenizer, family.default_prompt,
                                                 prepare_cfg=cfg.prepare)
    reports = [train_report]
    if cfg.data.eval_path:
        eval_ds, eval_report = prepare_manifest(cfg.data.eval_path, cfg.data, tokenizer, family.default_prompt,
                                                   split="validation", prepare_cfg=cfg.prepare)
        reports.append(eval_report)
    elif cfg.data.eval_size:
        if cfg.data.eval_size >= len(train_ds):
            raise ValueError(f"data.eval_size={cfg.data.eval_size} leaves no training rows out of {len(train_ds)}")
        split = train_ds.train_test_split(test_size=cfg.data.eval_size, seed=cfg.seed)
        train_ds, eval_ds = split["train"], split["test"]
    else:
        eval_ds = None
    for report in reports:
        (log.warning if report.rejected else log.info)("data %s", report.summary())
    write_report(reports, run_dir / "data_report.json")
    return train_ds, eval_ds


class MetricsCallback(TrainerCallback):
    """Mirror the trainer's logs into metrics.jsonl and W&B."""

    def __init__(self, run: Run, tracker: Tracker):
        self.run, self.tracker = run, tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        self.run.log_metrics(record)
        self.tracker.log({f"train/{k}": v for k, v in logs.items()}, step=state.global_step)


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


def training_arguments(cfg: RunConfig, run_dir: Path) -> TrainingArguments:
    t = cfg.train
    cuda = torch.cuda.is_available()
    dtype = torch_dtype(cfg.model.dtype)
    if t.optim.startswith("paged_") and not cuda:
        log.warning("optimizer %s: no CUDA, so bitsandbytes keeps the 8-bit states unpaged in CPU memory", t.optim)
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
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


def _sample_rows(eval_ds, path: Path, n: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[: n or None]]
    # The decoded image wins over the JSONL's "image" (a path, or None for embedded images).
    return [{**r, "image": eval_ds[i]["image"]} for i, r in enumerate(rows)]


def _evaluate(loaded, eval_ds, cfg: RunConfig, run: Run, tracker: Tracker, tag: str, step: int) -> dict:
    start = time.time()
    out = run.dir / "eval" / f"{tag}.jsonl"
    loaded.for_inference()
    summary = evaluate(loaded.model, loaded.processor, loaded.family, eval_ds, cfg.eval, out, tag)
    run.timing(f"eval_{tag}_s", time.time() - start)
    run.log_metrics({"step": step, "eval": tag, **summary})
    tracker.log({f"eval_{tag}/{k}": v for k, v in summary.items()}, step=step)
    tracker.log_samples(f"eval_{tag}/samples", _sample_rows(eval_ds, out, cfg.eval.num_logged_samples), step=step)
    return summary


def run(cfg: RunConfig, run_dir: str | Path | None = None) -> RunResult:
    cfg.validate()
    require_transformers_for(get_family(cfg.model.family))
    require_cuda_for_real_checkpoints(cfg)
    run_ = Run.create(cfg, run_dir)
    tracker = None
    try:
        run_.update(version_mismatches=versions.warn_mismatches())
        set_seed(cfg.seed)
        start = time.time()
        loaded = load_model(cfg)
        run_.update(backend=loaded.backend, backend_reason=loaded.backend_reason,
                    dtype=str(loaded.model.dtype).removeprefix("torch."), dtype_reason=loaded.dtype_reason,
                    checkpoint=checkpoint_source(cfg.model) or "random (built in code)",
                    parameters={"frozen": loaded.frozen_params, "trainable": loaded.trainable_params,
                                "trained": loaded.trained, "language_model_precision": loaded.lm_precision})
        run_.timing("load_s", time.time() - start)
        train_ds, eval_ds = load_data(cfg, loaded.processor.tokenizer, loaded.family, run_.dir)
        tracker = Tracker(run_.dir, cfg.tracking, run_.dir.name, cfg.to_dict())
        do_eval = cfg.eval.enabled and eval_ds is not None
        before = _evaluate(loaded, eval_ds, cfg, run_, tracker, "before", 0) if do_eval else None
        if do_eval:
            for name, summary in run_baselines(eval_ds, cfg.eval, run_.dir / "eval").items():
                run_.log_metrics({"step": 0, "eval": f"baseline_{name}", **summary})
                tracker.log({f"baseline_{name}/{k}": v for k, v in summary.items()}, step=0)

        collator = make_collator(loaded.processor, loaded.family)
        trainer = KitTrainer(model=loaded.model, args=training_arguments(cfg, run_.dir), train_dataset=train_ds,
                          data_collator=collator, callbacks=[MetricsCallback(run_, tracker)])
        if do_eval and cfg.eval.every_steps:
            def log_periodic(summary: dict, step: int) -> None:
                run_.log_metrics({"step": step, "eval": "periodic", **summary})
                tracker.log({f"eval_periodic/{k}": v for k, v in summary.items()}, step=step)

            periodic = PeriodicEvalCallback(loaded, eval_ds, cfg.eval, log_periodic)
            trainer.add_callback(periodic)
        resume = get_last_checkpoint(str(run_.dir / "checkpoints")) if cfg.train.resume and (run_.dir / "checkpoints").is_dir() else None
        if cfg.train.resume:
            log.info("resuming from %s", resume or "scratch (no checkpoint found)")
        start = time.time()
        loaded.for_training()
        output = trainer.train(resume_from_checkpoint=resume)
        run_.timing("train_s", time.time() - start)
        if do_eval and cfg.eval.every_steps:
            run_.timing("eval_periodic_s", periodic.seconds)  # included in train_s
        step = trainer.state.global_step
        after = _evaluate(loaded, eval_ds, cfg, run_, tracker, "after", step) if do_eval else None

        fixed_batch = collator([train_ds[i] for i in range(min(2, len(train_ds)))])
        if cfg.lora.enabled:
            # Exact on the hf backend; Unsloth's patched LoRA forward gets the 16-bit rounding bound.
            rtol = 0.0 if loaded.backend == "hf" else MERGED_RTOL.get(loaded.model.dtype, 0.0)
            save_adapter(loaded.model, run_.dir / "adapter", fixed_batch, rtol=rtol)
        else:
            loaded.model.save_pretrained(run_.dir / "model")
        loaded.processor.save_pretrained(run_.dir / ("adapter" if cfg.lora.enabled else "model"))
        run_.update(metrics={"before": before, "after": after, "train_loss": output.training_loss, "steps": step})
        run_.finish("ok")
        write_html_report(run_.dir)
        return RunResult(run_.dir, before, after, output.training_loss, loaded)
    except BaseException as e:
        if isinstance(e, (UserError, FileNotFoundError, PrepareError)):
            log.error("run failed: %s", e)  # the message says what to fix; a traceback would bury it
        else:
            log.exception("run failed")
        run_.finish("failed", e)
        raise
    finally:
        if tracker is not None:
            tracker.finish()
