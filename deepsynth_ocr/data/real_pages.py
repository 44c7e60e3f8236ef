"""Documents at scanner resolution, for the real-size path: the pages a user's GPU run sees.

Each kind is a seeded page of plausible content rendered at 200 dpi, with its exact transcription:
- ``label``: a 90 x 50 mm shipping label (709 x 394 px): no tiles, the global view only;
- ``cheque``: a 203 x 89 mm cheque-sized form (1598 x 701 px): 2 tiles;
- ``table``: a wide table on a landscape strip, 297 x 105 mm (2339 x 827 px): 3 tiles;
- ``receipt``: a long till receipt, 80 x 300 mm (630 x 2362 px): 4 tiles;
- ``a4``: an A4 letter (1654 x 2339 px): 6 tiles.
The tile counts are those of DeepSeek-OCR-2's published rule (``families.PublishedGeometry``); the
tests check the kit's processor against that rule on these pages.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from deepsynth_ocr.data.documents import PageStyle, _font, wrap

DPI = 200
WORDS = (
    "account address agreement amount annual balance bank board budget charge client contract cost credit customer "
    "date delivery department deposit description discount document due estimate fee file invoice item letter "
    "manager meeting member month net note number office order page payment period plan policy price product "
    "project quantity quarter receipt record reference report request review sale schedule service shipment "
    "signature statement subtotal summary supplier tax team term total transfer unit value week year please "
    "confirm attached following regarding received pending approved current previous monthly final standard"
).split()
ITEMS = ("paper A4", "toner black", "stapler", "folders", "envelopes", "pens blue", "labels", "binder clips",
         "coffee beans", "notebook", "cable USB-C", "desk lamp", "batteries AA", "tape", "markers")
NAMES = ("Ada Brooks", "Ben Carter", "Chloe Dunn", "David Evans", "Emma Fisher", "Omar Haddad", "Lena Kowalski")
CITIES = ("Leeds", "Lyon", "Porto", "Graz", "Aarhus", "Ghent", "Turin")


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def _canvas(width_mm: float, height_mm: float) -> tuple[Image.Image, PageStyle]:
    style = PageStyle(dpi=DPI, width_mm=width_mm, height_mm=height_mm, margin_mm=6.0, font_size_pt=10.0)
    return Image.new("RGB", (style.px(width_mm), style.px(height_mm)), "white"), style


def _draw(image: Image.Image, style: PageStyle, lines: list[str], top_mm: float | None = None, mono: bool = False) -> None:
    font = _font("DejaVuSansMono" if mono else style.font, style.font_px)
    y = style.px(style.margin_mm if top_mm is None else top_mm)
    draw = ImageDraw.Draw(image)
    for line in lines:
        draw.text((style.px(style.margin_mm), y), line, font=font, fill="black")
        y += style.line_height


def label(rng: random.Random) -> tuple[Image.Image, str]:
    image, style = _canvas(90, 50)
    lines = [f"TO: {rng.choice(NAMES)}", f"{rng.randint(1, 299)} {rng.choice(WORDS).title()} Street",
             f"{rng.randint(10000, 99999)} {rng.choice(CITIES)}", f"Parcel {rng.randint(100000, 999999)}"]
    _draw(image, style, lines)
    return image, "\n".join(lines)


def cheque(rng: random.Random) -> tuple[Image.Image, str]:
    image, style = _canvas(203, 89)
    amount = rng.randint(100, 99999) / 100
    lines = [f"Bank of {rng.choice(CITIES)}", f"Date {rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.2026",
             f"Pay {rng.choice(NAMES)}", f"The sum of {amount:.2f} EUR", f"Ref {rng.choice(WORDS)} {rng.randint(1000, 9999)}"]
    _draw(image, style, lines)
    ImageDraw.Draw(image).line([(style.px(120), style.px(75)), (style.px(195), style.px(75))], fill="black", width=2)
    return image, "\n".join(lines)


def table(rng: random.Random) -> tuple[Image.Image, str]:
    image, style = _canvas(297, 105)
    header = f"{'Item':<16}{'Qty':>5}{'Unit':>10}{'Total':>11}"
    rows = []
    for _ in range(6):
        qty, unit = rng.randint(1, 40), rng.randint(50, 9000) / 100
        rows.append(f"{rng.choice(ITEMS):<16}{qty:>5}{unit:>10.2f}{qty * unit:>11.2f}")
    lines = [header, *rows]
    _draw(image, style, lines, mono=True)
    return image, "\n".join(lines)


def receipt(rng: random.Random) -> tuple[Image.Image, str]:
    image, style = _canvas(80, 300)
    lines, total = [f"{rng.choice(CITIES).upper()} MARKET", f"Till {rng.randint(1, 9)} 2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"], 0.0
    for _ in range(12):
        price = rng.randint(50, 2500) / 100
        total += price
        lines.append(f"{rng.choice(ITEMS)[:14]:<14}{price:>7.2f}")
    lines.append(f"{'TOTAL':<14}{total:>7.2f}")
    _draw(image, style, lines, mono=True)
    return image, "\n".join(lines)


def a4(rng: random.Random) -> tuple[Image.Image, str]:
    image, style = _canvas(210, 297)
    style_text = PageStyle(dpi=DPI, margin_mm=20.0, font_size_pt=11.0)
    paragraph = " ".join(_sentence(rng, rng.randint(8, 14)) for _ in range(4))
    lines = [f"Dear {rng.choice(NAMES)},", "", *wrap(paragraph, style_text, style_text.px(210 - 40)), "",
             "Kind regards,", rng.choice(NAMES)]
    _draw(image, style_text, lines)
    return image, "\n".join(lines).strip()


def corpus(n: int, seed: int = 0) -> list[str]:
    """Text of the kind these pages carry (sentences, names, amounts, items), without rendering: what the
    published-size tokenizer learns its merges from."""
    rng = random.Random(seed)
    return [f"{_sentence(rng, rng.randint(6, 16))} {rng.choice(NAMES)}, {rng.choice(CITIES)} "
            f"{rng.choice(ITEMS)} {rng.randint(1, 40)} x {rng.randint(50, 9000) / 100:.2f}" for _ in range(n)]


KINDS = {"label": label, "cheque": cheque, "table": table, "receipt": receipt, "a4": a4}


def render(kind: str, seed: int = 0) -> tuple[Image.Image, str]:
    """One page of ``kind`` (see ``KINDS``) and its transcription, identical for identical ``seed``."""
    if kind not in KINDS:
        raise ValueError(f"unknown page kind {kind!r}; choose one of {sorted(KINDS)}")
    return KINDS[kind](random.Random(f"{kind}-{seed}"))


def write_pages(out_dir: str | Path, kinds: list[str], seed: int = 0, name: str = "pages") -> Path:
    """Render ``kinds`` (in order; repeat a kind for several pages) into ``out_dir/<name>.jsonl`` + images."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    manifest = out_dir / f"{name}.jsonl"
    with manifest.open("w") as f:
        for i, kind in enumerate(kinds):
            image, text = render(kind, seed + i)
            path = f"images/{name}-{i:02d}-{kind}.png"
            image.save(out_dir / path)
            f.write(json.dumps({"id": f"{name}-{i:02d}-{kind}", "image": path, "text": text}) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="render scanner-resolution pages (label, cheque, table, receipt, a4)")
    p.add_argument("--out", required=True)
    p.add_argument("--kinds", default="label,cheque,table,receipt,a4", help="comma-separated, in order")
    p.add_argument("--name", default="pages")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(write_pages(args.out, args.kinds.split(","), args.seed, args.name))


if __name__ == "__main__":
    main()
