"""Row converters for public Q&A datasets whose rows are not one column per field.

A converter takes a row's mapped fields (the kit's names: ``text``, ``question``, ``answer``, ``id``,
plus a preset's pass-through columns) as the published dataset holds them and returns plain-text
fields, or raises ``RowError`` with a reason that the data report counts by row: a row without a
usable answer is never kept and never silently dropped.

Shapes read (from the datasets as published; ``datasets`` turns a sequence of records into a record
of lists, and both forms are accepted):

- Natural Questions, the Hub's ``google-research-datasets/natural_questions``: ``document: {title,
  tokens: {token: [...], is_html: [...]}}``, ``question: {text}``, ``annotations: {long_answer: [{start_token,
  end_token}], short_answers: [{text: [...], start_token: [...], end_token: [...]}], yes_no_answer: [-1|0|1]}``;
  and Google's simplified JSONL (``document_text`` space-tokenised with HTML tags, ``question_text``,
  ``annotations: [{long_answer, short_answers: [{start_token, end_token}], yes_no_answer: "NONE"|"YES"|"NO"}]``).
- MS MARCO, ``microsoft/ms_marco`` (v1.1, v2.1): ``query``, ``passages: {is_selected, passage_text, url}``,
  ``answers``, ``wellFormedAnswers``.
- FiQA as BEIR publishes it (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``), joined by
  ``sources.read_beir`` into one row per relevant (question, answer post) pair.
"""

from __future__ import annotations

from deepsynth_ocr.errors import RowError

# Tokens kept either side of a short answer when an annotation has no long answer span.
SHORT_ANSWER_WINDOW = 100
MS_MARCO_NO_ANSWER = "No Answer Present."


def _records(value) -> list[dict]:
    """A sequence of records as a list of dicts, whether stored as one (list of dicts) or as a dict of lists."""
    if value is None:
        return []
    if isinstance(value, dict):
        columns = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in value.items()}
        n = max((len(v) for v in columns.values()), default=0)
        return [{k: v[i] if i < len(v) else None for k, v in columns.items()} for i in range(n)]
    return [v for v in value if isinstance(v, dict)]


def _text_of(value, name: str) -> str:
    if isinstance(value, dict):
        value = value.get("text")
    if not isinstance(value, str):
        raise RowError("invalid_field", f"'{name}' must be text or a {{text: ...}} record, got {type(value).__name__}")
    return value


def _document_tokens(document) -> tuple[list[str], list[bool], str]:
    """``(tokens, is_html, title)`` of an NQ document, from the Hub's record or the simplified text."""
    if isinstance(document, str):
        tokens = document.split(" ")
        return tokens, [t.startswith("<") and t.endswith(">") for t in tokens], ""
    if not isinstance(document, dict) or not isinstance(document.get("tokens"), (dict, list)):
        raise RowError("invalid_field", "'document' must be NQ's {title, tokens: {token, is_html}} or its simplified text")
    records = _records(document["tokens"])
    return [r.get("token") or "" for r in records], [bool(r.get("is_html")) for r in records], document.get("title") or ""


def _words(tokens: list[str], is_html: list[bool], start: int, end: int) -> str:
    return " ".join(t for t, h in zip(tokens[start:end], is_html[start:end], strict=True) if not h and t)


def _yes_no(value) -> str:
    return {1: "yes", 0: "no", "YES": "yes", "NO": "no"}.get(value, "")


def natural_questions(fields: dict) -> dict:
    """One NQ example as a Q&A row: the first annotation with a short (or yes/no) answer gives the target,
    and its long answer, the paragraph that holds it, is the document (a whole Wikipedia page would render to
    dozens of pages, past ``prepare.max_pages``). Rows no annotator could answer briefly are rejected as
    ``no_short_answer``."""
    tokens, is_html, title = _document_tokens(fields.get("text"))
    annotations = _records(fields.get("answer"))
    for note in annotations:
        shorts = [s for s in _records(note.get("short_answers")) if s.get("start_token") is not None]
        answer = _yes_no(note.get("yes_no_answer"))
        span = None
        if shorts:
            first = shorts[0]
            span = (int(first["start_token"]), int(first["end_token"]))
            text = first.get("text")
            answer = text if isinstance(text, str) and text.strip() else _words(tokens, is_html, *span)
        if not answer:
            continue
        long = note.get("long_answer") or {}
        start, end = int(long.get("start_token", -1)), int(long.get("end_token", -1))
        if start < 0 and span is not None:
            start, end = max(0, span[0] - SHORT_ANSWER_WINDOW), span[1] + SHORT_ANSWER_WINDOW
        document = _words(tokens, is_html, max(start, 0), end) if start >= 0 else ""
        if not document:
            raise RowError("no_context", "the annotation with an answer marks no long-answer paragraph to render")
        return {**fields, "text": f"{title}\n\n{document}" if title else document,
                "question": _text_of(fields.get("question"), "question"), "answer": answer}
    raise RowError("no_short_answer", f"none of the {len(annotations)} annotations has a short or yes/no answer")


def ms_marco(fields: dict) -> dict:
    """One MS MARCO query as a Q&A row: the passages marked ``is_selected`` (the evidence the answer was written
    from) are the document; the target is the first well-formed answer, else the first answer. Queries answered
    'No Answer Present.' are rejected as ``no_answer``, and answered ones with no selected passage as
    ``no_selected_passage`` (training on a page without the evidence teaches guessing)."""
    answers = [a for a in (*(fields.get("wellFormedAnswers") or []), *(fields.get("answer") or []))
               if isinstance(a, str) and a.strip() and a.strip() != MS_MARCO_NO_ANSWER]
    if not answers:
        raise RowError("no_answer", "the query has no answer (MS MARCO: 'No Answer Present.')")
    passages = _records(fields.get("text"))
    selected = [p.get("passage_text") or "" for p in passages if p.get("is_selected")]
    if not any(s.strip() for s in selected):
        raise RowError("no_selected_passage", f"none of the {len(passages)} passages is marked is_selected")
    return {**fields, "text": "\n\n".join(s.strip() for s in selected if s.strip()),
            "question": _text_of(fields.get("question"), "query"), "answer": answers[0]}


def fiqa(fields: dict) -> dict:
    """One relevant (question, answer post) pair of FiQA as a Q&A row. FiQA has no extracted answers: its answer
    is the whole post, so the rendered post is the document and its text the target (long-form answers read
    from the page; scored by token F1 and ROUGE-L). Long posts follow ``data.long_targets``."""
    return {**fields, "answer": fields.get("text")}
