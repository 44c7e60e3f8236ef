"""Training pieces of plain values: the Trainer subclass, its arguments, the data a run trains on, callbacks.

No run directory here: ``jobs.train`` composes these and owns where everything is written.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.data.prepare import prepare_manifest, write_data_report
from deepsynth_ocr.devices import host_peak_rss_gib, to_model, torch_dtype
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.models.adapters import ADAPTER_WEIGHTS, restore_checkpoint_adapter
from deepsynth_ocr.models.families import get_family
from deepsynth_ocr.timing import StageClock

log = logging.getLogger(__name__)


def load_data(cfg: RunConfig, tokenizer, family, report_path: Path | None):
    """Validated train and eval datasets; rejections are logged, written to ``report_path`` (when given) and
    never silent."""
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
    if report_path is not None:
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

    # Set by the job (a signal) or by the checks below; read by StopGuard at the end of each step.
    stop_request: str | None = None  # "SIGTERM" / "SIGINT": save a checkpoint, then stop
    nonfinite: tuple[str, int] | None = None  # ("loss" | "gradient norm", step): stop, save nothing more

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(StopGuard(self))
        self.step_timer = StageTimer()
        self.add_callback(self.step_timer)

    def _prepare_inputs(self, inputs):
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        if isinstance(mask, torch.Tensor):
            self.step_timer.clock.count("samples", mask.shape[0])
            self.step_timer.clock.count("tokens", int(mask.sum()))
        return to_model(inputs, self.model)

    def log(self, logs: dict, *args, **kwargs):
        # A training record (the loss) gets the interval's stage times, so metrics.jsonl, the console and
        # W&B all carry them.
        if "loss" in logs:
            logs.update(self.step_timer.take())
        return super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Trainer's logging_nan_inf_filter hides a NaN loss from the logs; the kit stops on it instead.
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.nonfinite is None and not torch.isfinite(loss).all():
            self.nonfinite = ("loss", self.state.global_step + 1)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        norm = super()._get_grad_norm(model, grad_norm)
        if self.nonfinite is None and norm is not None and not torch.isfinite(torch.as_tensor(norm)).all():
            self.nonfinite = ("gradient norm", self.state.global_step + 1)
        return norm

    def _save_checkpoint(self, model, trial):
        if self.nonfinite is None:  # a checkpoint after a NaN would be the one a resume picks
            with self.step_timer.clock.stage("checkpoint"):
                super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with cpu_map_location(self.args.device):
            super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and (n := restore_paged_states(self.optimizer)):
            log.info("resume: %d paged optimizer states restored as paged (or placed beside their parameters)", n)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        if not hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / ADAPTER_WEIGHTS
        if not path.is_file():
            raise UserError(f"train.resume: {resume_from_checkpoint} has no {ADAPTER_WEIGHTS}; delete that checkpoint "
                            "directory to resume from the one before it")
        n = restore_checkpoint_adapter(model, resume_from_checkpoint)
        log.info("resume: %d adapter tensors restored by exact key from %s", n, path)


def restore_paged_states(optimizer) -> int:
    """Make the states of a reloaded paged bitsandbytes optimizer usable again; returns how many were fixed.

    bitsandbytes pages an 8-bit state (``paged_adamw_8bit``, tensors of 1e5 elements or more: a LoRA A of a
    dense DeepSeek-OCR-2 MLP is 16 x 6848) in CUDA managed memory and flags it ``is_paged``. The flag is a Python
    attribute, and ``torch.save`` / ``torch.load`` keep it, but the loaded tensor is ordinary host memory: the
    optimizer's ``to_gpu`` then skips it and the next step prefetches it as managed memory, which fails (or, on
    hosts with HMM, steps on host memory). So a flagged state becomes a real paged buffer again on a GPU, and on a
    CPU an ordinary tensor beside its parameter."""
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
    fixed = 0
    for group in inner.param_groups:
        for p in group["params"]:
            state = inner.state.get(p, {})
            for key, value in list(state.items()):
                if not (isinstance(value, torch.Tensor) and getattr(value, "is_paged", False)):
                    continue
                if p.device.type == "cuda":
                    import bitsandbytes.functional as F

                    paged = F.get_paged(*value.shape, dtype=value.dtype, device=p.device)
                    paged.copy_(value)
                    inner.page_mng.paged_tensors.append(paged)
                    state[key] = paged
                else:
                    state[key] = value.detach().to(p.device, copy=True)  # a new tensor: no flag
                fixed += 1
    return fixed


@contextlib.contextmanager
def cpu_map_location(device: torch.device):
    """Under several CPU processes Trainer loads the optimizer with ``map_location=self.args.device``
    (transformers/trainer.py, ``_load_optimizer_and_scheduler``: the device when world_size > 1), which is
    ``cpu:<rank>``; torch.serialization cannot restore a storage tagged ``cpu:0`` and the resume fails. While the
    block runs, ``torch.load`` gets plain ``cpu`` for such a device; nothing else changes."""
    if device.type != "cpu" or device.index is None:
        yield
        return
    load = torch.load

    def plain_cpu(*args, **kwargs):
        if kwargs.get("map_location") == device:
            kwargs["map_location"] = "cpu"
        return load(*args, **kwargs)

    torch.load = plain_cpu
    try:
        yield
    finally:
        torch.load = load


class StopGuard(TrainerCallback):
    """Ends training cleanly at a step boundary: after a stop request with a checkpoint of that step, after a
    non-finite loss or gradient norm without one (the previous complete checkpoint stays the last)."""

    def __init__(self, trainer: KitTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self._agree(state.global_step)
        if self.trainer.nonfinite is not None:
            control.should_training_stop, control.should_save = True, False
        elif self.trainer.stop_request is not None:
            control.should_training_stop = control.should_save = True
        return control

    def _agree(self, step: int) -> None:
        """Under several processes every rank stops at the same step: a signal that reached one rank a step before
        another would leave the other waiting in the next step's gradient all-reduce (or the checkpoint's barrier)
        for ever. One MAX all-reduce of two flags per step, on the process group's own device."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        flags = torch.tensor([self.trainer.stop_request is not None, self.trainer.nonfinite is not None],
                             dtype=torch.int32, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[1] and self.trainer.nonfinite is None:
            self.trainer.nonfinite = ("loss or gradient norm (on another rank)", step)
        elif flags[0] and self.trainer.stop_request is None:
            self.trainer.stop_request = "SIGTERM"  # on another rank; what each rank's handler names
            log.warning("a stop signal reached another rank: saving a checkpoint at the end of this step, then stopping")


