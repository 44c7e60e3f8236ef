"""The training job: load, evaluate, fine-tune, evaluate again, save a verified adapter, write the report.

Everything the run produces lands in its run directory (``runs.RunPaths``); the status in its
manifest says how it ended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import set_seed
from transformers.trainer_callback import PrinterCallback

from deepsynth_ocr import versions
from deepsynth_ocr.baselines import run_baselines
from deepsynth_ocr.collate import make_collator
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.augment import Augmentations, AugmentingCollator
from deepsynth_ocr.devices import device_name, host_peak_rss_gib, host_rss_gib
from deepsynth_ocr.errors import NonFiniteLoss, TrainingInterrupted, UserError
from deepsynth_ocr.evaluate import PeriodicEvalCallback, evaluate_dataset
from deepsynth_ocr.export import MERGED_RTOL
from deepsynth_ocr.models.adapters import restore_checkpoint_adapter, save_adapter
from deepsynth_ocr.models.backends import LoadedModel, checkpoint_source, load_model, require_transformers_for
from deepsynth_ocr.models.families import get_family
from deepsynth_ocr.ranks import refuse_unsupported_sharding, world
from deepsynth_ocr.report import write_report
from deepsynth_ocr.runs import Run, signal_handlers, start_run
from deepsynth_ocr.selection import CheckpointSelection
from deepsynth_ocr.tracking import Tracker
from deepsynth_ocr.training import (
    AugmentEpoch,
    KitTrainer,
    MetricsCallback,
    checkpoint_missing,
    last_complete_checkpoint,
    load_data,
    require_cuda_for_real_checkpoints,
    training_arguments,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    before: dict | None
    after: dict | None
    train_loss: float | None
    loaded: LoadedModel  # the fine-tuned model, processor and family, for further use in a notebook


def _sample_rows(eval_ds, rows: list[dict], n: int) -> list[dict]:
    """The first ``n`` rows for W&B (-1: all, 0: none); the decoded image wins over the JSONL's "image" (a path, or
    None for embedded images)."""
    return [{**r, "image": eval_ds[i]["image"]} for i, r in enumerate(rows if n < 0 else rows[:n])]


def _evaluate(loaded, eval_ds, cfg: RunConfig, run: Run, tracker: Tracker, tag: str, step: int) -> dict:
    out = run.paths.eval_file(tag)
    with run.stage(f"eval_{tag}"):
        loaded.for_inference()
        summary = evaluate_dataset(loaded, eval_ds, cfg.eval, out, tag)
    run.log_metrics({"step": step, "eval": tag, **summary})
    tracker.log({f"eval_{tag}/{k}": v for k, v in summary.items()}, step=step)
    tracker.log_samples(f"eval_{tag}/samples", _sample_rows(eval_ds, run.paths.read_jsonl(out),
                                                            cfg.eval.num_logged_samples), step=step)
    return summary


@contextlib.contextmanager
def stop_on_signals(trainer: KitTrainer):
    """SIGTERM / SIGINT during training ask for a checkpoint at the end of the current step, then a stop;
    a second signal acts as usual (SIGINT raises KeyboardInterrupt, SIGTERM ends the process)."""
    def handler(signum, frame):
        if trainer.stop_request is not None:  # the second signal acts as it would without the kit
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        trainer.stop_request = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint at the end of this step, then stopping "
                    "(a second signal stops at once)", trainer.stop_request)

    with signal_handlers(handler):
        yield


def _keep_best(selection: CheckpointSelection, loaded: LoadedModel, checkpoints: Path, step: int, cfg: RunConfig) -> str:
    """With train.keep_best, put the best-ranked checkpoint's adapter in the model (what is evaluated 'after' and
    saved) unless the last step scored at least as well; returns where the run's adapter comes from."""
    best = selection.best_checkpoint(checkpoints) if cfg.train.keep_best else None
    last = selection.scores.get(step)
    if best is None or selection.best[0] == step or (last is not None and last["rank_value"] <= selection.best[1]):
        return f"step {step} (the last)"
    restore_checkpoint_adapter(loaded.model, best)
    log.info("train.keep_best: the run's adapter is %s (%s %.4f), not step %d's", best.name, selection.metric,
             abs(selection.best[1]), step)
    return best.name


def checkpointing_mode(loaded: LoadedModel, cfg: RunConfig) -> str:
    """What gradient checkpointing the run uses, for the manifest (the two backends differ)."""
    if not cfg.model.gradient_checkpointing:
        return "off"
    if loaded.backend == "unsloth":
        return "unsloth (offloaded, reentrant)"
    return "non-reentrant (torch.utils.checkpoint)"


