"""DeepSeek-OCR (v1, remote code): image geometry, token counts and the training/generation collator.

The remote model (``DeepseekOCRForCausalLM``) has no transformers processor. Its forward takes
``input_ids``, ``images`` (one ``(crops, global_view)`` pair per row), ``images_seq_mask`` (True
where an image placeholder sits) and ``images_spatial_crop`` (the crop grid, width x height, per
row). This module builds exactly those from a tokenizer and the family's ``V1Geometry``; every
number comes from ``families.py``.

Only the shapes and counts are tested here (on CPU, against the published formulas): a forward
pass of this family needs the real weights and has only been run where a GPU and the hub exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from deepsynth_ocr.batching import IGNORE_INDEX, pad_rows, padding_id
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.models.families import V1Geometry, closest_grid

IMAGE_TOKEN = "<image>"


def crop_grid(width: int, height: int, geo: V1Geometry) -> tuple[int, int]:
    """The (columns, rows) grid the published ``dynamic_preprocess`` picks (``families.closest_grid``); (1, 1)
    means no crops."""
    if width <= geo.crop_threshold and height <= geo.crop_threshold:
        return (1, 1)
    return closest_grid(width, height, geo.image_size, geo.min_crops, geo.max_crops)


def queries_per_side(size: int, geo: V1Geometry) -> int:
    return math.ceil((size // geo.patch_size) / geo.downsample_ratio)


def image_token_count(grid: tuple[int, int], geo: V1Geometry) -> int:
    """Placeholders for one image: global rows (+1 newline each), one view separator, then crop rows."""
    base = queries_per_side(geo.base_size, geo)
    count = (base + 1) * base + 1
    cols, rows = grid
    if cols > 1 or rows > 1:
        local = queries_per_side(geo.image_size, geo)
        count += (local * cols + 1) * (local * rows)
    return count


def _to_tensor(image: Image.Image, geo: V1Geometry, dtype: torch.dtype) -> torch.Tensor:
    # ToTensor + Normalize(mean, std), as the remote code's BasicImageTransform, without torchvision.
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(geo.image_mean).view(3, 1, 1)
    std = torch.tensor(geo.image_std).view(3, 1, 1)
    return ((array - mean) / std).to(dtype)


@dataclass
class EncodedImage:
    global_view: torch.Tensor  # (1, 3, base_size, base_size)
    crops: torch.Tensor  # (columns * rows, 3, image_size, image_size), or one zero tensor without crops
    grid: tuple[int, int]
    num_tokens: int


def encode_image(image: Image.Image, geo: V1Geometry, dtype: torch.dtype = torch.float32) -> EncodedImage:
    image = image.convert("RGB")
    pad_colour = tuple(int(m * 255) for m in geo.image_mean)
    global_view = _to_tensor(ImageOps.pad(image, (geo.base_size, geo.base_size), color=pad_colour), geo, dtype)
    grid = crop_grid(*image.size, geo)
    cols, rows = grid
    if cols > 1 or rows > 1:
        resized = image.resize((geo.image_size * cols, geo.image_size * rows))
        tiles = []
        for i in range(cols * rows):  # row-major, left to right, like the remote code
            x, y = (i % cols) * geo.image_size, (i // cols) * geo.image_size
            tiles.append(_to_tensor(resized.crop((x, y, x + geo.image_size, y + geo.image_size)), geo, dtype))
        crops = torch.stack(tiles)
    else:
        # The remote forward skips local features when the crop tensor sums to zero.
        crops = torch.zeros((1, 3, geo.base_size, geo.base_size), dtype=dtype)
    return EncodedImage(global_view.unsqueeze(0), crops, grid, image_token_count(grid, geo))


class V1Processor:
    """What the kit needs from a processor for v1: tokenizer, geometry, pixel dtype, ``save_pretrained``."""

    def __init__(self, tokenizer, geometry: V1Geometry, dtype: torch.dtype = torch.float32):
        self.tokenizer = tokenizer
        self.geometry = geometry
        # The remote model does not cast pixels: they must arrive in the weights' dtype.
        self.dtype = dtype
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise UserError(f"the tokenizer has no {IMAGE_TOKEN!r} token; is this a DeepSeek-OCR checkpoint?")

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(path))


class V1Collator:
    """Rows ``{image, text, prompt}`` -> the remote DeepSeek-OCR model's inputs.

    Same contract as ``OcrCollator``: training rows are BOS + prompt (with placeholders) + target +
    EOS, right padded, labels -100 on prompt, placeholders and padding (decided by position, so an
    EOS that shares the pad id is still learned); generation rows are the prompt only, left padded.
    """

    def __init__(self, processor: V1Processor, family, for_generation: bool = False):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.geometry = processor.geometry
        self.family = family
        self.for_generation = for_generation
        self.pad_id = padding_id(self.tokenizer)
        bos = self.tokenizer.bos_token_id
        self.bos_id = self.geometry.fallback_bos_id if bos is None else bos

    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, image: Image.Image, prompt: str) -> tuple[list[int], list[bool], EncodedImage]:
        before, sep, after = prompt.partition(IMAGE_TOKEN)
        if not sep or IMAGE_TOKEN in after:
            raise UserError(f"prompt must contain {IMAGE_TOKEN!r} exactly once, got {prompt!r}")
        encoded = encode_image(image, self.geometry, self.processor.dtype)
        head, tail = self._text_ids(before), self._text_ids(after)
        ids = [self.bos_id] + head + [self.processor.image_token_id] * encoded.num_tokens + tail
        mask = [False] * (1 + len(head)) + [True] * encoded.num_tokens + [False] * len(tail)
        return ids, mask, encoded

    def verification_batch(self, rows: list[dict]) -> dict:
        """The batch a saved adapter is proven on: the full rows (the remote code's forward needs its images)."""
        return self(rows)

    def __call__(self, rows: list[dict]) -> dict:
        encoded = [self.encode_prompt(r["image"], r["prompt"]) for r in rows]
        if self.for_generation:
            sequences = [ids for ids, _, _ in encoded]
            labels = None
        else:
            targets = [self._text_ids(r["text"]) + [self.tokenizer.eos_token_id] for r in rows]
            sequences = [ids + t for (ids, _, _), t in zip(encoded, targets, strict=True)]
            labels = [[IGNORE_INDEX] * len(ids) + t for (ids, _, _), t in zip(encoded, targets, strict=True)]
        input_ids, attention_mask, label_tensor = pad_rows(sequences, labels, self.pad_id, left=self.for_generation)
        # The placeholder mask is padded the same way as the tokens it describes.
        masks = [mask + [False] * (len(seq) - len(mask)) for seq, (_, mask, _) in zip(sequences, encoded, strict=True)]
        seq_mask = pad_rows(masks, None, 0, left=self.for_generation)[0].bool()
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "images": [(e.crops, e.global_view) for _, _, e in encoded],
            "images_seq_mask": seq_mask,
            "images_spatial_crop": torch.tensor([e.grid for _, _, e in encoded], dtype=torch.long),
        }
        if labels is not None:
            batch["labels"] = label_tensor
        return batch
