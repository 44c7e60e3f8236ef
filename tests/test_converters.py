"""The Natural Questions, MS MARCO, FiQA and XSum presets on rows shaped like the published datasets: each kept
row has the right document, question and target, and each row without a usable answer is counted by reason."""

import json

import datasets

from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.jobs.prepare import prepare

from .test_prepare_tasks import _prepare_with

NQ_TOKENS = ["<H1>", "Tyrannosaurus", "</H1>", "<P>", "Tyrannosaurus", "is", "a", "genus", "of", "dinosaur", ".",
             "</P>", "<P>", "It", "lived", "68", "million", "years", "ago", ".", "</P>"]


def _nq_row(row_id: str, question: str, long_span, short_span, short_text, yes_no=-1) -> dict:
    """A row as the Hub's google-research-datasets/natural_questions holds it (two annotators; the first left it
    unanswered): sequences of records are records of lists."""
    def long(span):
        return {"start_token": span[0], "end_token": span[1], "start_byte": -1, "end_byte": -1}

    shorts = {"start_token": [short_span[0]], "end_token": [short_span[1]], "start_byte": [0], "end_byte": [0],
              "text": [short_text]} if short_span else {"start_token": [], "end_token": [], "start_byte": [],
                                                         "end_byte": [], "text": []}
    empty = {"start_token": [], "end_token": [], "start_byte": [], "end_byte": [], "text": []}
    return {"id": row_id,
            "document": {"title": "Tyrannosaurus", "url": "https://en.wikipedia.org/wiki/Tyrannosaurus", "html": "",
                         "tokens": {"token": NQ_TOKENS, "is_html": [t.startswith("<") for t in NQ_TOKENS]}},
            "question": {"text": question, "tokens": question.split()},
            "annotations": {"id": ["a1", "a2"], "long_answer": [long((-1, -1)), long(long_span)],
                            "short_answers": [empty, shorts], "yes_no_answer": [-1, yes_no]}}


def test_natural_questions_rows_keep_short_answers_and_their_paragraph(tmp_path):
    rows = [_nq_row("797803103760793766", "when did tyrannosaurus live", (12, 21), (15, 18), "68 million years"),
            _nq_row("yes-no", "was tyrannosaurus a dinosaur", (3, 12), None, None, yes_no=1),
            _nq_row("unanswered", "who named tyrannosaurus", (-1, -1), None, None)]
    result, train = _prepare_with(tmp_path, "nq", rows, preset="natural_questions")
    kept = {r["id"]: r for r in train}
    assert set(kept) == {"797803103760793766", "yes-no"}
    first = kept["797803103760793766"]
    assert first["task"] == "qa" and first["text"] == "68 million years"
    assert first["prompt"] == "<image>\nwhen did tyrannosaurus live"
    assert kept["yes-no"]["text"] == "yes"
    (rejected,) = result.reports[0].rejections
    assert rejected.reason == "no_short_answer" and rejected.location.endswith("row 2")
    assert result.reports[0].by_reason() == {"no_short_answer": 1}


def test_natural_questions_document_is_the_long_answer_paragraph_without_html():
    from deepsynth_ocr.data.converters import natural_questions

    row = _nq_row("x", "when", (12, 21), (15, 18), "68 million years")
    fields = natural_questions({"text": row["document"], "question": row["question"], "answer": row["annotations"]})
    assert fields["text"] == "Tyrannosaurus\n\nIt lived 68 million years ago ."
    assert fields["question"] == "when"


def test_natural_questions_simplified_jsonl_with_explicit_columns(tmp_path):
    """Google's simplified file: the document is one space-tokenised string with its HTML tags, short answers are
    token spans only, yes/no is a word."""
    text = " ".join(NQ_TOKENS)
    rows = [{"example_id": 5655493461695504401, "document_text": text, "question_text": "when did it live",
             "document_url": "https://en.wikipedia.org/wiki/Tyrannosaurus",
             "annotations": [{"annotation_id": 1, "yes_no_answer": "NONE",
                              "long_answer": {"start_token": 12, "end_token": 21, "candidate_index": 1},
                              "short_answers": [{"start_token": 15, "end_token": 18}]}],
             "long_answer_candidates": [{"start_token": 3, "end_token": 12, "top_level": True}]},
            {"example_id": 2, "document_text": text, "question_text": "no", "annotations": [
                {"annotation_id": 2, "yes_no_answer": "NO", "long_answer": {"start_token": 3, "end_token": 12},
                 "short_answers": []}]}]
    manifest = tmp_path / "simplified-nq-train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig()
    cfg.prepare.sources, cfg.prepare.output_dir = [str(manifest)], str(tmp_path / "out")
    cfg.prepare.validation_size, cfg.prepare.dpi = 0, 30
    cfg.data.preset, cfg.data.text_column, cfg.data.question_column = "natural_questions", "document_text", "question_text"
    cfg.data.id_column = "example_id"
    result = prepare(cfg, progress=False)
    kept = {r["id"]: r["text"] for r in datasets.load_from_disk(str(result.output_dir))["train"]}
    assert kept == {"5655493461695504401": "68 million years", "2": "no"}


