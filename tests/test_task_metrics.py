"""Each task scored by its own metric: SQuAD exact match and token F1 for Q&A, ROUGE-L for summaries, CER/WER
for OCR; a mixed eval set reports each, never an average across tasks. Values computed by hand."""

from __future__ import annotations

import json

import pytest

from deepsynth_ocr import metrics
from deepsynth_ocr.config import EvalConfig
from deepsynth_ocr.evaluate import Prediction, describe, score_and_write


def test_squad_normalisation_exact_match_and_token_f1_by_hand():
    assert metrics.squad_normalize("The Cat's  hat!") == "cats hat"
    assert metrics.exact_match("Blue", "the blue.")
    assert not metrics.exact_match("blue", "light blue")
    # reference tokens {big, red, barn}, prediction {red, barn, door}: 2 common, P = R = 2/3
    assert metrics.token_f1("the big red barn", "a red barn door") == pytest.approx(2 / 3)
    # reference {paris}, prediction {in, paris, france}: P = 1/3, R = 1, F1 = 2 * (1/3) / (4/3) = 0.5
    assert metrics.token_f1("Paris", "in Paris, France") == pytest.approx(0.5)
    assert metrics.token_f1("blue", "green") == 0.0
    assert metrics.token_f1("", "") == 1.0 and metrics.token_f1("x", "") == 0.0


def test_rouge_l_by_hand_in_english_and_in_a_script_rouge_scores_default_tokenizer_would_drop():
    # 6 words each side, longest common subsequence "the cat on the mat" = 5: P = R = F = 5/6
    assert metrics.rouge_l("the cat sat on the mat", "The cat is on the mat.") == pytest.approx(5 / 6)
    # Persian: reference 3 words, prediction 2, LCS 2: P = 1, R = 2/3, F = 0.8
    assert metrics.rouge_l("سلام دنیا خوب", "سلام خوب") == pytest.approx(0.8)
    assert metrics.rouge_l("a b c", "d e") == 0.0


def test_a_mixed_eval_reports_each_task_with_its_own_metric_and_never_averages_them():
    refs = ["AB12", "blue", "the cat sat on the mat", "CD34", "Paris"]
    hyps = ["AB12", "The blue.", "the cat is on the mat", "CD3", "in Paris, France"]
    tasks = ["ocr", "qa", "summarize", "ocr", "qa"]
    s = metrics.aggregate(refs, hyps, tasks=tasks)
    assert s["tasks"] == ["ocr", "qa", "summarize"] and s["n"] == 5
    # CER over the two OCR rows only: 1 edit over 8 characters (the Q&A and summary rows would add dozens)
    assert s["cer"] == pytest.approx(1 / 8) and s["ocr_cer"] == pytest.approx(1 / 8) and s["ocr_n"] == 2
    assert s["qa_n"] == 2 and s["qa_exact_match"] == pytest.approx(0.5) and s["qa_f1"] == pytest.approx((1 + 0.5) / 2)
    assert s["summarize_n"] == 1 and s["summarize_rouge_l"] == pytest.approx(5 / 6)
    assert not any(k in s for k in ("f1", "rouge_l", "score", "mean_score"))  # no cross-task average exists
    line = describe(s)
    assert "CER 0.1250" in line and "Q&A EM 0.5000 F1 0.7500" in line and "ROUGE-L 0.8333" in line


def test_a_q_and_a_only_eval_has_no_cer_and_pure_ocr_summaries_keep_their_shape():
    s = metrics.aggregate(["blue"], ["Blue"], tasks=["qa"])
    assert s["cer"] is None and s["qa_f1"] == 1.0 and "CER" not in describe(s)
    ocr = metrics.aggregate(["ab"], ["ab"])
    assert ocr["tasks"] == ["ocr"] and "ocr_cer" not in ocr and ocr["cer"] == 0.0


def test_the_per_sample_file_carries_each_rows_task_and_its_scores(tmp_path):
    rows = [{"id": "o", "text": "AB12", "task": "ocr"}, {"id": "q", "text": "blue", "task": "qa", "prompt": "<image>\nColour?"},
            {"id": "s", "text": "the cat sat", "task": "summarize"}]
    preds = [Prediction("AB12", True), Prediction("light blue", True), Prediction("the cat", True)]
    summary = score_and_write(rows, preds, EvalConfig(), tmp_path / "after.jsonl")
    written = {r["id"]: r for r in map(json.loads, (tmp_path / "after.jsonl").read_text().splitlines())}
    assert written["q"]["task"] == "qa" and written["q"]["em"] is False and written["q"]["f1"] == pytest.approx(2 / 3)
    assert written["q"]["prompt"] == "<image>\nColour?"
    assert written["s"]["rouge_l"] == pytest.approx(0.8) and "f1" not in written["s"]
    assert "em" not in written["o"] and written["o"]["cer"] == 0.0
    assert summary["qa_f1"] == pytest.approx(2 / 3) and summary["cer"] == 0.0
