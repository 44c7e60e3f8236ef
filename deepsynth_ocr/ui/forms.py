"""The launch form, generated from the config dataclasses: the fields a user changes, each with its help
text and the preset's value, and the submitted values turned into ``section.field=value`` overrides.

A bad value is reported next to its field with the kit's own one-line error (``config.ConfigError``),
and a data path outside the UI's data roots is refused; nothing starts until every field is good.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_type_hints

from deepsynth_ocr.config import ConfigError, RunConfig, field_help, parse_value
from deepsynth_ocr.data.tasks import PRESETS, TASKS

# What a user changes between runs; everything else comes from the preset.
FORM_FIELDS = (
    "name", "model.family", "model.name_or_path", "model.backend", "model.load_in_4bit", "model.load_in_8bit", "lora.r", "lora.alpha", "lora.dropout",
    "data.train_path", "data.eval_path", "data.task", "data.instruction", "data.preset", "train.max_steps", "train.learning_rate", "train.per_device_batch_size",
    "train.gradient_accumulation_steps", "train.save_steps", "train.keep_best", "train.early_stopping_patience",
    "eval.max_samples", "eval.every_steps", "augment.enabled", "augment.probability", "augment.rotation", "augment.blur",
    "augment.contrast", "augment.noise", "augment.jpeg_quality", "tracking.wandb",
)
CHOICES = {"model.family": ["tiny", "deepseek-ocr-2", "deepseek-ocr"], "model.backend": ["auto", "hf", "unsloth"],
           "tracking.wandb": ["offline", "online", "disabled"], "data.task": list(TASKS), "data.preset": ["", *PRESETS]}


def _type(name: str) -> type:
    cls: type = RunConfig
    for part in name.split("."):
        cls = get_type_hints(cls)[part]
    return cls


def _get(cfg: RunConfig, name: str):
    value = cfg
    for part in name.split("."):
        value = getattr(value, part)
    return value


def fields(cfg: RunConfig) -> list[dict]:
    """``[{name, type, value, help, choices}]`` of the form's fields with ``cfg``'s values."""
    helps = field_help()
    out = []
    for name in FORM_FIELDS:
        kind = _type(name)
        out.append({"name": name, "type": kind.__name__ if isinstance(kind, type) else "str",
                    "value": _get(cfg, name), "help": helps[name], "choices": CHOICES.get(name)})
    return out


def _field_of(message: str) -> str:
    """The form field a ``ConfigError`` names (its ``section.field:`` prefix), else ``form``."""
    head = message.split(":", 1)[0].strip()
    return head if head in FORM_FIELDS else next((f for f in FORM_FIELDS if message.startswith(f)), "form")


# Keys whose value is a local path: allowed only under the data roots (a hub id for the model is fine).
PATH_KEYS = ("data.train_path", "data.eval_path", "model.name_or_path", "prepare.output_dir")


def path_refused(key: str, value, roots: list[Path]) -> bool:
    """Whether ``key=value`` names a local path outside the data roots (the model's name may be a hub id)."""
    if key not in PATH_KEYS or not value:
        return False
    if key == "model.name_or_path" and not Path(str(value)).exists():
        return False
    return not allowed_data_path(str(value), roots)


def allowed_data_path(value: str, roots: list[Path]) -> bool:
    if not value:
        return True
    path = Path(value).resolve()
    return any(path == r.resolve() or path.is_relative_to(r.resolve()) for r in roots)


def overrides(preset: Path, values: dict[str, str], data_roots: list[Path], runs_root: Path) -> tuple[list[str], dict]:
    """The submitted form as overrides of ``preset`` (plus ``output_root``), and ``{field: error}`` (empty when
    every value is good)."""
    base = RunConfig.from_yaml(preset)
    errors: dict[str, str] = {}
    out = [f"output_root={runs_root}"]
    for name in FORM_FIELDS:
        if name not in values:
            continue
        raw = values[name].strip() if isinstance(values[name], str) else values[name]
        value = raw if _type(name) is str else parse_value(raw) if isinstance(raw, str) else raw
        if path_refused(name, value, data_roots):
            errors[name] = f"{name}: {value} is outside the UI's data roots ({', '.join(map(str, data_roots))})"
            continue
        if value == _get(base, name):
            continue
        item = f"{name}={json.dumps(value)}"
        try:
            base.with_overrides([item])
        except ConfigError as e:
            errors[name] = str(e)
            continue
        out.append(item)
    if not errors:
        try:
            RunConfig.load(preset, out)
        except ConfigError as e:  # a combination (e.g. max_image_side against min_image_side)
            errors[_field_of(str(e))] = str(e)
    return out, errors



# Keys the overrides box refuses: where runs go and the server/UI's own settings are the UI's, not a run's.
LOCKED_PREFIXES = ("output_root", "ui.", "serve.")


def extra_overrides(text: str, preset: Path, data_roots: list[Path], runs_root: Path) -> tuple[list[str], str]:
    """The overrides box: one ``section.field=value`` per line, validated as ``-s`` is, on top of ``preset``.
    Returns the items and an error naming the first bad line ('' when all are good)."""
    items = []
    base = RunConfig.from_yaml(preset)
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, raw = line.partition("=")
        key = key.strip()
        if not eq or not key:
            return [], f"line {n}: write section.field=value, got {line!r}"
        if key.startswith(LOCKED_PREFIXES):
            return [], f"line {n}: {key} is set by the UI, not per run"
        if key in FORM_FIELDS:
            return [], f"line {n}: {key} has its own field above; set it there"
        value = parse_value(raw.strip())
        if path_refused(key, value, data_roots):
            return [], f"line {n}: {key}: {value} is outside the UI's data roots"
        if key == "train.resume_from" and value and not allowed_data_path(str(value), [runs_root]):
            return [], f"line {n}: train.resume_from: {value} is not a checkpoint under the runs root ({runs_root})"
        item = f"{key}={json.dumps(value)}"
        try:
            base = base.with_overrides([item])
        except ConfigError as e:
            return [], f"line {n}: {e}"
        items.append(item)
    return items, ""
