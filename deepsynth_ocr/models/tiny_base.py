"""Pretrain the tiny DeepSeek-OCR-2 base that ships under ``data/tiny-base/``.

The smoke run should look like real use: a base that already reads, a domain it reads badly, and a
short LoRA fine-tune that fixes it. No real DeepSeek-OCR weights can be had offline, so the kit
pretrains its own miniature once on rendered text lines (``make tiny-base``, about an hour on two
CPU cores) and bundles the result. It is not a substitute for the real weights.

Every line of training data is rendered from its index with its own seeded RNG, so the data is
the same whatever the order or the machine, given the same pinned fonts (matplotlib's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments, set_seed

from deepsynth_ocr import metrics
from deepsynth_ocr.collate import OcrCollator
from deepsynth_ocr.config import EvalConfig
from deepsynth_ocr.data.synthetic import find_font
from deepsynth_ocr.evaluate import generate
from deepsynth_ocr.models import tiny
from deepsynth_ocr.models.families import TINY_BASE, get_family

log = logging.getLogger(__name__)

PUNCTUATION = ".,:;!?-'()/&%"
PRETRAIN_FONTS = ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono")
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class LineStyle:
    """How one family of text lines is drawn and degraded."""

    fonts: tuple[str, ...] = PRETRAIN_FONTS
    font_sizes: tuple[int, int] = (14, 20)
    max_rotation: float = 1.5  # degrees
    max_blur: float = 0.6  # Gaussian radius, pixels
    max_noise: float = 12.0  # std of additive pixel noise
    min_contrast: int = 150  # ink/background difference, out of 255


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the bundled base; recorded in its manifest."""

    seed: int = 0
    steps: int = 4000
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    heldout_lines: int = 64


def random_word(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.25:
        word = str(rng.randint(0, 10 ** rng.randint(1, 4)))
    else:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 6)))
        if kind < 0.45:
            word = word.capitalize()
        elif kind < 0.55:
            word = word.upper()
    if rng.random() < 0.2:
        word += rng.choice(PUNCTUATION)
    return word


def random_line(rng: random.Random) -> str:
    return " ".join(random_word(rng) for _ in range(rng.randint(1, 4)))


def render_line(text: str, rng: random.Random, style: LineStyle) -> Image.Image:
    """A tight, lightly degraded image of one text line, sized by the font like a scanned crop."""
    font = ImageFont.truetype(str(find_font(rng.choice(style.fonts))), rng.randint(*style.font_sizes))
    left, top, right, bottom = font.getbbox(text)
    margin = rng.randint(2, 8)
    background = rng.randint(200, 255)
    ink = max(0, background - rng.randint(style.min_contrast, 255))
    image = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), background)
    ImageDraw.Draw(image).text((margin - left, margin - top), text, font=font, fill=ink)
    if style.max_rotation:
        image = image.rotate(rng.uniform(-style.max_rotation, style.max_rotation), resample=Image.BILINEAR,
                             expand=True, fillcolor=background)
    if style.max_blur:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, style.max_blur)))
    if style.max_noise:
        noise = torch.randn(image.size[1], image.size[0], generator=torch.Generator().manual_seed(rng.getrandbits(32)))
        pixels = torch.tensor(list(image.getdata()), dtype=torch.float32).view(image.size[1], image.size[0])
        pixels = (pixels + noise * rng.uniform(0, style.max_noise)).clamp(0, 255).to(torch.uint8)
        image = Image.fromarray(pixels.numpy(), mode="L")
    return image.convert("RGB")


class RenderedLines(Dataset):
    """``n`` text lines rendered on demand; row ``i`` depends only on ``(seed, i)``."""

    def __init__(self, n: int, seed: int, style: LineStyle = LineStyle(), text_fn=random_line,
                 prompt: str = "<image>\nFree OCR."):
        self.n, self.seed, self.style, self.text_fn, self.prompt = n, seed, style, text_fn, prompt

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = random.Random(f"{self.seed}:{i}")
        text = self.text_fn(rng)
        return {"id": f"{self.seed}:{i}", "image": render_line(text, rng, self.style), "text": text, "prompt": self.prompt}


def data_hash(ds: Dataset, n: int = 64) -> str:
    """SHA-256 over the texts and pixels of the first ``n`` rows: changes if rendering changes."""
    h = hashlib.sha256()
    for i in range(min(n, len(ds))):
        row = ds[i]
        h.update(row["text"].encode())
        h.update(row["image"].tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def heldout_set(recipe: Recipe) -> RenderedLines:
    # A seed the training stream never uses, so held-out lines are unseen renderings.
    return RenderedLines(recipe.heldout_lines, seed=recipe.seed + 1_000_003)


def score(model, processor, rows, batch_size: int = 16) -> dict:
    """CER/WER of greedy predictions on ``rows`` (a sequence of rendered lines)."""
    family = get_family("tiny")
    rows = [rows[i] for i in range(len(rows))]
    refs = [r["text"] for r in rows]
    bound = max(len(processor.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs) + 8
    preds = generate(model, processor, family, rows, EvalConfig(batch_size=batch_size), bound, desc="held-out")
    return metrics.aggregate(refs, [p.text for p in preds])


def pretrain(recipe: Recipe, out_dir: Path) -> dict:
    """Train the base from scratch on rendered lines and write it, with its manifest, to ``out_dir``."""
    started = time.time()
    set_seed(recipe.seed)
    family = get_family("tiny")
    tokenizer = tiny.build_tiny_tokenizer()
    processor = tiny.build_tiny_processor(tokenizer, TINY_BASE)
    model = tiny.build_tiny_model(tokenizer, TINY_BASE, seed=recipe.seed).train()
    train_ds = RenderedLines(recipe.steps * recipe.batch_size, seed=recipe.seed)
    work = out_dir.parent / f".{out_dir.name}-work"
    args = TrainingArguments(
        output_dir=str(work), max_steps=recipe.steps, per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_steps, lr_scheduler_type="cosine",
        weight_decay=recipe.weight_decay, optim="adamw_torch", logging_steps=50, save_strategy="no",
        seed=recipe.seed, data_seed=recipe.seed, report_to="none", remove_unused_columns=False,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=OcrCollator(processor, family))
    trainer.train()
    model.eval()
    heldout = score(model, processor, heldout_set(recipe))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    manifest = {
        "what": "tiny DeepSeek-OCR-2 pretrained by deepsynth_ocr.models.tiny_base on rendered text lines; "
                "not a substitute for the real DeepSeek-OCR weights",
        "recipe": asdict(recipe),
        "geometry": asdict(TINY_BASE),
        "line_style": asdict(LineStyle()),
        "data_hash": data_hash(train_ds),
        "heldout": {k: heldout[k] for k in ("n", "cer", "wer", "exact_match")},
        "wall_time_s": round(time.time() - started, 1),
        "weights_sha256": file_sha256(out_dir / WEIGHTS),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("tiny base written to %s: held-out CER %.4f WER %.4f", out_dir, heldout["cer"], heldout["wer"])
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Pretrain the bundled tiny DeepSeek-OCR-2 base (CPU, ~1 hour).")
    ap.add_argument("--out", default="data/tiny-base")
    ap.add_argument("--steps", type=int, default=Recipe.steps)
    ap.add_argument("--seed", type=int, default=Recipe.seed)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = pretrain(Recipe(seed=args.seed, steps=args.steps), Path(args.out))
    print(json.dumps(manifest["heldout"]))


if __name__ == "__main__":
    main()
