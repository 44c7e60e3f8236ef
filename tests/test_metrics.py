"""CER/WER definitions with hand-computed values: empty texts, Unicode, right-to-left scripts."""

import pytest

from deepsynth_ocr import metrics as m
from deepsynth_ocr.config import EvalConfig

N = m.TextNormalization


@pytest.mark.parametrize("ref,hyp,expected", [
    ("abc", "abd", 1 / 3),  # one substitution over 3 characters
    ("kitten", "sitting", 3 / 6),  # 2 substitutions + 1 insertion
    ("ab", "abcdef", 4 / 2),  # insertions push CER above 1
    ("abc", "", 1.0),  # empty hypothesis: all deletions
    ("", "", 0.0),  # both empty: perfect
    ("", "xy", 1.0),  # empty reference, non-empty hypothesis: a full failure, not a raw count of 2
    ("  abc ", "abc", 0.0),  # ends are always stripped
])
def test_cer_hand_computed(ref, hyp, expected):
    assert m.cer(ref, hyp) == pytest.approx(expected)


@pytest.mark.parametrize("ref,hyp,expected", [
    ("the cat sat", "the cat sit down", 2 / 3),  # 1 substitution + 1 insertion over 3 words
    ("a b", "", 1.0),
    ("", "", 0.0),
    ("", "x y", 1.0),
    ("a\tb", "a b", 0.0),  # a tab separates words (jiwer alone splits on spaces only)
])
def test_wer_hand_computed(ref, hyp, expected):
    assert m.wer(ref, hyp) == pytest.approx(expected)


def test_unicode_composition_needs_nfc():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert m.cer(composed, decomposed) == pytest.approx(2 / 4)  # 1 substitution + 1 insertion
    assert m.cer(composed, decomposed, N(unicode="NFC")) == 0.0


def test_presentation_form_ligature_needs_nfkc():
    assert m.cer("\ufefb", "\u0644\u0627") == pytest.approx(2.0)  # lam-alef ligature vs lam + alef
    assert m.cer("\ufefb", "\u0644\u0627", N(unicode="NFC")) == pytest.approx(2.0)
    assert m.cer("\ufefb", "\u0644\u0627", N(unicode="NFKC")) == 0.0


def test_persian_vs_arabic_letters_unify_only_when_asked():
    persian, arabic = "\u06cc\u06a9", "\u064a\u0643"  # یک typed with Arabic yeh and kaf
    assert m.cer(persian, arabic) == pytest.approx(1.0)
    assert m.cer(persian, arabic, N(unify_arabic=True)) == 0.0
    # Arabic-Indic four vs Persian four, and a tatweel inside a word
    assert m.cer("\u06f4", "\u0664", N(unify_arabic=True)) == 0.0
    assert m.cer("\u0633\u0644\u0627\u0645", "\u0633\u0640\u0644\u0627\u0645", N(unify_arabic=True)) == 0.0


def test_rtl_sentence_punctuation_and_zwnj():
    ref = "سلام دنیا"  # 9 characters with the space
    assert m.cer(ref, ref + "!") == pytest.approx(1 / 9)
    assert m.cer(ref, ref + "؟", N(remove_punctuation=True)) == 0.0  # Arabic question mark is punctuation
    with_zwnj, with_space = "می\u200cروم", "می روم"
    assert m.cer(with_zwnj, with_space) == pytest.approx(1 / 6)
    assert m.wer(with_zwnj, with_space) == pytest.approx(2.0)  # 1 word -> 2 words: 1 sub + 1 ins


def test_case_and_whitespace_options():
    assert m.cer("ABC", "abc") == pytest.approx(1.0)
    assert m.cer("ABC", "abc", N(lowercase=True)) == 0.0
    assert m.cer("a\u00a0 b", "a b") == pytest.approx(1 / 4)  # the no-break space is one deletion
    assert m.cer("a\u00a0 b", "a b", N(collapse_whitespace=True)) == 0.0


def test_corpus_and_per_sample_aggregates():
    refs, hyps = ["abc", "", "abcd"], ["abd", "xy", "abcd"]
    s = m.aggregate(refs, hyps)
    assert s["cer"] == pytest.approx(3 / 7)  # (1 + 2 insertions + 0) / (3 + 0 + 4)
    assert s["cer_mean"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert s["cer_median"] == pytest.approx(1 / 3)
    assert s["cer_p90"] == pytest.approx(1.0)
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["catastrophic_rate"] == 0.0  # CER exactly 1 is not catastrophic; above 1 or a loop is
    assert s["n"] == 3


def test_catastrophic_failures_count_cer_above_one_and_loops():
    s = m.aggregate(["ab", "abc", "abc"], ["abcdef", "abc", "ab"], looped=[False, False, True])
    assert s["catastrophic_rate"] == pytest.approx(2 / 3)
    assert s["loop_rate"] == pytest.approx(1 / 3)


def test_all_empty_references_have_no_corpus_rate():
    s = m.aggregate(["", ""], ["", "x"])
    assert s["cer"] is None and s["wer"] is None
    assert s["cer_mean"] == pytest.approx(0.5)


def test_normalisation_is_recorded_and_raw_scores_kept():
    norm = EvalConfig(normalize_case=True).normalization()
    s = m.aggregate(["Hello"], ["hello"], norm)
    assert s["normalization"]["lowercase"] is True and s["normalization"]["unicode"] == "NFC"
    assert s["cer"] == 0.0 and s["cer_raw_mean"] == pytest.approx(1 / 5)


def test_bad_normalisation_option_names_the_field():
    from deepsynth_ocr.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="eval.normalize_unicode"):
        RunConfig.from_dict({"eval": {"normalize_unicode": "NFD"}})


def test_char_diff_marks_deletions_and_insertions():
    assert m.char_diff("kitten", "sitting") == [
        ("delete", "k"), ("insert", "s"), ("equal", "itt"), ("delete", "e"), ("insert", "i"),
        ("equal", "n"), ("insert", "g")]
