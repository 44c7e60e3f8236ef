"""Turn rows ``{image, text, prompt}`` into model batches.

Training batches are prompt (with the family's image placeholders) + target + EOS, right padded.
Labels are -100 on the prompt, the placeholders and the padding. Masking is decided by position,
never by token id: when a tokenizer's pad id equals its EOS id, the EOS that ends the target is
still learned, so the model learns to stop.
Generation batches hold the prompt only, left padded, so every row's next token is at the end.
"""

from __future__ import annotations

import torch

from deepsynth_ocr.batching import IGNORE_INDEX, pad_rows, padding_id
from deepsynth_ocr.models.deepseek_ocr_v1 import V1Collator


def make_collator(processor, family, for_generation: bool = False):
    """The family's collator: ``OcrCollator`` for native DeepSeek-OCR-2, ``V1Collator`` for DeepSeek-OCR v1.

    Batches come out on the CPU in float32; ``devices.to_model`` places them for the model.
    """
    if family.v1_geometry is not None:
        return V1Collator(processor, family, for_generation)
    return OcrCollator(processor, family, for_generation)


class OcrCollator:
    """Collator for native DeepSeek-OCR-2 families (``tiny``, ``deepseek-ocr-2``).

    Images go through the processor's image processor once per batch. A prompt's token ids depend
    only on the prompt text and the image's tile count, so they are cached per
    ``(prompt, tiles)``: tokenising a prompt expanded to hundreds of placeholders for every row
    cost more than the tiny model's training step.
    """

    def __init__(self, processor, family, for_generation: bool = False):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.family = family
        self.for_generation = for_generation
        self.pad_id = padding_id(self.tokenizer)
        self._prompt_cache: dict[tuple[str, int], list[int]] = {}

    def prompt_ids(self, prompt: str, image, n_local: int) -> list[int]:
        key = (prompt, n_local)
        if key not in self._prompt_cache:
            out = self.processor(images=image, text=prompt, **self.family.image_kwargs)
            if int(out["num_local_patches"][0]) != n_local:
                raise RuntimeError(f"processor tile count changed between calls for prompt {prompt!r}")
            self._prompt_cache[key] = list(out["input_ids"][0])
        return self._prompt_cache[key]

    def target_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def verification_batch(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """The rows' targets as a text-only batch (BOS + target + EOS, no image): what proves a saved adapter.

        LoRA adapts the language model only, so every adapted module sees these tokens, and an adapter that
        reloads wrongly changes their logits; the frozen vision tower, which a full batch would run twice (about
        a minute per page at real size on a CPU), adds nothing to that proof."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        input_ids, attention_mask, _ = pad_rows([bos + self.target_ids(r["text"]) for r in rows], None,
                                                self.pad_id, left=False)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        images = [r["image"].convert("RGB") for r in rows]
        vision = self.processor.image_processor(images, return_tensors="pt", **self.family.image_kwargs)
        n_local = [int(n) for n in vision["num_local_patches"]]
        prompts = [self.prompt_ids(r["prompt"], im, n) for r, im, n in zip(rows, images, n_local, strict=True)]
        if self.for_generation:
            sequences, labels = prompts, None
        else:
            targets = [self.target_ids(r["text"]) for r in rows]
            sequences = [p + t for p, t in zip(prompts, targets, strict=True)]
            labels = [[IGNORE_INDEX] * len(p) + t for p, t in zip(prompts, targets, strict=True)]
        input_ids, attention_mask, label_tensor = pad_rows(sequences, labels, self.pad_id, left=self.for_generation)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": vision["pixel_values"],
            "num_local_patches": torch.tensor(n_local),
        }
        if "pixel_values_local" in vision:
            batch["pixel_values_local"] = vision["pixel_values_local"]
        if labels is not None:
            batch["labels"] = label_tensor
        return batch