MS_MARCO_ROWS = [  # microsoft/ms_marco v2.1: passages is a record of lists, wellFormedAnswers often empty
    {"answers": ["Results-Based Accountability is a disciplined way of thinking."], "query": "what is rba",
     "query_id": 19699, "query_type": "DESCRIPTION", "wellFormedAnswers": [],
     "passages": {"is_selected": [0, 1, 0], "url": ["u1", "u2", "u3"],
                  "passage_text": ["Since 2007, the RBA's outstanding reputation has been affected.",
                                   "Results-Based Accountability is a disciplined way of thinking and taking action.",
                                   "RBA is a registered trademark."]}},
    {"answers": ["20-25 minutes"], "query": "how long to boil an egg", "query_id": 102506, "query_type": "NUMERIC",
     "wellFormedAnswers": ["It takes 20 to 25 minutes to boil an egg."],
     "passages": {"is_selected": [1, 0], "url": ["u4", "u5"],
                  "passage_text": ["Boil the eggs for 20-25 minutes.", "Eggs are laid by hens."]}},
    {"answers": ["No Answer Present."], "query": "what is xyzzy", "query_id": 3, "query_type": "ENTITY",
     "wellFormedAnswers": [], "passages": {"is_selected": [0], "url": ["u6"], "passage_text": ["Unrelated."]}},
    {"answers": ["blue"], "query": "sky colour", "query_id": 4, "query_type": "DESCRIPTION", "wellFormedAnswers": [],
     "passages": {"is_selected": [0, 0], "url": ["u7", "u8"], "passage_text": ["One.", "Two."]}},
]


def test_ms_marco_rows_render_the_selected_passages_and_prefer_the_well_formed_answer(tmp_path):
    from deepsynth_ocr.data.converters import ms_marco

    result, train = _prepare_with(tmp_path, "msmarco", MS_MARCO_ROWS, preset="ms_marco")
    kept = {r["id"]: r for r in train}
    assert set(kept) == {"19699", "102506"}
    assert kept["19699"]["text"] == "Results-Based Accountability is a disciplined way of thinking."
    assert kept["102506"]["text"] == "It takes 20 to 25 minutes to boil an egg."
    assert kept["102506"]["prompt"] == "<image>\nhow long to boil an egg"
    assert result.reports[0].by_reason() == {"no_answer": 1, "no_selected_passage": 1}
    row = MS_MARCO_ROWS[0]
    fields = ms_marco({"text": row["passages"], "question": row["query"], "answer": row["answers"],
                       "wellFormedAnswers": row["wellFormedAnswers"]})
    assert fields["text"] == row["passages"]["passage_text"][1]  # only the evidence is rendered


def test_fiqa_beir_folder_pairs_each_question_with_its_relevant_posts(tmp_path):
    root = tmp_path / "fiqa"
    (root / "qrels").mkdir(parents=True)
    corpus = [{"_id": "18850", "title": "", "text": "Index funds track the market at low cost."},
              {"_id": "196463", "title": "", "text": "Bonds pay a fixed coupon until maturity."},
              {"_id": "9", "title": "", "text": "Not relevant to anything."}]
    queries = [{"_id": "0", "text": "What is an index fund?", "metadata": {}},
               {"_id": "4", "text": "How do bonds pay?", "metadata": {}}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n0\t18850\t1\n4\t196463\t1\n4\t9\t0\n0\t777\t1\n")
    cfg = RunConfig()
    cfg.prepare.sources, cfg.prepare.output_dir = [str(root)], str(tmp_path / "out")
    cfg.prepare.validation_size, cfg.prepare.dpi = 0, 30
    cfg.data.preset = "fiqa"
    result = prepare(cfg, progress=False)
    report = result.reports[0]
    assert report.source_type == "beir"
    kept = {r["id"]: r for r in datasets.load_from_disk(str(result.output_dir))["train"]}
    assert set(kept) == {"0-18850", "4-196463"}  # the score-0 pair is not a relevant answer
    assert kept["0-18850"]["prompt"] == "<image>\nWhat is an index fund?"
    assert kept["0-18850"]["text"] == "Index funds track the market at low cost."
    (missing,) = report.rejections
    assert missing.reason == "missing_field" and "'777'" in missing.detail and missing.location.endswith("train.tsv:5")


def test_xsum_rows_prepare_as_one_sentence_summaries(tmp_path):
    rows = [{"document": "The full cost of damage in Newton Stewart is still being assessed. Repair work is ongoing.",
             "summary": "Clean-up operations are continuing across the Scottish Borders.", "id": "35232142"}]
    _, train = _prepare_with(tmp_path, "xsum", rows, preset="xsum")
    (row,) = list(train)
    assert row["task"] == "summarize" and row["id"] == "35232142"
    assert row["text"] == "Clean-up operations are continuing across the Scottish Borders."
    assert row["prompt"] == "<image>\nSummarize the document."


def test_max_rows_stops_a_source_after_that_many_kept_rows_and_says_so(tmp_path):
    """A sample of a large Q&A set: rejected rows do not count towards the limit, and the report names the stop."""
    rows = [_nq_row("unanswered", "who", (-1, -1), None, None)] + [
        _nq_row(f"q{i}", f"question {i}", (12, 21), (15, 18), "68 million years") for i in range(5)]
    result, train = _prepare_with(tmp_path, "nq", rows, preset="natural_questions")
    assert len(train) == 5 and not result.reports[0].stopped_early
    cfg = RunConfig()
    cfg.prepare.sources, cfg.prepare.output_dir = [str(tmp_path / "nq.parquet")], str(tmp_path / "sample")
    cfg.prepare.validation_size, cfg.prepare.dpi, cfg.prepare.max_rows = 0, 30, 2
    cfg.data.preset = "natural_questions"
    sample = prepare(cfg, progress=False)
    report = sample.reports[0]
    assert [r["id"] for r in datasets.load_from_disk(str(sample.output_dir))["train"]] == ["q0", "q1"]
    assert (report.read, report.kept, report.rejected, report.stopped_early) == (3, 2, 1, True)
    assert "stopped at prepare.max_rows" in report.summary()
