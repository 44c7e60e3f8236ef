"""Rendered lines, paragraphs and pages; right-to-left text; seeded augmentations; corpus rendering."""

import hashlib
import random

import numpy as np
import pytest
from PIL import Image, ImageFont

from deepsynth_ocr.config import DataConfig
from deepsynth_ocr.data.augment import Augmentations, augment
from deepsynth_ocr.data.documents import (
    DocumentTooLong,
    PageStyle,
    render_block,
    render_document,
    render_pages,
    rtl_shaping_available,
)
from deepsynth_ocr.data.fonts import find_font
from deepsynth_ocr.data.prepare import prepare_manifest
from deepsynth_ocr.data.synthetic import render_corpus

STYLE = PageStyle(dpi=50)
LOREM = " ".join(f"word{i}" for i in range(600))
PERSIAN = "سلام دنیا، این یک متن فارسی است."


def _ink_columns(image: Image.Image) -> np.ndarray:
    return np.where((np.asarray(image.convert("L")) < 128).any(axis=0))[0]


def test_pages_keep_every_word_in_order_inside_the_margins():
    pages = render_pages(LOREM, STYLE)
    assert len(pages) >= 2
    assert " ".join(" ".join(p.text.split()) for p in pages) == LOREM
    margin = STYLE.px(STYLE.margin_mm)
    for page in pages:
        assert page.image.size == (STYLE.px(210), STYLE.px(297))
        cols = _ink_columns(page.image)
        assert cols.min() >= margin - 1 and cols.max() <= page.image.width - margin + 1
    assert [p.image.tobytes() for p in render_pages(LOREM, STYLE)] == [p.image.tobytes() for p in pages]


def test_documents_stack_pages_and_refuse_too_many():
    image = render_document(LOREM, STYLE, max_pages=5)
    n = len(render_pages(LOREM, STYLE))
    assert image.height == n * STYLE.px(297) + (n - 1) * 8
    with pytest.raises(DocumentTooLong, match="prepare.max_pages=1"):
        render_document(LOREM, STYLE, max_pages=1)


def test_a_line_canvas_fits_its_text_and_paragraphs_wrap():
    line = render_block("hello world", STYLE)
    assert line.width < 200 and len(_ink_columns(line)) > 20
    para = render_block(LOREM[:400], STYLE, width_mm=60)
    assert para.width == STYLE.px(60) and para.height > 5 * STYLE.line_height


@pytest.mark.skipif(not rtl_shaping_available(), reason="Pillow has no libraqm/FriBiDi here: right-to-left "
                    "text cannot be shaped (install Debian's libfribidi0); the issue requires it only when available")
def test_right_to_left_text_is_shaped_and_right_aligned():
    font_path = str(find_font("DejaVuSans"))
    shaped = ImageFont.truetype(font_path, 24).getlength(PERSIAN)
    unshaped = ImageFont.truetype(font_path, 24, layout_engine=ImageFont.Layout.BASIC).getlength(PERSIAN)
    assert shaped < 0.9 * unshaped  # joined letter forms are narrower than isolated ones
    page = render_pages(PERSIAN, STYLE)[0].image
    cols = _ink_columns(page)
    margin = STYLE.px(STYLE.margin_mm)
    assert abs(cols.max() - (page.width - margin)) <= 2  # flush right
    assert cols.min() > page.width / 2  # a short line does not reach the left half


def test_augmentations_are_seeded_and_each_changes_the_image():
    base = render_block("Scanned text 123", PageStyle(dpi=100))
    aug = Augmentations.scanned()
    a = augment(base, aug, random.Random(1))
    assert augment(base, aug, random.Random(1)).tobytes() == a.tobytes()
    assert augment(base, aug, random.Random(2)).tobytes() != a.tobytes()
    for name, value in (("texture", 0.5), ("rotation", 3.0), ("perspective", 0.05), ("blur", 1.0),
                        ("noise", 10.0), ("jpeg_quality", 10)):
        out = augment(base, Augmentations(**{name: value}), random.Random(0))
        assert out.mode == "RGB" and out.tobytes() != base.tobytes(), name


@pytest.mark.parametrize("mode", ["line", "paragraph", "document"])
def test_corpus_renders_reproducibly_and_prepares_cleanly(tmp_path, tiny_parts, mode):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i} {LOREM[: 300]}" if mode == "document" else f"Line {i}\nmore {i}"
                                  for i in range(3)) + "\n\n" + PERSIAN + "\n", encoding="utf-8")
    style = PageStyle(dpi=40)
    manifest = render_corpus(corpus, tmp_path / "a", mode, style, Augmentations.scanned(), seed=3)
    again = render_corpus(corpus, tmp_path / "b", mode, style, Augmentations.scanned(), seed=3)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "a" / "images").iterdir())]
    assert digest == [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / "b" / "images").iterdir())]
    assert manifest.read_text() == again.read_text()
    ds, report = prepare_manifest(manifest, DataConfig(max_target_tokens=4096), tiny_parts[0], "<image>\nFree OCR.")
    assert report.rejected == 0
    expected = {"line": 7, "paragraph": 4}.get(mode)
    if expected:
        assert len(ds) == expected
    else:
        assert len(ds) >= 1 and all(row_id.startswith("doc") for row_id in ds["id"])
    assert PERSIAN in "\n".join(ds["text"])
