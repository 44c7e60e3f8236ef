"""Render text lines to images (fonts from ``data/fonts.py``) and write sample sets as JSONL manifests."""

from __future__ import annotations

import argparse
import json
import random
import string
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from deepsynth_ocr.data.augment import Augmentations, augment
from deepsynth_ocr.data.documents import PageStyle, render_block, render_pages
from deepsynth_ocr.data.fonts import find_font
from deepsynth_ocr.errors import MissingFileError, UserError

DEFAULT_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class RenderStyle:
    """How a text is drawn: canvas size, font and its size, colours."""

    width: int = 48
    height: int = 48
    font: str = "DejaVuSans"
    font_size: int = 18
    background: tuple[int, int, int] = (255, 255, 255)
    ink: tuple[int, int, int] = (0, 0, 0)


def render_text(text: str, style: RenderStyle = RenderStyle(), min_font_size: int = 8) -> Image.Image:
    """Draw ``text`` centred on a canvas, shrinking the font until it fits; never clips text."""
    image = Image.new("RGB", (style.width, style.height), style.background)
    draw = ImageDraw.Draw(image)
    for size in range(style.font_size, min_font_size - 1, -1):
        font = ImageFont.truetype(str(find_font(style.font)), size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left, bottom - top
        if w <= style.width - 2 and h <= style.height - 2:
            draw.text(((style.width - w) / 2 - left, (style.height - h) / 2 - top), text, font=font, fill=style.ink)
            return image
    raise ValueError(
        f"text {text!r} does not fit a {style.width}x{style.height} canvas even at font size {min_font_size}"
    )


def random_strings(n: int, seed: int, min_len: int = 2, max_len: int = 4, alphabet: str = DEFAULT_ALPHABET) -> list[str]:
    """``n`` distinct random strings, reproducible for a seed."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def write_sample_set(
    out_dir: str | Path, splits: dict[str, list[str]], style: RenderStyle = RenderStyle()
) -> dict[str, Path]:
    """Render each split's texts to ``out_dir/images`` and write ``out_dir/<split>.jsonl``.

    Image paths in the manifests are relative to the manifest, so the folder can be moved.
    """
    return {split: write_rendered_split(out_dir, split, ((render_text(t, style), t) for t in texts))
            for split, texts in splits.items()}


def write_rendered_split(out_dir: str | Path, split: str, rows: Iterable[tuple[Image.Image, str]]) -> Path:
    """Save each ``(image, text)`` as ``out_dir/images/<split>_NNNN.png`` and list them in
    ``out_dir/<split>.jsonl`` (image paths relative to the manifest, so the folder can be moved)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    manifest = out_dir / f"{split}.jsonl"
    with manifest.open("w", encoding="utf-8") as f:
        for i, (image, text) in enumerate(rows):
            rel = Path("images") / f"{split}_{i:04d}.png"
            image.save(out_dir / rel)
            f.write(json.dumps({"id": f"{split}_{i:04d}", "image": rel.as_posix(), "text": text}, ensure_ascii=False) + "\n")
    return manifest


CORPUS_MODES = ("line", "paragraph", "document")


def corpus_texts(path: str | Path, mode: str, paragraphs_per_document: int = 8) -> Iterator[str]:
    """Texts of a UTF-8 corpus (a file, or a folder of .txt files), NFC-normalised.

    ``line``: each non-empty line; ``paragraph``: blocks separated by blank lines; ``document``:
    each file of a folder, or runs of ``paragraphs_per_document`` paragraphs of a single file.
    """
    if mode not in CORPUS_MODES:
        raise UserError(f"--mode must be one of {CORPUS_MODES}, got {mode!r}")
    path = Path(path)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise MissingFileError(f"corpus not found or holds no .txt files: {path}")
    for file in files:
        text = unicodedata.normalize("NFC", file.read_text(encoding="utf-8"))
        if mode == "line":
            yield from (line.strip() for line in text.splitlines() if line.strip())
            continue
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
        if mode == "paragraph":
            yield from paragraphs
        elif path.is_dir():
            yield "\n".join(paragraphs)
        else:
            for i in range(0, len(paragraphs), paragraphs_per_document):
                yield "\n".join(paragraphs[i:i + paragraphs_per_document])


def render_corpus(corpus: str | Path, out_dir: str | Path, mode: str = "line", style=None, augmentations=None,
                  seed: int = 0, limit: int = 0) -> Path:
    """Render a text corpus to ``out_dir/images`` and write ``out_dir/manifest.jsonl``.

    ``line`` and ``paragraph`` texts become one image each; a ``document`` becomes one sample per
    page (id ``doc00003-p2``) whose text is what that page shows. Each sample's augmentations
    come from its own seeded generator, so a sample is reproducible on its own.
    """

    style = style or PageStyle()
    augmentations = augmentations or Augmentations()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.jsonl"
    texts = corpus_texts(corpus, mode)
    with manifest.open("w", encoding="utf-8") as f:
        for n, text in enumerate(tqdm(texts, desc=f"render {mode}s", unit=mode, total=limit or None)):
            if limit and n >= limit:
                break
            if mode == "document":
                samples = [(f"doc{n:05d}-p{k + 1}", page.image, page.text)
                           for k, page in enumerate(render_pages(text, style)) if page.text.strip()]
            else:
                width = None if mode == "line" else style.width_mm - 2 * style.margin_mm
                samples = [(f"{mode}{n:05d}", render_block(text, style, width), text)]
            for sample_id, image, sample_text in samples:
                image = augment(image, augmentations, random.Random(f"{seed}:{sample_id}"))
                rel = Path("images") / f"{sample_id}.png"
                image.save(out_dir / rel)
                f.write(json.dumps({"id": sample_id, "image": rel.as_posix(), "text": sample_text}, ensure_ascii=False) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Render OCR samples (PNG + JSONL manifests): a small random set, "
                                             "or with --corpus, lines / paragraphs / document pages of any text.")
    ap.add_argument("--out", default="data/samples")
    ap.add_argument("--train", type=int, default=32, help="training rows")
    ap.add_argument("--eval", type=int, default=16, help="evaluation rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", help="UTF-8 text file or folder of .txt files to render instead of random strings")
    ap.add_argument("--mode", choices=CORPUS_MODES, default="line", help="with --corpus: what one image holds")
    ap.add_argument("--dpi", type=int, default=100, help="with --corpus: rendering resolution")
    ap.add_argument("--font", default="DejaVuSans", help="with --corpus: font name (see available_fonts())")
    ap.add_argument("--font-size", type=float, default=11.0, help="with --corpus: font size in points")
    ap.add_argument("--augment", choices=("none", "scanned"), default="none", help="with --corpus: degradations")
    ap.add_argument("--limit", type=int, default=0, help="with --corpus: render at most this many texts (0: all)")
    args = ap.parse_args(argv)
    if args.corpus:

        aug = Augmentations.scanned() if args.augment == "scanned" else Augmentations()
        style = PageStyle(dpi=args.dpi, font=args.font, font_size_pt=args.font_size)
        print(render_corpus(args.corpus, args.out, args.mode, style, aug, args.seed, args.limit))
        return
    texts = random_strings(args.train + args.eval, args.seed)
    paths = write_sample_set(args.out, {"train": texts[: args.train], "eval": texts[args.train :]})
    for split, path in paths.items():
        print(f"{split}: {path}")

if __name__ == "__main__":
    main()
