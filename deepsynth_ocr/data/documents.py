"""Lay text out on pages at a chosen DPI: single lines, paragraphs, and multi-page documents.

Right-to-left paragraphs (Arabic, Persian, Hebrew) are right-aligned; Pillow shapes and orders
them correctly when it has libraqm (its wheels bundle it; FriBiDi comes from the system package
``libfribidi0``) and the font has the glyphs (DejaVu Sans does; Debian's ``fonts-noto-core`` adds
Noto Naskh/Nastaliq). ``rtl_shaping_available()`` says whether that is the case.

A document that spans several pages becomes one tall image (pages stacked with a grey gap): the
kit's collator, like the published DeepSeek-OCR recipes, feeds one ``<image>`` per sample, and
the processor tiles a tall image into up to 6 crops, which is readable up to about 3 A4 pages.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont, features

from deepsynth_ocr.data.fonts import find_font

MM_PER_INCH = 25.4
PAGE_GAP_PX = 8


def rtl_shaping_available() -> bool:
    """True when Pillow can shape and reorder right-to-left scripts (libraqm + FriBiDi)."""
    return bool(features.check("raqm"))


def is_rtl(text: str) -> bool:
    """Whether the first strongly directional character of ``text`` is right-to-left."""
    for ch in text:
        kind = unicodedata.bidirectional(ch)
        if kind in ("R", "AL"):
            return True
        if kind == "L":
            return False
    return False


@dataclass(frozen=True)
class PageStyle:
    """Page geometry in millimetres, font size in points; pixels follow from ``dpi``."""

    dpi: int = 100
    width_mm: float = 210.0
    height_mm: float = 297.0
    margin_mm: float = 15.0
    font: str = "DejaVuSans"
    font_size_pt: float = 11.0
    line_spacing: float = 1.35
    background: tuple[int, int, int] = (255, 255, 255)
    ink: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def from_config(cls, cfg) -> PageStyle:
        """From a ``PrepareConfig``."""
        return cls(dpi=cfg.dpi, width_mm=cfg.page_width_mm, height_mm=cfg.page_height_mm, margin_mm=cfg.margin_mm,
                   font=cfg.font, font_size_pt=cfg.font_size_pt)

    def px(self, mm: float) -> int:
        return round(mm / MM_PER_INCH * self.dpi)

    @property
    def font_px(self) -> int:
        return max(4, round(self.font_size_pt * self.dpi / 72))

    @property
    def line_height(self) -> int:
        ascent, descent = _font(self.font, self.font_px).getmetrics()
        return max(1, round((ascent + descent) * self.line_spacing))


@lru_cache(maxsize=64)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(find_font(name)), size)


def wrap(text: str, style: PageStyle, width_px: int) -> list[str]:
    """Lines of ``text`` that fit ``width_px``: paragraphs kept (an empty line between them stays),
    words wrapped greedily, a word wider than the line broken between characters."""
    font = _font(style.font, style.font_px)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        words = paragraph.split()
        if not words:
            lines.append("")
            continue
        line = ""
        for word in words:
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width_px:
                line = candidate
                continue
            if line:
                lines.append(line)
            while len(word) > 1 and font.getlength(word) > width_px:
                cut = 1
                while cut < len(word) - 1 and font.getlength(word[:cut + 1]) <= width_px:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _draw_lines(image: Image.Image, lines: list[str], style: PageStyle, left: int, top: int, right: int) -> None:
    draw = ImageDraw.Draw(image)
    font = _font(style.font, style.font_px)
    y = top
    for line in lines:
        if line:
            x = right - font.getlength(line) if is_rtl(line) else left
            draw.text((x, y), line, font=font, fill=style.ink)
        y += style.line_height


@dataclass
class Page:
    image: Image.Image
    text: str  # the lines drawn on this page, joined by newlines


def render_pages(text: str, style: PageStyle = PageStyle()) -> list[Page]:
    """``text`` laid out on as many pages as it needs."""
    width, height, margin = style.px(style.width_mm), style.px(style.height_mm), style.px(style.margin_mm)
    lines = wrap(text, style, width - 2 * margin)
    per_page = max(1, (height - 2 * margin) // style.line_height)
    pages = []
    for start in range(0, len(lines), per_page):
        chunk = lines[start:start + per_page]
        image = Image.new("RGB", (width, height), style.background)
        _draw_lines(image, chunk, style, margin, margin, width - margin)
        pages.append(Page(image, "\n".join(chunk).strip("\n")))
    return pages


def stack_pages(images: list[Image.Image], gap: int = PAGE_GAP_PX) -> Image.Image:
    """Pages one under the other, separated by a grey band, as one image."""
    width = max(im.width for im in images)
    out = Image.new("RGB", (width, sum(im.height for im in images) + gap * (len(images) - 1)), (128, 128, 128))
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height + gap
    return out


class DocumentTooLong(ValueError):
    def __init__(self, pages: int, max_pages: int):
        super().__init__(f"renders to {pages} pages, more than prepare.max_pages={max_pages}")
        self.pages = pages


def render_document(text: str, style: PageStyle = PageStyle(), max_pages: int = 3) -> Image.Image:
    """``text`` rendered to pages and stacked into one image; raises ``DocumentTooLong``."""
    pages = render_pages(text, style)
    if len(pages) > max_pages:
        raise DocumentTooLong(len(pages), max_pages)
    return stack_pages([p.image for p in pages])


def render_block(text: str, style: PageStyle = PageStyle(), width_mm: float | None = None) -> Image.Image:
    """A paragraph (or a single line) on a canvas exactly as tall as its lines, with a small margin.

    ``width_mm`` None fits the canvas to the longest line, for single-line samples.
    """
    pad = max(2, style.font_px // 3)
    font = _font(style.font, style.font_px)
    if width_mm is None:
        lines = text.split("\n")
        inner = max(1, max(round(font.getlength(line)) for line in lines))
    else:
        inner = style.px(width_mm) - 2 * pad
        lines = wrap(text, style, inner)
    image = Image.new("RGB", (inner + 2 * pad, len(lines) * style.line_height + 2 * pad), style.background)
    _draw_lines(image, lines, style, pad, pad, pad + inner)
    return image