class AugmentEpoch(TrainerCallback):
    """Tells an ``AugmentingCollator`` which epoch starts (restored from the checkpoint on a resume), before the
    epoch's data loader (and its workers, which copy the collator) starts."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


class StageTimer(TrainerCallback):
    """Where a training step's time goes, per logging interval: ``time/forward_backward_s``,
    ``time/optimizer_s``, ``time/checkpoint_s``, ``time/between_steps_s`` (loading and collating the next
    batch, logging, a periodic evaluation), ``samples_per_s`` and ``tokens_per_s`` (non-padding tokens),
    and on a GPU the peak allocated / reserved memory of the interval; on a CPU the process's peak resident
    memory of the interval (``mem/peak_rss_gib``).
    On a GPU the split between forward, backward and optimizer is host time (kernels run asynchronously; no synchronisation is added).
    ``steady()`` is the median step (forward, backward, optimizer) once the first ``WARMUP`` steps
    (compilation, allocator growth, data-loader start-up) are past, checkpoint saves left out."""

    WARMUP = 10

    def __init__(self):
        self.clock = StageClock()
        self.seconds: list[float] = []
        self._begin = self._pre_optimizer = self._end = None
        self._run_peaks: dict[str, float] = {}  # the whole run's maxima, kept across the per-interval resets

    def on_train_begin(self, args, state, control, **kwargs):
        if not torch.cuda.is_available():
            host_peak_rss_gib(reset=True)  # the first interval's peak is training's, not loading's

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin = time.perf_counter()
        if self._end is not None:
            self.clock.add("between_steps", self._begin - self._end)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._pre_optimizer = time.perf_counter()
        if self._begin is not None:
            self.clock.add("forward_backward", self._pre_optimizer - self._begin)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._pre_optimizer is not None:
            self.clock.add("optimizer", time.perf_counter() - self._pre_optimizer)

    def on_step_end(self, args, state, control, **kwargs):
        self._end = time.perf_counter()
        if self._begin is not None:
            self.seconds.append(self._end - self._begin)
        self._begin = self._pre_optimizer = None

    def take(self) -> dict:
        out = self.clock.take()
        if "time/checkpoint_s" in out:  # the save happened between two steps: counted once, as itself
            out["time/between_steps_s"] = round(max(0.0, out.get("time/between_steps_s", 0.0) - out["time/checkpoint_s"]), 4)
        out.update(self._window_peaks(reset=True))
        return out

    def _window_peaks(self, reset: bool) -> dict:
        if torch.cuda.is_available():
            peaks = {"mem/peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                     "mem/peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}
            if reset:
                torch.cuda.reset_peak_memory_stats()
        else:
            peaks = {"mem/peak_rss_gib": round(host_peak_rss_gib(reset=reset), 3)}
        for key, value in peaks.items():
            self._run_peaks[key] = max(value, self._run_peaks.get(key, 0.0))
        return peaks

    def run_peaks(self) -> dict:
        """The training run's peak memory (every logging interval, and the steps after the last one), for the
        manifest: ``train_peak_allocated_gib`` / ``train_peak_reserved_gib`` on a GPU, ``train_peak_rss_gib`` on a
        CPU. The per-interval resets make the allocator's own maximum at the end a post-training figure."""
        self._window_peaks(reset=False)
        return {f"train_{key.removeprefix('mem/')}": value for key, value in self._run_peaks.items()}

    def steady(self) -> float | None:
        after = self.seconds[self.WARMUP:]
        return round(statistics.median(after), 4) if after else None


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def checkpoint_missing(path: Path) -> list[str]:
    """The files a resume reads that ``path`` lacks (empty for a complete checkpoint)."""
    weights = [ADAPTER_WEIGHTS, "model.safetensors"]
    missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
    if not any((path / w).is_file() for w in weights):
        missing.append(" or ".join(weights))
    return missing


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest ``checkpoint-N`` that holds everything a resume reads; a newer one cut short by a kill is
    skipped, and the log says so."""
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True) if checkpoints.is_dir() else []
    for path in found:
        missing = checkpoint_missing(path)
        if not missing:
            return path
        log.warning("resume: %s is incomplete (no %s), probably cut short by a kill; using the one before it",
                    path, ", ".join(missing))
    return None


def dataloader_workers(cfg: RunConfig) -> int:
    if cfg.train.dataloader_workers >= 0:
        return cfg.train.dataloader_workers
    return 2 if torch.cuda.is_available() else 0


def require_cuda_for_real_checkpoints(cfg: RunConfig) -> None:
    """A real DeepSeek-OCR checkpoint (3 B parameters) is never trained on a CPU: say so before anything starts."""
    if get_family(cfg.model.family).tiny_geometry is None and not torch.cuda.is_available() and not cfg.train.allow_cpu:
        why = "this machine has none"
        if torch.version.cuda:
            why = f"this torch (a CUDA {torch.version.cuda} build) sees none (is the NVIDIA driver new enough for it?)"
        raise UserError(f"model.family {cfg.model.family!r} ({cfg.model.name_or_path}) trains on a CUDA GPU and {why}. "
                        "Run this recipe on a GPU machine, or configs/smoke.yaml (the tiny model) here (train.allow_cpu: true runs it "
                        "anyway, at minutes per step)")


def training_arguments(cfg: RunConfig, checkpoints: Path) -> TrainingArguments:
    t = cfg.train
    cuda = torch.cuda.is_available()
    dtype = torch_dtype(cfg.model.dtype)
    if cuda and dtype == torch.float16 and not cfg.lora.enabled:  # dtype: auto on a T4 resolves to float16
        raise ConfigError(f"model.dtype: auto picks float16 on {torch.cuda.get_device_name()}, and full fine-tuning "
                          "in float16 fails (torch refuses to unscale float16 gradients); use LoRA (lora.enabled: "
                          "true) or a GPU that computes bfloat16")
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
        train_sampling_strategy=t.sampling,
        disable_tqdm=cfg.log.format == "json",  # JSON logs: the step records are log lines, not a progress bar
    )
