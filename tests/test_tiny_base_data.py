"""The tiny-base pretraining data (issue 7, in progress): reproducible whatever the order."""

from deepsynth_ocr.models.tiny_base import RenderedLines, data_hash


def test_rows_depend_only_on_seed_and_index():
    a, b = RenderedLines(8, seed=5), RenderedLines(8, seed=5)
    forward = [a[i] for i in range(8)]
    backward = [b[i] for i in reversed(range(8))][::-1]
    assert [r["text"] for r in forward] == [r["text"] for r in backward]
    assert all(x["image"].tobytes() == y["image"].tobytes() for x, y in zip(forward, backward, strict=True))
    assert data_hash(a, 8) == data_hash(b, 8) != data_hash(RenderedLines(8, seed=6), 8)


def test_lines_are_one_to_four_words_of_the_pretraining_alphabet():
    rows = [RenderedLines(200, seed=0)[i] for i in range(200)]
    assert all(1 <= len(r["text"].split(" ")) <= 4 for r in rows)
    assert any(c.isdigit() for r in rows for c in r["text"]) and any(c.isupper() for r in rows for c in r["text"])
    assert all(r["image"].mode == "RGB" and r["image"].height < r["image"].width * 2 for r in rows if len(r["text"]) > 3)
