"""CER and WER through jiwer, with explicit normalisation, per sample and aggregated.

Definitions the kit commits to (jiwer's own behaviour differs between versions):
- Scores are computed twice: ``raw`` on the text as given (ends stripped), and normalised with a
  ``TextNormalization`` that is recorded next to the numbers, so a reader knows what was forgiven.
- Empty reference: a sample scores 0 when the hypothesis is empty too, else 1 (every hypothesis
  character is an insertion, but a rate over zero reference characters is undefined; jiwer 4
  returns the raw count there). Empty hypothesis with a non-empty reference: 1 (all deletions).
- Corpus CER/WER = total edits / total reference length over all samples, so insertions against
  an empty reference still count in the numerator. The per-sample mean/median/p90 weight every
  sample equally instead.
- Catastrophic failure: CER > 1 or a detected repetition loop (see ``evaluate.RepetitionGuard``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import statistics
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass

import jiwer

# Arabic/Persian letters that look alike and are often typed interchangeably: Arabic yeh and alef
# maksura vs Persian yeh, Arabic kaf vs keheh, Arabic-Indic vs Persian digits; tatweel (a
# stretching stroke) carries no text. A Persian reference typed with Arabic letters would
# otherwise score every such letter as an error.
ARABIC_UNIFICATION = str.maketrans(
    {"\u064a": "\u06cc", "\u0649": "\u06cc", "\u0643": "\u06a9", "\u0640": None}
    | {chr(0x0660 + d): chr(0x06F0 + d) for d in range(10)}
)


@dataclass(frozen=True)
class TextNormalization:
    """What is forgiven before scoring. The default changes nothing but the ends (jiwer's strip)."""

    unicode: str = ""  # "", "NFC" or "NFKC" (NFKC also folds ligatures and presentation forms)
    lowercase: bool = False
    collapse_whitespace: bool = False  # any run of Unicode whitespace (tab, no-break space) -> " "
    remove_punctuation: bool = False  # Unicode categories P*
    unify_arabic: bool = False  # ARABIC_UNIFICATION

    def __post_init__(self):
        if self.unicode not in ("", "NFC", "NFKC"):
            raise ValueError(f"unicode normalisation must be '', 'NFC' or 'NFKC', got {self.unicode!r}")

    def __call__(self, text: str) -> str:
        if self.unicode:
            text = unicodedata.normalize(self.unicode, text)
        if self.unify_arabic:
            text = text.translate(ARABIC_UNIFICATION)
        steps = []
        if self.lowercase:
            steps.append(jiwer.ToLowerCase())
        if self.remove_punctuation:
            steps.append(jiwer.RemovePunctuation())
        if self.collapse_whitespace:
            steps.append(jiwer.SubstituteRegexes({r"\s+": " "}))
        steps.append(jiwer.Strip())
        return jiwer.Compose(steps)(text)

    def describe(self) -> dict:
        return asdict(self)


RAW = TextNormalization()


def _edits(reference: str, hypothesis: str, unit: str) -> tuple[int, int]:
    """(edit count, reference length) in characters or words."""
    if unit == "char":
        if not reference:
            return len(hypothesis), 0
        out = jiwer.process_characters(reference, hypothesis)
    else:
        ref_words = reference.split()
        if not ref_words:
            return len(hypothesis.split()), 0
        # jiwer splits on " " only; an explicit split makes tabs and no-break spaces separate words.
        out = jiwer.process_words(" ".join(ref_words), " ".join(hypothesis.split()))
    return out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits


def _rate(edits: int, length: int) -> float:
    if length == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / length


def cer(reference: str, hypothesis: str, norm: TextNormalization = RAW) -> float:
    return _rate(*_edits(norm(reference), norm(hypothesis), "char"))


def wer(reference: str, hypothesis: str, norm: TextNormalization = RAW) -> float:
    return _rate(*_edits(norm(reference), norm(hypothesis), "word"))


@dataclass
class SampleScore:
    """One sample's scores; the edit counts let corpus scores be recomputed from stored rows."""

    cer: float
    wer: float
    cer_raw: float
    wer_raw: float
    char_edits: int
    ref_chars: int
    word_edits: int
    ref_words: int
    exact: bool
    looped: bool
    failure: bool

    @classmethod
    def of(cls, reference: str, hypothesis: str, norm: TextNormalization, looped: bool = False) -> SampleScore:
        ref, hyp = norm(reference), norm(hypothesis)
        char_edits, ref_chars = _edits(ref, hyp, "char")
        word_edits, ref_words = _edits(ref, hyp, "word")
        c = _rate(char_edits, ref_chars)
        return cls(
            cer=c, wer=_rate(word_edits, ref_words),
            cer_raw=cer(reference, hypothesis), wer_raw=wer(reference, hypothesis),
            char_edits=char_edits, ref_chars=ref_chars, word_edits=word_edits, ref_words=ref_words,
            exact=ref == hyp, looped=looped, failure=c > 1.0 or looped,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): always one of the observed values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(scores: list[SampleScore], norm: TextNormalization = RAW) -> dict:
    """Corpus and per-sample aggregates, with the normalisation that produced them."""
    if not scores:
        raise ValueError("no samples to score")
    cers = [s.cer for s in scores]
    ref_chars = sum(s.ref_chars for s in scores)
    ref_words = sum(s.ref_words for s in scores)
    n = len(scores)
    return {
        "n": n,
        # None when every reference is empty: a corpus rate over zero characters is undefined.
        "cer": sum(s.char_edits for s in scores) / ref_chars if ref_chars else None,
        "wer": sum(s.word_edits for s in scores) / ref_words if ref_words else None,
        "cer_mean": statistics.fmean(cers),
        "cer_median": statistics.median(cers),
        "cer_p90": percentile(cers, 90),
        "wer_mean": statistics.fmean(s.wer for s in scores),
        "cer_raw_mean": statistics.fmean(s.cer_raw for s in scores),
        "wer_raw_mean": statistics.fmean(s.wer_raw for s in scores),
        "exact_match": sum(s.exact for s in scores) / n,
        "catastrophic_rate": sum(s.failure for s in scores) / n,
        "loop_rate": sum(s.looped for s in scores) / n,
        "normalization": norm.describe(),
    }


def aggregate(references: list[str], hypotheses: list[str], norm: TextNormalization = RAW,
              looped: list[bool] | None = None, tasks: list[str] | None = None) -> dict:
    """``summarize_tasks`` over reference/hypothesis pairs (all OCR unless ``tasks`` says otherwise)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    looped = looped or [False] * len(references)
    tasks = tasks or ["ocr"] * len(references)
    scores = [SampleScore.of(r, h, norm, lp) for r, h, lp in zip(references, hypotheses, looped, strict=True)]
    extra = [task_scores(t, r, h) for t, r, h in zip(tasks, references, hypotheses, strict=True)]
    return summarize_tasks(tasks, scores, extra, norm)



# --- task metrics: Q&A (SQuAD's exact match and token F1) and summaries (ROUGE-L) ------------------------------
OCR_TASKS = ("ocr", "markdown")  # scored by CER/WER; every other task by its own metric, never averaged with these
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation removed, English articles removed, whitespace collapsed.
    Punctuation is every Unicode P* character (SQuAD's script uses ASCII punctuation only)."""
    text = "".join(ch for ch in text.lower() if not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(reference: str, hypothesis: str) -> bool:
    return squad_normalize(reference) == squad_normalize(hypothesis)


def token_f1(reference: str, hypothesis: str) -> float:
    """SQuAD's token F1 over normalised whitespace tokens; when either side is empty, 1 if both are, else 0."""
    ref, hyp = squad_normalize(reference).split(), squad_normalize(hypothesis).split()
    if not ref or not hyp:
        return float(ref == hyp)
    common = sum((Counter(ref) & Counter(hyp)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class _UnicodeWords:
    """rouge-score's tokenizer interface over Unicode word runs (its default drops every non-ASCII letter,
    which would score a Persian or Chinese summary 0)."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower(), re.UNICODE)


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeWords())


def rouge_l(reference: str, hypothesis: str) -> float:
    """ROUGE-L F-measure (rouge-score's longest common subsequence) over lower-cased Unicode words, no stemming."""
    return _rouge_scorer().score(reference, hypothesis)["rougeL"].fmeasure


def task_scores(task: str, reference: str, hypothesis: str) -> dict:
    """The per-sample scores of a non-OCR task (empty for OCR tasks, which ``SampleScore`` covers)."""
    if task == "qa":
        return {"em": exact_match(reference, hypothesis), "f1": token_f1(reference, hypothesis)}
    if task == "summarize":
        return {"rouge_l": rouge_l(reference, hypothesis)}
    return {}


def summarize_tasks(tasks: list[str], scores: list[SampleScore], extra: list[dict], norm: TextNormalization = RAW) -> dict:
    """The summary of a possibly mixed eval set. CER/WER and the other top-level figures cover the OCR rows
    only (``None`` when there are none); every task present also gets its own keys, never averaged with
    another's: ``<task>_n``; ``ocr``/``markdown``: ``_cer``, ``_wer``, ``_exact_match``; ``qa``: ``_exact_match``,
    ``_f1`` (SQuAD); ``summarize``: ``_rouge_l``. ``tasks`` lists them."""
    present = sorted(set(tasks))
    ocr = [s for t, s in zip(tasks, scores, strict=True) if t in OCR_TASKS]
    if ocr:
        out = summarize(ocr, norm)
    else:
        out = {k: None for k in ("cer", "wer", "cer_mean", "cer_median", "cer_p90", "wer_mean", "cer_raw_mean",
                                 "wer_raw_mean", "exact_match", "catastrophic_rate", "loop_rate")}
        out["normalization"] = norm.describe()
    out["n"] = len(scores)
    out["tasks"] = present
    if present == ["ocr"]:
        return out
    for task in present:
        idx = [i for i, t in enumerate(tasks) if t == task]
        out[f"{task}_n"] = len(idx)
        if task in OCR_TASKS:
            part = summarize([scores[i] for i in idx], norm)
            out |= {f"{task}_cer": part["cer"], f"{task}_wer": part["wer"], f"{task}_exact_match": part["exact_match"]}
        elif task == "qa":
            out[f"{task}_exact_match"] = statistics.fmean(extra[i]["em"] for i in idx)
            out[f"{task}_f1"] = statistics.fmean(extra[i]["f1"] for i in idx)
        elif task == "summarize":
            out[f"{task}_rouge_l"] = statistics.fmean(extra[i]["rouge_l"] for i in idx)
    return out


TASK_METRICS = {"exact_match": "exact match", "f1": "token F1", "rouge_l": "ROUGE-L", "cer": "CER", "wer": "WER"}


def summarize_rows(rows: list[dict], norm: dict | None = None) -> dict:
    """``summarize_tasks`` of an evaluation's stored per-sample rows (``eval/<tag>.jsonl``), with the normalisation
    (``TextNormalization.describe()``) they were scored under."""
    fields = {f.name for f in dataclasses.fields(SampleScore)}
    tasks = [r.get("task") or "ocr" for r in rows]
    extra = [{k: r[k] for k in ("em", "f1", "rouge_l") if k in r} for r in rows]
    return summarize_tasks(tasks, [SampleScore(**{k: r[k] for k in fields}) for r in rows], extra,
                           TextNormalization(**(norm or TextNormalization().describe())))


def task_metric_rows(summaries: list[dict]) -> list[tuple[str, list]]:
    """(label, one value per summary) for every per-task metric any of ``summaries`` holds, e.g.
    ``("qa token F1", [0.14, 0.27])``: what a comparison shows beside the top-level CER."""
    keys = sorted({k for s in summaries for k in s if k.split("_", 1)[0] in ("ocr", "markdown", "qa", "summarize")
                   and k.split("_", 1)[1] in TASK_METRICS})
    return [(f"{k.split('_', 1)[0]} {TASK_METRICS[k.split('_', 1)[1]]}", [s.get(k) for s in summaries]) for k in keys]


def sample_label(row: dict, digits: int = 4) -> str:
    """A per-sample row's score on its task's own scale: EM/F1 for Q&A, ROUGE-L for summaries, else CER/WER."""
    if "f1" in row:
        return f"EM {int(row['em'])} F1 {row['f1']:.{digits}f}"
    if "rouge_l" in row:
        return f"ROUGE-L {row['rouge_l']:.{digits}f}"
    return " ".join(f"{name.upper()} {row[name]:.{digits}f}" for name in ("cer", "wer") if row.get(name) is not None)


def badness(row: dict) -> float:
    """How wrong an eval row is on its task's own scale (higher is worse): 1 - F1 for Q&A, 1 - ROUGE-L for
    summaries, else CER."""
    if "f1" in row:
        return 1 - row["f1"]
    if "rouge_l" in row:
        return 1 - row["rouge_l"]
    return row["cer"]


FAILURE_KINDS = {
    "empty": "nothing read where the reference has text",
    "repetition": "the output ended in a repetition loop",
    "catastrophic": "CER above 1 or a repetition loop",
}


def failure_kinds(row: dict) -> list[str]:
    """Which of ``FAILURE_KINDS`` an eval row shows (none for a reading that is merely imperfect)."""
    kinds = []
    if not str(row.get("prediction") or "").strip() and str(row.get("reference") or "").strip():
        kinds.append("empty")
    if row.get("looped"):
        kinds.append("repetition")
    if row.get("failure"):
        kinds.append("catastrophic")
    return kinds


def char_diff(reference: str, hypothesis: str) -> list[tuple[str, str]]:
    """(op, text) runs turning ``reference`` into ``hypothesis``; op in equal/delete/insert."""
    import difflib

    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, reference, hypothesis, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("equal", reference[i1:i2]))
            continue
        if i2 > i1:
            out.append(("delete", reference[i1:i2]))
        if j2 > j1:
            out.append(("insert", hypothesis[j1:j2]))
    return out
