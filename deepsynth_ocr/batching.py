"""Token rows to padded batch tensors: the label value that masks a position, the padding-id rule, padding.

A leaf module shared by both collators (``collate.OcrCollator`` for native DeepSeek-OCR-2 and
``models.deepseek_ocr_v1.V1Collator``), so neither imports the other.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def pad_rows(sequences: list[list[int]], labels: list[list[int]] | None, pad_id: int, left: bool):
    """Pad token rows to one width: ``(input_ids, attention_mask, labels)`` tensors.

    Left padding (generation) puts every row's next token at the end; right padding (training)
    keeps positions aligned with labels. ``labels`` None gives a None label tensor.
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    label_tensor = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for i, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        input_ids[i, span] = torch.tensor(seq)
        attention_mask[i, span] = 1
        if labels is not None:
            label_tensor[i, span] = torch.tensor(labels[i])
    return input_ids, attention_mask, (label_tensor if labels is not None else None)


def padding_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad id, else its EOS (labels never depend on it)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the model could never learn to stop")
    return tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
