"""The five worked recipes of docs/examples.md: each config loads, each command the page gives names a config
that exists, and each recipe prepares rows shaped like its source into the prompt and target the page says
(the tiny base's tokenizer stands in for DeepSeek-OCR-2's; the hub sources are local files of the same shape)."""

import csv
import json
import re

import datasets
import pytest

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.synthetic import RenderStyle, render_text
from deepsynth_ocr.jobs.prepare import prepare

from .conftest import ROOT
from .test_converters import _nq_row

RECIPES = sorted((ROOT / "configs" / "examples").glob("*.yaml"))
WIDE = RenderStyle(width=256)
PAGE = (ROOT / "docs" / "examples.md").read_text()


def test_there_are_five_recipes_and_the_page_runs_only_configs_that_exist():
    assert [p.stem for p in RECIPES] == ["custom-instruction", "markdown", "ocr", "qa-natural-questions", "summary-xsum"]
    named = set(re.findall(r"-c (configs/examples/[\w-]+\.yaml)", PAGE))
    assert named == {str(p.relative_to(ROOT)) for p in RECIPES}
    for line in re.findall(r"^deepsynth-ocr .*$", PAGE, flags=re.M):
        assert (ROOT / re.search(r"-c (\S+)", line).group(1)).is_file(), line


def _source(kind: str, tmp_path):
    """A local source shaped like the recipe's: the user's files, or the hub dataset's rows as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "ocr":
        folder = tmp_path / "my-scans"
        folder.mkdir()
        for i, text in enumerate(["Invoice 0042", "Total 13.50"]):
            render_text(text, WIDE).save(folder / f"page{i}.png")
            (folder / f"page{i}.txt").write_text(text)
        return folder, "Invoice 0042"
    if kind == "markdown":
        render_text("Name Qty", WIDE).save(tmp_path / "t.png")
        (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "t.png", "text": "| Name | Qty |\n|---|---|"}) + "\n")
        return tmp_path / "rows.jsonl", "| Name | Qty |\n|---|---|"
    if kind == "custom-instruction":
        render_text("TOTAL EUR 12.40", WIDE).save(tmp_path / "r.png")
        with (tmp_path / "receipts.csv").open("w", newline="") as f:
            csv.writer(f).writerows([["image", "total"], ["r.png", "12.40 EUR"]])
        return tmp_path / "receipts.csv", "12.40 EUR"
    if kind == "qa-natural-questions":
        rows = [_nq_row("nq1", "when did tyrannosaurus live", (12, 21), (15, 18), "68 million years")]
        answer = "68 million years"
    else:
        rows = [{"document": "The river rose by two metres overnight in Hawick.", "summary": "Floods hit Hawick.", "id": "1"}]
        answer = "Floods hit Hawick."
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hub.parquet")
    return tmp_path / "hub.parquet", answer


EXPECTED_PROMPT = {
    "ocr": "<image>\nFree OCR.",
    "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
    "qa-natural-questions": "<image>\nwhen did tyrannosaurus live",
    "summary-xsum": "<image>\nSummarize the document.",
    "custom-instruction": "<image>\nGive the receipt's total and its currency, as on the receipt.",
}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_prepares_its_source_into_the_prompt_and_target_it_promises(recipe, tmp_path):
    source, target = _source(recipe.stem, tmp_path)
    cfg = RunConfig.load(recipe, [f"prepare.sources={json.dumps([str(source)])}", f"prepare.output_dir={tmp_path / 'out'}",
                                  "prepare.validation_size=0", "prepare.dpi=30", "model.family=tiny",
                                  "model.name_or_path=", "model.load_in_4bit=false"])
    result = prepare(cfg, progress=False)
    assert result.rejected == 0, result.summary()
    rows = list(datasets.load_from_disk(str(result.output_dir))["train"])
    assert target in [r["text"] for r in rows]
    assert {r["prompt"] for r in rows} == {EXPECTED_PROMPT[recipe.stem]}
    assert cfg.data.train_path == cfg.data.eval_path == f"data/prepared/{cfg.name}"  # what train reads after prepare
