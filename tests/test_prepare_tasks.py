"""Task modes through the per-sample prompt: a right-to-left sample survives prepare -> collate ->
decode byte for byte, and a summarisation dataset (DeepSynth mode) prepares into page images and
trains with the smoke config."""

import json
import unicodedata

import datasets
import pytest

from deepsynth_ocr.collate import IGNORE_INDEX, make_collator
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.data.synthetic import RenderStyle, render_text
from deepsynth_ocr.jobs.prepare import prepare

from .conftest import ROOT

# Persian written with decomposed characters (alef + madda above, yeh + hamza above) and a ZWNJ:
# NFC composes them, and the result must come back unchanged.
PERSIAN_NFD = "\u0627\u0653\u0628 \u06cc\u0654 \u0645\u06cc\u200c\u062e\u0648\u0627\u0646\u0645"


def _prepare(tmp_path, rows, **prepare_fields) -> datasets.DatasetDict:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = RunConfig()
    cfg.prepare.sources = [str(manifest)]
    cfg.prepare.output_dir = str(tmp_path / "prepared")
    for k, v in prepare_fields.items():
        setattr(cfg.prepare, k, v)
    result = prepare(cfg, progress=False)
    assert result.rejected == 0, result.summary()
    return datasets.load_from_disk(str(result.output_dir))


def test_right_to_left_text_survives_prepare_collate_decode(tmp_path, tiny_parts):
    tokenizer, processor, family = tiny_parts
    render_text("fa", RenderStyle(width=96)).save(tmp_path / "fa.png")
    rows = [{"id": "fa", "image": "fa.png", "text": PERSIAN_NFD},
            {"id": "summary", "text": PERSIAN_NFD + " " + PERSIAN_NFD, "summary": PERSIAN_NFD, "task": "summarize"}]
    dd = _prepare(tmp_path, rows, validation_size=0, dpi=30)
    expected = unicodedata.normalize("NFC", PERSIAN_NFD).encode("utf-8")
    assert expected != PERSIAN_NFD.encode("utf-8")  # the test really exercises normalisation
    train = list(dd["train"])
    batch = make_collator(processor, family)(train)
    for i, row in enumerate(train):
        labels = batch["labels"][i]
        target = labels[labels != IGNORE_INDEX].tolist()
        assert target[-1] == tokenizer.eos_token_id
        decoded = tokenizer.decode(target[:-1], skip_special_tokens=True)
        assert decoded.encode("utf-8") == expected, row["id"]


def test_one_dataset_mixes_tasks_through_the_prompt(tmp_path):
    render_text("ab").save(tmp_path / "a.png")
    rows = [
        {"id": "o", "image": "a.png", "text": "ab"},
        {"id": "m", "image": "a.png", "text": "# ab", "task": "markdown"},
        {"id": "q", "text": "The sky is blue.", "question": "What colour is the sky?", "answer": "blue", "task": "qa"},
        {"id": "qi", "image": "a.png", "question": "Which letters?", "answer": "ab", "task": "qa"},
        {"id": "s", "text": "A long document. " * 20, "summary": "A document.", "task": "summarize"},
        {"id": "p", "image": "a.png", "text": "ab", "prompt": "<image>\nTranscribe exactly."},
    ]
    dd = _prepare(tmp_path, rows, validation_size=0, dpi=30)
    got = {r["id"]: (r["task"], r["prompt"], r["text"]) for r in dd["train"]}
    assert got == {
        "o": ("ocr", "<image>\nFree OCR.", "ab"),
        "m": ("markdown", "<image>\n<|grounding|>Convert the document to markdown.", "# ab"),
        "q": ("qa", "<image>\nWhat colour is the sky?", "blue"),
        "qi": ("qa", "<image>\nWhich letters?", "ab"),
        "s": ("summarize", "<image>\nSummarize the document.", "A document."),
        "p": ("ocr", "<image>\nTranscribe exactly.", "ab"),
    }
    pages = {r["id"]: r["image"].size for r in dd["train"]}
    assert pages["q"] == pages["s"] == (248, 351)  # one rendered A4 page at 30 dpi
    assert pages["qi"] == (48, 48)  # a row's own image is used as is


