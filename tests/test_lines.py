"""Rendered text lines: the tiny base's pretraining data and the smoke domain, reproducible whatever the order."""

import json
import re

from deepsynth_ocr.data.lines import (
    SMOKE_SEED,
    SMOKE_STYLE,
    LineStyle,
    RenderedLines,
    code_line,
    data_hash,
    write_smoke_domain,
)

from .conftest import ROOT


def test_rows_depend_only_on_seed_and_index():
    a, b = RenderedLines(8, seed=5), RenderedLines(8, seed=5)
    forward = [a[i] for i in range(8)]
    backward = [b[i] for i in reversed(range(8))][::-1]
    assert [r["text"] for r in forward] == [r["text"] for r in backward]
    assert all(x["image"].tobytes() == y["image"].tobytes() for x, y in zip(forward, backward, strict=True))
    assert data_hash(a, 8) == data_hash(b, 8) != data_hash(RenderedLines(8, seed=6), 8)


def test_pretraining_texts_are_two_to_four_letters_or_digits_drawn_in_several_fonts():
    rows = [RenderedLines(200, seed=0)[i] for i in range(200)]
    assert all(re.fullmatch(r"[a-z0-9]{2,4}", r["text"]) for r in rows)
    assert {len(r["text"]) for r in rows} == {2, 3, 4}
    assert all(r["image"].mode == "RGB" and r["image"].width >= r["image"].height for r in rows)
    assert len(LineStyle().fonts) >= 3


def test_smoke_domain_is_codes_in_a_font_the_base_never_saw():
    rows = [RenderedLines(50, SMOKE_SEED, SMOKE_STYLE, code_line)[i] for i in range(50)]
    assert all(re.fullmatch(r"[a-z]\d[a-z]\d", r["text"]) for r in rows)
    assert not set(SMOKE_STYLE.fonts) & set(LineStyle().fonts)


def test_bundled_smoke_domain_is_what_the_generator_writes(tmp_path):
    write_smoke_domain(tmp_path, train=3, eval=3)
    bundled = ROOT / "data" / "smoke-domain"
    for split, n in (("train", 1024), ("eval", 64)):
        rows = [json.loads(x) for x in (bundled / f"{split}.jsonl").read_text().splitlines()]
        fresh = [json.loads(x) for x in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n and rows[:3] == fresh
        for row in fresh:
            assert (bundled / row["image"]).read_bytes() == (tmp_path / row["image"]).read_bytes()
