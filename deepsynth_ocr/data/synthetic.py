"""Render text to images with fonts available offline, and write sample sets as JSONL manifests.

Fonts come from the system (Debian's fonts-dejavu-core) when present, else from the DejaVu files
that matplotlib ships inside its wheel, so rendering works on any machine the kit installs on.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/noto")
DEFAULT_ALPHABET = string.ascii_lowercase + string.digits


@lru_cache(maxsize=None)
def available_fonts() -> tuple[Path, ...]:
    """Regular (non-bold, non-italic) TrueType fonts found offline, sorted for reproducibility."""
    dirs = [Path(d) for d in SYSTEM_FONT_DIRS]
    try:
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:
        pass
    fonts: dict[str, Path] = {}
    for d in dirs:
        for p in sorted(d.glob("*.ttf")) if d.is_dir() else ():
            stem = p.stem
            if any(s in stem for s in ("Bold", "Oblique", "Italic", "Light", "Display")):
                continue
            fonts.setdefault(stem, p)  # first directory wins: system fonts before bundled
    if not fonts:
        raise RuntimeError(
            "no TrueType font found offline; install Debian's fonts-dejavu-core or matplotlib"
        )
    return tuple(fonts[k] for k in sorted(fonts))


def find_font(name: str = "DejaVuSans") -> Path:
    for p in available_fonts():
        if p.stem == name:
            return p
    raise FileNotFoundError(
        f"font {name!r} not found; available: {[p.stem for p in available_fonts()]}"
    )


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
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    manifests = {}
    for split, texts in splits.items():
        manifest = out_dir / f"{split}.jsonl"
        with manifest.open("w", encoding="utf-8") as f:
            for i, text in enumerate(texts):
                rel = Path("images") / f"{split}_{i:04d}.png"
                render_text(text, style).save(out_dir / rel)
                f.write(json.dumps({"id": f"{split}_{i:04d}", "image": rel.as_posix(), "text": text}, ensure_ascii=False) + "\n")
        manifests[split] = manifest
    return manifests


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Render a small OCR sample set (PNG + JSONL manifests).")
    ap.add_argument("--out", default="data/samples")
    ap.add_argument("--train", type=int, default=32, help="training rows")
    ap.add_argument("--eval", type=int, default=16, help="evaluation rows")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    texts = random_strings(args.train + args.eval, args.seed)
    paths = write_sample_set(args.out, {"train": texts[: args.train], "eval": texts[args.train :]})
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
