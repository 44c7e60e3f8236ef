"""Splits come from a hash of each row's id: growing a source never moves an earlier row."""

import json

import pytest

from deepsynth_ocr.config import ConfigError, RunConfig
from deepsynth_ocr.data.splits import assign_splits, unit_hash
from deepsynth_ocr.data.synthetic import render_text
from deepsynth_ocr.jobs.prepare import prepare


def test_fractions_are_fixed_hash_intervals_so_growth_moves_nothing():
    ids = [f"row-{i}" for i in range(2000)]
    sizes = {"test": 0.1, "validation": 0.15}
    before = assign_splits(ids, sizes)
    after = assign_splits(ids + [f"new-{i}" for i in range(200)], sizes)  # 10% more rows
    assert after[:2000] == before
    counts = {s: before.count(s) for s in ("train", "validation", "test")}
    assert abs(counts["test"] - 200) < 45 and abs(counts["validation"] - 300) < 55
    assert assign_splits(ids, sizes, salt="other") != before  # the salt draws different splits
    assert assign_splits(list(reversed(ids)), sizes) == list(reversed(before))  # row order is irrelevant


def test_counts_are_exact_and_growth_only_moves_rows_out_of_evaluation():
    ids = [f"row-{i}" for i in range(500)]
    sizes = {"test": 20, "validation": 30}
    before = assign_splits(ids, sizes)
    assert before.count("test") == 20 and before.count("validation") == 30
    after = assign_splits(ids + [f"new-{i}" for i in range(50)], sizes)
    assert after.count("test") == 20 and after.count("validation") == 30
    # No row that was trained on becomes an evaluation row.
    assert all(a == "train" for b, a in zip(before, after[:500], strict=True) if b == "train")
    with pytest.raises(ValueError, match="test size 600"):
        assign_splits(ids, {"test": 600})


def test_unit_hash_is_stable_and_uniform():
    assert unit_hash("abc") == unit_hash("abc") != unit_hash("abd")
    values = [unit_hash(str(i)) for i in range(5000)]
    assert 0 <= min(values) and max(values) < 1
    assert abs(sum(values) / len(values) - 0.5) < 0.02


def test_prepare_keeps_every_earlier_row_in_its_split_when_a_source_grows(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    render_text("ab").save(tmp_path / "a.png")
    manifest = tmp_path / "m.jsonl"

    def write(n):
        manifest.write_text("".join(json.dumps({"image": "a.png", "text": f"t{i}"}) + "\n" for i in range(n)))

    def splits(out):
        cfg = RunConfig()
        cfg.prepare.sources = [str(manifest)]
        cfg.prepare.output_dir = str(tmp_path / out)
        cfg.prepare.validation_size, cfg.prepare.test_size = 0.2, 0.1
        result = prepare(cfg, progress=False)
        import datasets

        dd = datasets.load_from_disk(str(result.output_dir))
        return {row_id: name for name, ds in dd.items() for row_id in ds["id"]}

    write(100)
    first = splits("v1")
    write(110)  # 10% more rows appended
    second = splits("v2")
    assert len(first) == 100 and len(second) == 110
    assert {k: second[k] for k in first} == first
    assert set(first.values()) == {"train", "validation", "test"}


@pytest.mark.parametrize("value", [-0.1, 2.5])
def test_split_sizes_must_be_a_fraction_or_a_whole_count(value):
    with pytest.raises(ConfigError, match="prepare.test_size"):
        RunConfig.from_dict({"prepare": {"test_size": value}})