def checked_start_checkpoint(cfg: RunConfig) -> Path | None:
    """``train.resume_from`` as a complete checkpoint before ``train.max_steps``, or None when it is unset."""
    if not cfg.train.resume_from:
        return None
    path = Path(cfg.train.resume_from)
    if not path.is_dir():
        raise UserError(f"train.resume_from: {path} is not a directory (give a checkpoint, e.g. runs/<run>/checkpoints/checkpoint-200)")
    if missing := checkpoint_missing(path):
        raise UserError(f"train.resume_from: {path} is not a complete checkpoint (no {', '.join(missing)})")
    step = json.loads((path / "trainer_state.json").read_text()).get("global_step", 0)
    if step >= cfg.train.max_steps:
        raise UserError(f"train.resume_from: {path} is at step {step}, and train.max_steps is {cfg.train.max_steps}: "
                        f"raise train.max_steps above {step} to train on from it")
    return path


def train(cfg: RunConfig, run_dir: str | Path | None = None,
          on_periodic: Callable[[dict, int], None] | None = None) -> TrainResult:
    """Fine-tune as ``cfg`` says into ``run_dir`` (default: a new ``<output_root>/<name>_<timestamp>``).

    ``on_periodic(summary, step)`` sees each periodic evaluation (a sweep's pruner); raising
    ``errors.RunPruned`` there ends the run with status ``pruned``.
    """
    cfg.validate()
    require_transformers_for(get_family(cfg.model.family))
    require_cuda_for_real_checkpoints(cfg)
    refuse_unsupported_sharding()
    start_from = checked_start_checkpoint(cfg)  # before anything loads or a run directory is made
    tracker = None
    try:
        with start_run(cfg, run_dir) as run:
            main = run.is_main
            world_size = world()[1]
            run.update(version_mismatches=versions.warn_mismatches(), world_size=world_size,
                       global_batch=cfg.train.per_device_batch_size * cfg.train.gradient_accumulation_steps * world_size,
                       progress={**run.manifest.get("progress", {}), "max_steps": cfg.train.max_steps})
            set_seed(cfg.seed)
            with run.stage("load"):
                loaded = load_model(cfg)
            if loaded.model.device.type != "cuda":  # what the weights hold, apart from training's peaks
                run.update(memory={"rss_after_load_gib": round(host_rss_gib(), 3),
                                   "peak_rss_load_gib": round(host_peak_rss_gib(), 3)})
            run.update(image_processor=type(getattr(loaded.processor, "image_processor", loaded.processor)).__name__,
                       gradient_checkpointing=checkpointing_mode(loaded, cfg),
                       allocator=os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                       backend=loaded.backend, backend_reason=loaded.backend_reason, device=device_name(loaded.model.device),
                       dtype=str(loaded.model.dtype).removeprefix("torch."), dtype_reason=loaded.dtype_reason,
                       checkpoint=checkpoint_source(cfg.model) or "random (built in code)",
                       parameters={"frozen": loaded.frozen_params, "trainable": loaded.trainable_params,
                                   "trained": loaded.trained, "language_model_precision": loaded.lm_precision})
            train_ds, eval_ds = load_data(cfg, loaded.processor.tokenizer, loaded.family,
                                          run.paths.data_report if main else None)
            tracking = cfg.tracking if main else replace(cfg.tracking, wandb="disabled", tensorboard=False)
            tracker = Tracker(run.paths.wandb, tracking, run.dir.name, cfg.to_dict(), run.paths.tensorboard)
            # Under a launcher only the main process evaluates; the others wait for it at the first collective.
            do_eval = main and cfg.eval.enabled and eval_ds is not None
            before = _evaluate(loaded, eval_ds, cfg, run, tracker, "before", 0) if do_eval else None
            if do_eval:
                for name, summary in run_baselines(eval_ds, cfg.eval, run.paths.eval_dir).items():
                    run.log_metrics({"step": 0, "eval": f"baseline_{name}", **summary})
                    tracker.log({f"baseline_{name}/{k}": v for k, v in summary.items()}, step=0)

            first: list = []  # (time, step) of this attempt's first log record: the pace for an ETA
            json_logs = cfg.log.format == "json"

            def log_train(record: dict) -> None:
                run.log_metrics(record)
                if "loss" in record:
                    now, step = time.time(), record["step"]
                    if not first:
                        first.append((now, step))
                    pace = (now - first[0][0]) / (step - first[0][1]) if step > first[0][1] else None
                    run.update(progress={"step": step, "max_steps": cfg.train.max_steps, "s_per_step": pace,
                                         "updated": round(now, 1)})
                tracker.log({f"train/{k}": v for k, v in record.items() if k not in ("step", "epoch")},
                            step=record["step"])
                if json_logs:
                    log.info("step %d%s", record["step"], "" if "loss" in record else ": training done",
                             extra={"fields": record})

            collator = make_collator(loaded.processor, loaded.family)
            callbacks = [MetricsCallback(log_train)]
            train_collator = collator
            if cfg.augment.enabled:
                train_collator = AugmentingCollator(collator, Augmentations.from_config(cfg.augment), cfg.seed)
                callbacks.append(AugmentEpoch(train_collator))
            trainer = KitTrainer(model=loaded.model, args=training_arguments(cfg, run.paths.checkpoints),
                                 train_dataset=train_ds, data_collator=train_collator, callbacks=callbacks)
            if json_logs:  # without a progress bar the Trainer prints each record; the kit logs it as JSON instead
                trainer.remove_callback(PrinterCallback)
            selection = None
            if do_eval and cfg.eval.every_steps:
                t = cfg.train
                selection = CheckpointSelection(t.early_stopping_patience, t.early_stopping_min_delta)

                def log_periodic(summary: dict, step: int) -> None:
                    run.log_metrics({"step": step, "eval": "periodic", **summary})
                    tracker.log({f"eval_periodic/{k}": v for k, v in summary.items()}, step=step)
                    selection.observe(summary, step)
                    if on_periodic is not None:
                        on_periodic(summary, step)

                periodic = PeriodicEvalCallback(loaded, eval_ds, cfg.eval, log_periodic)
                trainer.add_callback(periodic)
                trainer.add_callback(selection)  # after the evaluation of the same step, before the save
            checkpoints = run.paths.checkpoints
            resume = last_complete_checkpoint(checkpoints) if cfg.train.resume else start_from
            if cfg.train.resume:
                log.info("resuming from %s", resume or "scratch (no checkpoint found)")
            elif start_from:
                log.info("starting from %s (train.resume_from)", start_from)
            with run.stage("train"), stop_on_signals(trainer):
                loaded.for_training()
                output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            if (steady := trainer.step_timer.steady()) is not None:  # after warm-up, checkpoint saves left out
                run.timing("steady_s_per_step", steady)
            run.update(memory={**run.manifest.get("memory", {}), **trainer.step_timer.run_peaks()})
            step = trainer.state.global_step
            if trainer.nonfinite is not None:
                what, bad_step = trainer.nonfinite
                last = last_complete_checkpoint(checkpoints)
                raise NonFiniteLoss(what, bad_step, str(last) if last else None)
            if trainer.stop_request is not None:
                raise TrainingInterrupted(trainer.stop_request, step, str(checkpoints / f"checkpoint-{step}"), str(run.dir))
            if selection is not None:
                run.timing("eval_periodic_s", periodic.seconds)  # included in train_s
                run.update(selection=selection.report(step, _keep_best(selection, loaded, checkpoints, step, cfg)))
            after = _evaluate(loaded, eval_ds, cfg, run, tracker, "after", step) if do_eval else None

            if not main:
                return TrainResult(run.dir, None, None, output.training_loss, loaded)
            fixed_batch = collator.verification_batch([train_ds[i] for i in range(min(2, len(train_ds)))])
            saved = run.paths.adapter if cfg.lora.enabled else run.paths.model
            with run.stage("save"):
                if cfg.lora.enabled:
                    # Exact on the hf backend; Unsloth's patched LoRA forward gets the 16-bit rounding bound.
                    rtol = 0.0 if loaded.backend == "hf" else MERGED_RTOL.get(loaded.model.dtype, 0.0)
                    save_adapter(loaded.model, saved, fixed_batch, rtol=rtol)
                else:
                    loaded.model.save_pretrained(saved)
                loaded.processor.save_pretrained(saved)
            run.update(metrics={"before": before, "after": after, "train_loss": output.training_loss, "steps": step})
    finally:
        if tracker is not None:
            tracker.finish()
    write_report(run.dir)
    return TrainResult(run.dir, before, after, output.training_loss, loaded)
