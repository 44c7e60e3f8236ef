"""Secrets never land in a run directory: the values of the token variables, masked wherever the kit writes.

``HF_TOKEN``, ``WANDB_API_KEY`` and the other variables in ``SECRET_ENV`` are read at the moment of
writing; any occurrence of their values (in the resolved config, the manifest's command line, the
console log, the config handed to W&B) becomes ``***``, and so does anything shaped like a Hugging Face
or OpenAI token (``hf_...``, ``sk-...``) that is not in the environment (pasted into a config value).
The variables themselves keep working for the libraries that read them.
"""

from __future__ import annotations

import logging
import os
import re

SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY",
              "DEEPSYNTH_API_KEY")
MASK = "***"
MIN_LENGTH = 6  # shorter values would mask ordinary words
TOKEN_SHAPES = re.compile(r"\b(?:hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{20,})")


def secret_values() -> list[str]:
    values = {os.environ.get(name, "").strip() for name in SECRET_ENV}
    return sorted((v for v in values if len(v) >= MIN_LENGTH), key=len, reverse=True)


def redact(value):
    """``value`` (strings, possibly nested in dicts, lists and tuples) with every secret value masked."""
    return _redact(value, secret_values())


def _redact(value, secrets: list[str]):
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return TOKEN_SHAPES.sub(MASK, value)
    if isinstance(value, dict):
        return {k: _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, secrets) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's final message (attach it to a handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True
