"""Run configuration: one dataclass per concern, help text on every field, YAML in and out.

Every user entry point (notebook parameters cell, ``deepsynth-ocr`` CLI, papermill) builds one
``RunConfig``. Notebook parameters use flat names ``<section>_<field>`` (``train_learning_rate``)
so they stay plain literals; ``RunConfig.from_flat`` maps them back. Owns the one parser of
``section.field=value`` overrides (``RunConfig.load``) and of command-line values (``parse_value``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from deepsynth_ocr.errors import UserError


class ConfigError(UserError):
    """A config value is invalid; the message names the field (``section.field``)."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


ATTENTION_KERNELS = ("", "sdpa", "eager", "flash_attention_2")


@dataclass
class ModelConfig:
    family: str = _f("tiny", "Checkpoint family: 'tiny' (miniature DeepSeek-OCR-2 for CPU), 'deepseek-ocr-2', 'deepseek-ocr' (v1, remote code).")
    name_or_path: str = _f(
        "", "Hub id or local checkpoint directory. For 'tiny', empty loads the pretrained tiny base bundled in "
        "data/tiny-base (checked against its manifest) and 'random' builds a randomly initialised model in code."
    )
    revision: str = _f("", "Hub revision (commit, tag or branch) to load; empty for the default branch.")
    backend: str = _f("auto", "'auto' (unsloth when importable with CUDA, else hf), 'hf' or 'unsloth'.")
    dtype: str = _f(
        "auto", "Weight and compute dtype: 'auto' (bfloat16 on GPUs that compute it natively, float16 on older GPUs "
        "such as the T4, float32 on a CPU), 'float32', 'bfloat16' or 'float16'."
    )
    load_in_4bit: bool = _f(False, "Quantise the language model to 4-bit NF4 (QLoRA) with bitsandbytes.")
    load_in_8bit: bool = _f(False, "Quantise the language model to 8-bit (LLM.int8) with bitsandbytes instead: about twice "
                            "4-bit's weight memory, closer to 16-bit outputs. Not with load_in_4bit.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    attn_implementation: str = _f(
        "", "Attention kernel passed to from_pretrained: '' (the library's choice: sdpa where the model supports it), "
        "'sdpa', 'eager' (plain PyTorch; the reference when a kernel is suspect) or 'flash_attention_2' (a CUDA GPU "
        "and the flash-attn package; refused before loading anywhere else)."
    )

    def validate(self) -> None:
        from deepsynth_ocr.models.families import FAMILIES

        _check(self.family in FAMILIES, "model.family", f"must be one of {sorted(FAMILIES)}, got {self.family!r}")
        _check(self.backend in ("auto", "hf", "unsloth"), "model.backend", f"must be auto, hf or unsloth, got {self.backend!r}")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "model.dtype",
               f"must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        _check(
            self.family == "tiny" or bool(self.name_or_path),
            "model.name_or_path",
            f"family {self.family!r} needs a hub id or local checkpoint directory",
        )
        _check(self.attn_implementation in ATTENTION_KERNELS, "model.attn_implementation",
               f"must be one of {ATTENTION_KERNELS}, got {self.attn_implementation!r}")
        _check(not (self.load_in_4bit and self.load_in_8bit), "model.load_in_8bit",
               "and model.load_in_4bit are both true: choose one quantisation")

    @property
    def quantised(self) -> str:
        """'4bit', '8bit' or '' (weights as model.dtype says)."""
        return "4bit" if self.load_in_4bit else "8bit" if self.load_in_8bit else ""