@pytest.mark.slow
def test_summarisation_dataset_prepares_to_pages_and_trains_with_the_smoke_config(tmp_path, monkeypatch):
    from deepsynth_ocr.jobs.train import train

    docs = [f"Report {i}. " + " ".join(f"Item {i}-{k} was checked and found in order." for k in range(30))
            for i in range(12)]
    rows = [{"id": f"d{i}", "text": doc, "summary": f"Report {i}: all in order.", "task": "summarize"}
            for i, doc in enumerate(docs)]
    dd = _prepare(tmp_path, rows, validation_size=4, dpi=40)
    assert (len(dd["train"]), len(dd["validation"])) == (8, 4)
    assert set(dd["train"]["prompt"]) == {"<image>\nSummarize the document."}
    assert dd["train"][0]["image"].size == (331, 468)

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = RunConfig.from_yaml(ROOT / "configs" / "smoke.yaml")
    cfg.output_root = str(tmp_path / "runs")
    cfg.data.train_path = cfg.data.eval_path = str(tmp_path / "prepared")
    cfg.train.max_steps, cfg.train.save_steps, cfg.train.logging_steps = 3, 0, 1
    cfg.train.per_device_batch_size = 4
    cfg.eval.max_samples = 2
    result = train(cfg)
    assert result.train_loss is not None and result.train_loss > 0
    assert result.after is not None and result.after["n"] == 2
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert [r["kept"] for r in report] == [8, 4]
    evaluated = [json.loads(x) for x in (result.run_dir / "eval" / "after.jsonl").read_text().splitlines()]
    assert {e["reference"] for e in evaluated} <= {r["summary"] for r in rows}


def _prepare_with(tmp_path, name: str, rows: list[dict], **data_fields):
    """``rows`` written as Parquet (nested structs kept, as the hub's files hold them) and prepared with ``data_fields``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    cfg = RunConfig()
    cfg.prepare.sources, cfg.prepare.output_dir = [str(source)], str(tmp_path / f"prepared-{name}")
    cfg.prepare.validation_size, cfg.prepare.dpi = 0, 30
    for k, v in data_fields.items():
        setattr(cfg.data, k, v)
    result = prepare(cfg, progress=False)
    return result, datasets.load_from_disk(str(result.output_dir))["train"]


SQUAD_ROWS = [  # the columns and nesting of rajpurkar/squad (train has one answer, validation several)
    {"id": "5733be284776f41400f3c", "title": "University_of_Notre_Dame",
     "context": "Architecturally, the school has a Catholic character. Atop the Main Building's gold dome is a statue.",
     "question": "What sits on top of the Main Building?", "answers": {"text": ["a statue", "statue"], "answer_start": [89, 91]}},
    {"id": "5733be284776f41400f3d", "title": "University_of_Notre_Dame",
     "context": "The Basilica of the Sacred Heart is beside the Main Building.",
     "question": "What is beside the Main Building?", "answers": {"text": ["The Basilica of the Sacred Heart"], "answer_start": [0]}},
    {"id": "no-answer", "title": "t", "context": "Nothing here.", "question": "Where?", "answers": {"text": [], "answer_start": []}},
]


def test_squad_rows_prepare_as_rendered_questions_with_their_first_answer(tmp_path):
    result, train = _prepare_with(tmp_path, "squad", SQUAD_ROWS, preset="squad")
    rows = {r["id"]: r for r in train}
    assert set(rows) == {"5733be284776f41400f3c", "5733be284776f41400f3d"}
    first = rows["5733be284776f41400f3c"]
    assert first["task"] == "qa" and first["text"] == "a statue"
    assert first["prompt"] == "<image>\nWhat sits on top of the Main Building?"
    assert first["image"] is not None  # the context, rendered to a page
    # the row without an answer is reported by name, not dropped silently
    (rejected,) = result.reports[0].rejections
    assert rejected.location.endswith("row 2") and rejected.reason == "empty_text" and "holds no answer" in rejected.detail


def test_cnn_dailymail_rows_prepare_as_summaries_with_a_dataset_wide_instruction(tmp_path):
    rows = [{"article": "LONDON (CNN) -- The river rose by two metres overnight. Residents were moved to higher ground.",
             "highlights": "River rose two metres.\nResidents moved.", "id": "42c027e4ff9730fbb3de84c1af0d2c506e41c3e4"}]
    _, train = _prepare_with(tmp_path, "cnn", rows, preset="cnn_dailymail",
                             instruction="Summarize the article in two sentences.")
    (row,) = list(train)
    assert row["task"] == "summarize" and row["text"] == "River rose two metres.\nResidents moved."
    assert row["prompt"] == "<image>\nSummarize the article in two sentences."
    assert row["id"] == "42c027e4ff9730fbb3de84c1af0d2c506e41c3e4"


def test_an_instruction_keeps_each_questions_text_and_explicit_columns_beat_the_preset(tmp_path):
    rows = [{"id": "q1", "passage": "Water boils at 100 degrees.", "question": "At what temperature?",
             "answers": {"text": ["100 degrees"], "answer_start": [15]}}]
    _, train = _prepare_with(tmp_path, "custom", rows, preset="squad", text_column="passage",
                             instruction="Answer from the page.")
    (row,) = list(train)
    assert row["prompt"] == "<image>\nAnswer from the page.\nAt what temperature?" and row["text"] == "100 degrees"