@dataclass
class LoraConfig:
    enabled: bool = _f(True, "Train LoRA adapters on the language model; false means full fine-tuning.")
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(16, "LoRA alpha (scaling = alpha / r).")
    dropout: float = _f(0.0, "Dropout on the LoRA branch.")

    def validate(self) -> None:
        _check(self.r > 0, "lora.r", f"must be > 0, got {self.r}")
        _check(self.alpha > 0, "lora.alpha", f"must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class DataConfig:
    train_path: str = _f(
        "data/smoke-domain/train.jsonl",
        "Training rows: a JSONL/CSV/Parquet manifest, image folder, .tar shards, a saved datasets directory, "
        "or a `deepsynth-ocr prepare` output directory (its 'train' split is used).",
    )
    eval_path: str = _f(
        "data/smoke-domain/eval.jsonl",
        "Evaluation rows (any train_path kind; a prepare output directory gives its 'validation' split); "
        "empty to split from train.",
    )
    eval_size: int = _f(0, "When eval_path is empty: how many training rows to hold out for evaluation.")
    source_type: str = _f(
        "auto", "How to read train/eval/prepare sources: 'auto' (inferred from the path) or one of "
        "jsonl, csv, parquet, folder, webdataset, hf_disk, hub."
    )
    task: str = _f(
        "ocr", "Task of rows without a task column: 'ocr' (image -> text), 'markdown' (image -> markdown), "
        "'qa' (image or rendered document + question -> answer), 'summarize' (rendered document -> summary)."
    )
    prompt: str = _f("", "Prompt for OCR rows that carry none; empty means the family's OCR prompt.")
    instruction: str = _f("", "A dataset-wide instruction for rows without their own prompt, any task (e.g. 'Summarize the "
                          "article in three sentences.'); Q&A rows keep their question after it. Empty: each task's own.")
    preset: str = _f("", "Read a public dataset as published: 'squad', 'natural_questions' (short answers), 'ms_marco', "
                     "'fiqa' (a BEIR folder) for qa; 'cnn_dailymail', 'xsum' for summarize (docs/data.md has each shape). "
                     "Fills only the columns and task left at their defaults; rows without an answer are counted by reason.")
    image_column: str = _f("image", "Source column with the image (a path relative to the source, bytes, or {bytes, path}).")
    text_column: str = _f("text", "Source column with the transcription (ocr/markdown) or the document text (qa/summarize).")
    prompt_column: str = _f("prompt", "Source column with a per-row prompt (optional; overrides the task's prompt).")
    id_column: str = _f("id", "Source column with a stable row id (optional; default '<file name>:<row>').")
    task_column: str = _f("task", "Source column with a per-row task (optional), so one dataset can mix tasks.")
    question_column: str = _f("question", "Source column with the question of 'qa' rows.")
    answer_column: str = _f("answer", "Source column with the answer (the target) of 'qa' rows.")
    summary_column: str = _f("summary", "Source column with the summary (the target) of 'summarize' rows.")
    collapse_whitespace: bool = _f(False, "Collapse every whitespace run (newlines included) of the target text to one space.")
    max_target_tokens: int = _f(512, "The longest target (text, answer or summary) in tokens; what happens beyond it is "
                                "data.long_targets.")
    long_targets: str = _f("reject", "A target longer than data.max_target_tokens: 'reject' the row (text_too_long in the "
                           "data report) or 'truncate' the target to that many tokens (counted as target_truncated); "
                           "the prompt and the image tokens are never cut.")
    min_image_side: int = _f(8, "Rows whose image has a side shorter than this (pixels) are rejected.")
    max_image_side: int = _f(20_000, "Rows whose image has a side longer than this (pixels) are rejected.")
    max_image_pixels: int = _f(
        40_000_000, "Rows whose image has more pixels than this are rejected before decoding (decompression bombs)."
    )
    strict: bool = _f(False, "Fail on the first bad row (its location and reason in the error) instead of reporting it.")

    def validate(self) -> None:
        from deepsynth_ocr.data.sources import SOURCE_TYPES
        from deepsynth_ocr.data.tasks import PRESETS, TASKS

        _check(bool(self.train_path), "data.train_path", "is required")
        _check(self.eval_size >= 0, "data.eval_size", f"must be >= 0, got {self.eval_size}")
        _check(self.source_type == "auto" or self.source_type in SOURCE_TYPES, "data.source_type",
               f"must be 'auto' or one of {list(SOURCE_TYPES)}, got {self.source_type!r}")
        _check(self.task in TASKS, "data.task", f"must be one of {list(TASKS)}, got {self.task!r}")
        _check(self.preset in ("", *PRESETS), "data.preset", f"must be empty or one of {list(PRESETS)}, got {self.preset!r}")
        _check(not self.instruction or self.instruction.count("<image>") <= 1, "data.instruction",
               "may hold at most one <image> placeholder")
        for name in ("image", "text", "prompt", "id", "task", "question", "answer", "summary"):
            _check(bool(getattr(self, f"{name}_column")), f"data.{name}_column", "must be a non-empty column name")
        _check(self.max_target_tokens > 0, "data.max_target_tokens", f"must be > 0, got {self.max_target_tokens}")
        _check(self.long_targets in ("reject", "truncate"), "data.long_targets",
               f"must be reject or truncate, got {self.long_targets!r}")
        _check(self.min_image_side > 0, "data.min_image_side", f"must be > 0, got {self.min_image_side}")
        _check(self.max_image_side >= self.min_image_side, "data.max_image_side",
               f"must be >= data.min_image_side={self.min_image_side}, got {self.max_image_side}")
        _check(self.max_image_pixels > 0, "data.max_image_pixels", f"must be > 0, got {self.max_image_pixels}")


@dataclass
class PrepareConfig:
    sources: list = _f([], "Sources to prepare (paths, globs of shards, or hub dataset names); read as data.source_type says.")
    output_dir: str = _f("", "Where the prepared dataset, report.json and manifest.json go; empty: data/prepared/<name>.")
    validation_size: float = _f(
        0.1, "Validation split: a fraction in [0, 1) of the kept rows, or a whole number >= 1 of rows."
    )
    test_size: float = _f(0.0, "Test split: a fraction in [0, 1) of the kept rows, or a whole number >= 1 of rows.")
    split_salt: str = _f("", "Mixed into the id hash that assigns splits; change it only to draw different splits.")
    source_split: str = _f("train", "Split to read from a saved datasets directory or a hub dataset (a BEIR folder: "
                           "its qrels/<split>.tsv).")
    max_rows: int = _f(0, "Stop reading each source once this many of its rows are kept (0: read all); for a sample "
                       "of a large hub dataset, which is streamed. The report says where it stopped.")
    hub_repo_id: str = _f("", "Push the prepared dataset to this Hub dataset repository (owner/name) once written; the "
                          "token is checked before any row is read. Empty: no push.")
    hub_private: bool = _f(True, "Create the pushed dataset repository private.")
    dpi: int = _f(100, "Resolution at which document text (qa/summarize rows without an image) is rendered.")
    page_width_mm: float = _f(210.0, "Width of a rendered document page in millimetres (A4 by default).")
    page_height_mm: float = _f(297.0, "Height of a rendered document page in millimetres.")
    margin_mm: float = _f(15.0, "Page margin in millimetres.")
    font: str = _f("DejaVuSans", "Font of rendered documents (a name from data.fonts.available_fonts()).")
    font_size_pt: float = _f(11.0, "Font size of rendered documents in points.")
    max_pages: int = _f(
        3, "A document rendering to more pages than this is rejected: pages are stacked into one tall image, "
        "and the model's tiles (at most 6) leave too few pixels per line beyond about 3 A4 pages."
    )

    def validate(self) -> None:
        _check(isinstance(self.sources, list) and all(isinstance(s, str) and s for s in self.sources),
               "prepare.sources", f"must be a list of paths or dataset names, got {self.sources!r}")
        for name in ("validation_size", "test_size"):
            v = getattr(self, name)
            _check(0 <= v < 1 or float(v).is_integer(), f"prepare.{name}",
                   f"must be a fraction in [0, 1) or a whole number of rows, got {v}")
        _check(self.max_rows >= 0, "prepare.max_rows", f"must be >= 0 (0: all rows), got {self.max_rows}")
        _check(self.dpi >= 10, "prepare.dpi", f"must be >= 10, got {self.dpi}")
        _check(self.page_width_mm > 2 * self.margin_mm and self.page_height_mm > 2 * self.margin_mm,
               "prepare.margin_mm", "leaves no room on the page")
        _check(self.margin_mm >= 0, "prepare.margin_mm", f"must be >= 0, got {self.margin_mm}")
        _check(self.font_size_pt > 0, "prepare.font_size_pt", f"must be > 0, got {self.font_size_pt}")
        _check(self.max_pages > 0, "prepare.max_pages", f"must be > 0, got {self.max_pages}")


@dataclass
class TrainConfig:
    max_steps: int = _f(200, "Optimizer steps to train.")
    learning_rate: float = _f(2e-4, "Peak learning rate.")
    per_device_batch_size: int = _f(2, "Training batch size per device.")
    gradient_accumulation_steps: int = _f(4, "Batches accumulated per optimizer step.")
    warmup_steps: int = _f(5, "Linear warmup steps.")
    lr_scheduler: str = _f("linear", "Learning-rate schedule after warmup (any transformers scheduler name).")
    optim: str = _f("paged_adamw_8bit", "Optimizer (transformers name); bitsandbytes pages it on CUDA only.")
    weight_decay: float = _f(0.0, "Weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    logging_steps: int = _f(10, "Log the loss every N steps.")
    save_steps: int = _f(100, "Write a resumable checkpoint every N steps (0: none; the adapter is saved at the end either way).")
    save_total_limit: int = _f(2, "Keep at most this many checkpoints.")
    resume: bool = _f(
        False, "Resume from the last checkpoint of the newest run directory of this name: adapter (checked key by key), "
        "optimizer, scheduler, RNG state and position in the data."
    )
    resume_from: str = _f(
        "", "Start this new run from one checkpoint directory (e.g. another run's checkpoints/checkpoint-200): its "
        "adapter, optimizer, scheduler, RNG state and data position; training goes on to train.max_steps in this "
        "run's own directory, and the run it came from is left as it is. Not with train.resume."
    )
    keep_best: bool = _f(
        False, "Rank checkpoints by the periodic eval (CER; token F1 or ROUGE-L where the rows hold no OCR), keep the "
        "best one from rotation, and make it the run's adapter at the end instead of the last step's. Needs "
        "eval.every_steps and train.save_steps, a multiple of it, so that every checkpoint has a score."
    )
    early_stopping_patience: int = _f(
        0, "Stop training after this many periodic evaluations in a row without a gain over the best (0: off); the "
        "run ends 'ok' with the step it stopped at in its manifest. Needs eval.every_steps."
    )
    early_stopping_min_delta: float = _f(0.0, "The least improvement of the ranking metric that counts as a gain "
                                         "for train.early_stopping_patience (absolute, e.g. 0.005 CER).")
    dataloader_workers: int = _f(
        -1, "Data-loader worker processes that decode and tile images while the model trains; -1: 2 on a GPU, "
        "0 on a CPU (where the workers would compete with training for the same cores)."
    )
    sampling: str = _f("random", "Order of training rows: 'random' (shuffled each epoch) or 'sequential' (as stored: "
                       "a curriculum, or a measurement that needs a known order).")
    allow_cpu: bool = _f(
        False, "Train a real (non-tiny) checkpoint on the CPU anyway. At real size a step takes minutes: for measuring "
        "the real path (configs/deepseek-ocr-2-real-size-cpu.yaml, benchmarks/real_size.py), not for fine-tuning."
    )

    def validate(self) -> None:
        _check(not (self.resume and self.resume_from), "train.resume_from",
               "and train.resume are both set: resume continues this run's own last checkpoint, resume_from starts a "
               "new run from the checkpoint you name; choose one")
        for name in ("max_steps", "per_device_batch_size", "gradient_accumulation_steps", "logging_steps", "save_total_limit"):
            _check(getattr(self, name) > 0, f"train.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.save_steps >= 0, "train.save_steps", f"must be >= 0, got {self.save_steps}")
        _check(self.dataloader_workers >= -1, "train.dataloader_workers", f"must be >= -1, got {self.dataloader_workers}")
        _check(self.sampling in ("random", "sequential"), "train.sampling", f"must be random or sequential, got {self.sampling!r}")
        _check(self.early_stopping_patience >= 0, "train.early_stopping_patience",
               f"must be >= 0, got {self.early_stopping_patience}")
        _check(self.early_stopping_min_delta >= 0, "train.early_stopping_min_delta",
               f"must be >= 0, got {self.early_stopping_min_delta}")


BASELINE_ENGINES = ("tesseract", "rapidocr")  # the classical engines eval.baselines may name


@dataclass
class EvalConfig:
    enabled: bool = _f(True, "Score the eval set before and after training.")
    batch_size: int = _f(16, "Generation batch size.")
    max_new_tokens: int = _f(0, "Generation bound; 0 derives it from the longest reference plus margin.")
    max_new_tokens_margin: float = _f(0.5, "With max_new_tokens 0: extra fraction of the longest reference.")
    no_repeat_ngram_size: int = _f(0, "Repetition guard: forbid repeating n-grams of this size (0 off).")
    max_samples: int = _f(0, "Score at most this many eval rows (0: all).")
    num_logged_samples: int = _f(-1, "Per-sample rows (image, reference, prediction, CER, WER, failure) sent to W&B per "
                                 "eval: the first N rows; 0 sends none (a privacy switch, as tracking.log_images: false); "
                                 "-1 sends all.")
    normalize_unicode: str = _f("NFC", "Unicode normalisation before scoring: '' (none), 'NFC' or 'NFKC' (also folds ligatures).")
    normalize_case: bool = _f(False, "Lowercase reference and prediction before scoring.")
    normalize_whitespace: bool = _f(True, "Collapse every whitespace run (tabs, no-break spaces, newlines) to one space before scoring.")
    normalize_punctuation: bool = _f(False, "Remove punctuation (Unicode categories P*) before scoring.")
    normalize_arabic: bool = _f(False, "Unify Arabic/Persian look-alike letters (yeh, kaf, digits) and drop tatweel before scoring.")
    loop_guard: bool = _f(True, "Repetition guard: stop a row whose output ends in a repeating loop (counted as a failure).")
    loop_max_period: int = _f(32, "Repetition guard: longest repeating unit, in tokens, that is detected.")
    loop_min_repeats: int = _f(4, "Repetition guard: the unit must repeat at least this many times in a row.")
    loop_min_span: int = _f(64, "Repetition guard: and the repetition must cover at least this many tokens (spares '0000', dot leaders).")
    every_steps: int = _f(50, "During training, score a fixed eval subset every N steps for the CER-over-steps curve (0: off).")
    periodic_samples: int = _f(16, "Size of the fixed eval subset scored every eval.every_steps.")
    baselines: list = _f(list(BASELINE_ENGINES), "Non-DeepSeek engines scored on the same eval set when installed (skipped with a notice otherwise).")
    tesseract_lang: str = _f("eng", "Tesseract language(s), e.g. 'eng', 'fas', 'eng+ara' (Debian tesseract-ocr-<lang>).")
    baseline_cache: bool = _f(True, "Reuse the baselines' readings of identical images (same pixels, engine version and "
                              "settings) kept under $DEEPSYNTH_CACHE/baselines (.cache/ in a checkout): a sweep or a "
                              "repeated fine-tune on one eval set runs each engine once. false reads every image again.")

    def normalization(self):
        """The ``metrics.TextNormalization`` these fields describe."""
        from deepsynth_ocr.metrics import TextNormalization

        return TextNormalization(unicode=self.normalize_unicode, lowercase=self.normalize_case,
                                 collapse_whitespace=self.normalize_whitespace,
                                 remove_punctuation=self.normalize_punctuation, unify_arabic=self.normalize_arabic)

    def validate(self) -> None:
        _check(self.batch_size > 0, "eval.batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.max_new_tokens >= 0, "eval.max_new_tokens", f"must be >= 0, got {self.max_new_tokens}")
        _check(self.max_new_tokens_margin >= 0, "eval.max_new_tokens_margin", "must be >= 0")
        _check(self.no_repeat_ngram_size >= 0, "eval.no_repeat_ngram_size", "must be >= 0")
        _check(self.max_samples >= 0, "eval.max_samples", f"must be >= 0, got {self.max_samples}")
        _check(self.num_logged_samples >= -1, "eval.num_logged_samples",
               f"must be -1 (all), 0 (none) or a number of rows, got {self.num_logged_samples}")
        _check(self.normalize_unicode in ("", "NFC", "NFKC"), "eval.normalize_unicode",
               f"must be '', 'NFC' or 'NFKC', got {self.normalize_unicode!r}")
        for name in ("loop_max_period", "loop_min_repeats", "loop_min_span"):
            _check(getattr(self, name) > 0, f"eval.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(self.loop_min_repeats >= 2, "eval.loop_min_repeats", f"must be >= 2, got {self.loop_min_repeats}")
        _check(self.every_steps >= 0, "eval.every_steps", f"must be >= 0, got {self.every_steps}")
        _check(self.periodic_samples > 0, "eval.periodic_samples", f"must be > 0, got {self.periodic_samples}")
        _check(isinstance(self.baselines, list) and all(b in BASELINE_ENGINES for b in self.baselines), "eval.baselines",
               f"must be a list of {list(BASELINE_ENGINES)}, got {self.baselines!r}")


@dataclass
class TrackingConfig:
    wandb: str = _f("offline", "W&B mode: 'online', 'offline' (no network; written in the run dir) or 'disabled'.")
    project: str = _f("deepsynth-ocr", "W&B project name.")
    log_images: bool = _f(True, "Privacy switch: false keeps images and texts out of W&B, only metrics go.")
    tensorboard: bool = _f(False, "Also write every logged number (training steps, evaluations, baselines) as TensorBoard "
                           "scalars into <run>/tensorboard (`tensorboard --logdir runs`); needs the tensorboard package.")

    def validate(self) -> None:
        _check(self.wandb in ("online", "offline", "disabled"), "tracking.wandb", f"must be online, offline or disabled, got {self.wandb!r}")


@dataclass
class InferConfig:
    batch_size: int = _f(16, "Images per generation batch in `deepsynth-ocr infer`.")
    max_new_tokens: int = _f(2048, "Generation bound per image (no reference to derive it from); the repetition guard stops loops sooner.")
    prompt: str = _f("", "Prompt for every input; empty means the family's OCR prompt.")
    pdf_dpi: int = _f(144, "Resolution at which PDF pages are rendered (pypdfium2).")
    backend: str = _f("hf", "'hf' (transformers batched generate) or 'vllm' (GPU; needs the vllm package, merged weights).")
    adapter: str = _f("", "LoRA adapter directory (a run's adapter/ or an export); empty: model.name_or_path as is.")

    def validate(self) -> None:
        _check(self.batch_size > 0, "infer.batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.max_new_tokens > 0, "infer.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        _check(self.pdf_dpi >= 10, "infer.pdf_dpi", f"must be >= 10, got {self.pdf_dpi}")
        _check(self.backend in ("hf", "vllm"), "infer.backend", f"must be hf or vllm, got {self.backend!r}")
        _check(not self.prompt or "<image>" in self.prompt, "infer.prompt", f"needs an <image> placeholder, got {self.prompt!r}")


@dataclass
class ExportConfig:
    merged: bool = _f(True, "Also write the base model with the adapter merged in (the training dtype: 16-bit on GPU recipes).")
    hub_repo_id: str = _f("", "Push the export to this hub repo (needs HF_TOKEN); empty: no push.")
    hub_private: bool = _f(True, "Create the hub repo as private.")

    def validate(self) -> None:
        _check(not self.hub_repo_id or self.hub_repo_id.count("/") == 1, "export.hub_repo_id",
               f"must look like 'user/name', got {self.hub_repo_id!r}")


@dataclass
class ServeConfig:
    host: str = _f("127.0.0.1", "Address `deepsynth-ocr serve` listens on; 0.0.0.0 exposes it to the network (set API keys then).")
    port: int = _f(8000, "TCP port of the server.")
    backend: str = _f("hf", "'hf' (this process: transformers batched generate behind a batching queue) or 'vllm' "
                      "(writes and starts the `vllm serve` command of the official recipe; GPU, vllm package).")
    adapters: list = _f([], "Extra LoRA adapters to serve beside the base, as NAME=DIRECTORY; the request's `model` picks one.")
    base_name: str = _f("", "Name the base model is listed and requested under; empty: model.name_or_path (as vLLM names it), "
                        "or 'tiny-base' for the bundled tiny base.")
    max_batch_size: int = _f(8, "Most requests (images) generated together in one batch.")
    max_wait_ms: int = _f(10, "How long the first request of a batch waits for others to join it (milliseconds).")
    generation_process: bool = _f(True, "Run the model in a child process of its own, so HTTP handling and generation do "
                                  "not share one Python GIL (measured: 1.4-1.8x the requests/s at saturation on 2 CPU cores); "
                                  "false keeps it in the server's process.")
    max_queue: int = _f(64, "Images waiting for generation beyond which new requests get 503 with Retry-After.")
    request_timeout_s: float = _f(120.0, "A request not answered in this many seconds gets 504 and its queued work is dropped.")
    max_body_mb: float = _f(20.0, "Largest request body accepted (413 beyond), in MiB.")
    max_tokens_limit: int = _f(8192, "Largest `max_tokens` a request may ask for (400 beyond); requests without one get infer.max_new_tokens.")
    max_pdf_pages: int = _f(32, "Most pages of a PDF uploaded to /v1/ocr (413 beyond).")
    rate_limit_per_minute: float = _f(0.0, "Requests to /v1/ each client may make per minute, a token bucket per API key "
                                      "(per address when keys are off); 429 with Retry-After beyond. 0: no limit. A key "
                                      "in serve.api_keys_file may carry its own: `KEY rate_limit_per_minute=600`.")
    rate_limit_burst: int = _f(10, "Requests a client may send at once before serve.rate_limit_per_minute applies.")
    api_keys_env: str = _f("DEEPSYNTH_OCR_API_KEYS", "Environment variable holding comma-separated API keys (Bearer tokens).")
    api_keys_file: str = _f("", "File with one API key per line (blank lines and # comments skipped); adds to api_keys_env.")
    file_root: str = _f("", "Directory whose files requests may name as image_url (file:// or a path); empty: file paths are refused.")
    log_content: bool = _f(False, "Privacy switch: true adds the recognised text to the access log; images are never logged.")
    samples_dir: str = _f("", "Privacy switch: a directory where a sampled share of requests is kept (a JSON record with "
                          "the text and per-stage ms, and a thumbnail per image) for later review; empty: nothing is kept.")
    samples_rate: float = _f(0.01, "Share of requests kept in serve.samples_dir (0..1).")
    samples_redact: bool = _f(False, "Keep each text only as its length and SHA-256, and no thumbnails, in serve.samples_dir.")
    samples_max_mb: float = _f(500.0, "Retention: the oldest kept samples are removed beyond this many MiB.")
    samples_max_age_days: float = _f(30.0, "Retention: kept samples older than this many days are removed.")

    def validate(self) -> None:
        _check(self.rate_limit_per_minute >= 0, "serve.rate_limit_per_minute", f"must be >= 0, got {self.rate_limit_per_minute}")
        _check(self.rate_limit_burst >= 1, "serve.rate_limit_burst", f"must be >= 1, got {self.rate_limit_burst}")
        _check(self.backend in ("hf", "vllm"), "serve.backend", f"must be hf or vllm, got {self.backend!r}")
        _check(0 < self.port < 65536, "serve.port", f"must be 1..65535, got {self.port}")
        _check(isinstance(self.adapters, list) and all(isinstance(a, str) and "=" in a for a in self.adapters),
               "serve.adapters", f"must be a list of NAME=DIRECTORY, got {self.adapters!r}")
        _check(self.max_wait_ms >= 0, "serve.max_wait_ms", f"must be >= 0, got {self.max_wait_ms}")
        _check(0 <= self.samples_rate <= 1, "serve.samples_rate", f"must be between 0 and 1, got {self.samples_rate}")
        for name in ("max_batch_size", "max_queue", "request_timeout_s", "max_body_mb", "max_tokens_limit", "max_pdf_pages",
                     "samples_max_mb", "samples_max_age_days"):
            _check(getattr(self, name) > 0, f"serve.{name}", f"must be > 0, got {getattr(self, name)}")


@dataclass
class UiConfig:
    host: str = _f("127.0.0.1", "Address `deepsynth-ocr ui` listens on; any other than a loopback address needs an access "
                   "token (ui.token_env), or the UI refuses to start.")
    port: int = _f(8700, "TCP port of the jobs UI.")
    token_env: str = _f("DEEPSYNTH_UI_TOKEN", "Environment variable holding the UI's access token (open the UI once "
                        "as /?token=TOKEN, or send it as a Bearer token); empty variable: no token (loopback only).")
    data_roots: list = _f(["data"], "Directories whose files the UI may name as datasets (launch form, Data page); "
                          "nothing outside them is read.")
    configs_dir: str = _f("configs", "Directory of the presets the launch form offers (*.yaml; sweeps/ for search spaces).")
    gpu_slots: int = _f(0, "Jobs the UI runs at once (one per GPU); 0: the number of GPUs nvidia-smi lists, at least 1. "
                        "Further launches wait in a queue kept on disk.")
    max_upload_mb: float = _f(20.0, "Largest image or PDF the Try-it page accepts, in MiB.")
    launches_per_minute: int = _f(10, "Launches, resumes and exports accepted per minute (429 beyond).")
    uploads_per_minute: int = _f(30, "Try-it uploads accepted per minute (429 beyond).")
    try_idle_minutes: float = _f(10.0, "The Try-it playground's model holds a job slot while loaded (launches wait for it) "
                                 "and is unloaded after this many minutes without a request.")

    def validate(self) -> None:
        _check(0 < self.port < 65536, "ui.port", f"must be 1..65535, got {self.port}")
        _check(isinstance(self.data_roots, list) and all(isinstance(r, str) for r in self.data_roots), "ui.data_roots",
               f"must be a list of directories, got {self.data_roots!r}")
        _check(self.gpu_slots >= 0, "ui.gpu_slots", f"must be >= 0, got {self.gpu_slots}")
        for name in ("max_upload_mb", "launches_per_minute", "uploads_per_minute", "try_idle_minutes"):
            _check(getattr(self, name) > 0, f"ui.{name}", f"must be > 0, got {getattr(self, name)}")


@dataclass
class AugmentConfig:
    enabled: bool = _f(False, "Degrade training images on the fly (each epoch differently, reproducibly: a resumed run "
                       "sees the same images). Evaluation never does.")
    probability: float = _f(0.5, "Chance that each degradation below is applied to an image (0..1).")
    rotation: float = _f(2.0, "Largest rotation in degrees, either direction; 0 switches it off.")
    blur: float = _f(0.8, "Largest Gaussian blur radius in pixels; 0 switches it off.")
    contrast: float = _f(0.3, "Contrast factor drawn from [1 - contrast, 1 + contrast]; 0 switches it off.")
    noise: float = _f(6.0, "Largest standard deviation of pixel noise (0-255 scale); 0 switches it off.")
    jpeg_quality: int = _f(40, "Lowest JPEG quality of a re-compression (1-95); 0 switches it off.")

    def validate(self) -> None:
        _check(0 <= self.probability <= 1, "augment.probability", f"must be between 0 and 1, got {self.probability}")
        for name in ("rotation", "blur", "contrast", "noise"):
            _check(getattr(self, name) >= 0, f"augment.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(self.jpeg_quality == 0 or 1 <= self.jpeg_quality <= 95, "augment.jpeg_quality",
               f"must be 0 (off) or 1..95, got {self.jpeg_quality}")
        _check(self.contrast <= 1, "augment.contrast", f"must be <= 1 (a factor down to 0), got {self.contrast}")


@dataclass
class LogConfig:
    format: str = _f("text", "Log lines: 'text' (timestamped lines for people) or 'json' (one JSON object per line: time, "
                     "level, logger, message, run_id, and the structured fields: request id and per-stage ms in the "
                     "server's access log, the step's stage times in training). Also --log-format on every command.")

    def validate(self) -> None:
        _check(self.format in ("text", "json"), "log.format", f"must be text or json, got {self.format!r}")


@dataclass
class RunConfig:
    name: str = _f("run", "Run name; the run directory is <output_root>/<name>_<timestamp>.")
    output_root: str = _f("runs", "Directory that holds run directories.")
    seed: int = _f(0, "Seed for model init, data order and training.")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Model and backend."})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA adapters."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training and evaluation data."})
    prepare: PrepareConfig = field(default_factory=PrepareConfig, metadata={"help": "`deepsynth-ocr prepare`: sources, splits, output, document pages."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Optimisation."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "On-the-fly augmentation of training images."})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": "W&B and privacy."})
    infer: InferConfig = field(default_factory=InferConfig, metadata={"help": "`deepsynth-ocr infer`: batch OCR of images and PDFs."})
    export: ExportConfig = field(default_factory=ExportConfig, metadata={"help": "`deepsynth-ocr export`: adapter, merged weights, hub push."})
    serve: ServeConfig = field(default_factory=ServeConfig, metadata={"help": "`deepsynth-ocr serve`: the OpenAI-compatible OCR server."})
    ui: UiConfig = field(default_factory=UiConfig, metadata={"help": "`deepsynth-ocr ui`: the local jobs web UI."})
    log: LogConfig = field(default_factory=LogConfig, metadata={"help": "Log format of every job and the server."})

    def validate(self) -> RunConfig:
        _check(bool(self.name) and "/" not in self.name, "name", f"must be non-empty without '/', got {self.name!r}")
        for section in SECTIONS:
            getattr(self, section).validate()
        t, every = self.train, self.eval.every_steps if self.eval.enabled else 0
        if t.keep_best or t.early_stopping_patience:
            what = "train.keep_best" if t.keep_best else "train.early_stopping_patience"
            _check(every > 0 and bool(self.data.eval_path), what,
                   "ranks the periodic evaluation: set data.eval_path, eval.enabled: true and eval.every_steps > 0")
        if t.keep_best:
            _check(self.lora.enabled, "train.keep_best", "restores the best checkpoint's LoRA adapter: it needs "
                   "lora.enabled: true (with full fine-tuning, resume or export the checkpoint you want instead)")
            _check(t.save_steps > 0 and t.save_steps % every == 0, "train.save_steps",
                   f"must be a multiple of eval.every_steps ({every}) with train.keep_best, so that every checkpoint "
                   f"has a score; got {t.save_steps}")
        if not self.lora.enabled:  # full fine-tuning: what cannot train at all, refused before anything loads
            _check(not self.model.load_in_4bit, "lora.enabled",
                   "false (full fine-tuning) cannot train a 4-bit model's uint8 weights; keep lora.enabled: true "
                   "(QLoRA) or set model.load_in_4bit: false")
            _check(not self.model.load_in_8bit, "lora.enabled",
                   "false (full fine-tuning) cannot train an 8-bit model's int8 weights; keep lora.enabled: true "
                   "or set model.load_in_8bit: false")
            _check(self.model.dtype != "float16", "model.dtype",
                   "float16 with full fine-tuning fails (torch refuses to unscale float16 gradients); use bfloat16 "
                   "on a GPU that computes it, or LoRA (lora.enabled: true)")
        return self

    # --- dict / YAML ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> RunConfig:
        return _build(cls, data or {}, "").validate()

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def load(cls, config_path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
        """The config of ``config_path`` (defaults when None) with ``section.field=value`` overrides applied.

        The one parser of overrides: the CLI's ``-s``, and (through ``parse_value``) the notebook
        CLI's ``-p NAME VALUE``, read values as YAML (numbers, booleans, lists, strings).
        """
        return (cls.from_yaml(config_path) if config_path else cls()).with_overrides(overrides)

    def with_overrides(self, overrides: list[str]) -> RunConfig:
        """A copy of this config with ``section.field=value`` overrides applied (values read as YAML)."""
        data = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r}: expected section.field=value")
            *path, leaf = key.split(".")
            node = data
            for part in path:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"{key}: unknown config section {part!r}; sections: {list(SECTIONS)}")
                node = node[part]
            node[leaf] = parse_value(value)
        return RunConfig.from_dict(data)

    # --- flat names for notebook parameters --------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                flat.update({f"{key}_{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return flat

    @classmethod
    def from_flat(cls, flat: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
        """Overlay flat ``section_field`` values (notebook parameters) on ``base`` (or defaults)."""
        data = (base or cls()).to_dict()
        for key, value in flat.items():
            section, _, rest = key.partition("_")
            if section in SECTIONS and rest:
                data[section][rest] = value
            else:
                data[key] = value
        return cls.from_dict(data)


def parse_value(text: str) -> Any:
    """A value given on a command line (``-s train.max_steps=10``, ``-p train_max_steps 10``), read as YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML (an unbalanced quote, a stray colon): the literal string


SECTIONS = ("model", "lora", "data", "prepare", "train", "eval", "augment", "tracking", "infer", "export", "serve", "ui", "log")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field in {where}; known fields: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a mapping, got {value!r}")
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    if get_origin(hint) is not None and type(None) in get_args(hint):
        if value is None:
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 2e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if value is None:  # `-s model.name_or_path=` or a bare `key:` in YAML: the empty setting
            return ""
    else:
        return value
    raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}")


def field_help(cls: type = RunConfig, prefix: str = "") -> dict[str, str]:
    """Flat ``section.field -> help`` map, for docs and the CLI."""
    out = {}
    for f in dataclasses.fields(cls):
        hint = get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out.update(field_help(hint, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f.metadata["help"]
    return out
