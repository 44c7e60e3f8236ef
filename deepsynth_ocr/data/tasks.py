"""Task modes, carried by each sample's prompt so that one dataset can mix tasks.

| task | image | prompt | target |
|---|---|---|---|
| ocr | the row's image | ``data.prompt`` or the family's (``<image>\\nFree OCR.``) | ``text`` |
| markdown | the row's image | ``<image>\\n<|grounding|>Convert the document to markdown.`` | ``text`` |
| qa | the row's image, else ``text`` rendered to pages | ``<image>\\n`` + the question | ``answer`` |
| summarize | the row's image, else ``text`` rendered to pages (DeepSynth) | ``<image>\\nSummarize the document.`` | ``summary`` |

A row's own prompt (``data.prompt_column``) replaces the task's prompt; ``data.instruction`` replaces the
task's instruction for every row without one (Q&A rows keep their question after it).

``data.preset`` reads public datasets as they are published: ``squad`` (``context``, ``question``, the nested
``answers: {text: [...], answer_start: [...]}``; its first answer is the target), ``natural_questions`` (short
answers, the long-answer paragraph rendered), ``ms_marco`` (the selected passages rendered, the well-formed answer),
``fiqa`` (BEIR's folder: question, answer post), ``cnn_dailymail`` (``article``, ``highlights``) and ``xsum``
(``document``, ``summary``). A preset fills only the columns and task left at their defaults; the row converters of
the Q&A sets are in ``converters``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from deepsynth_ocr.data import converters

IMAGE = "<image>"


@dataclass(frozen=True)
class Task:
    """``prompt`` is the task's prompt ('' for the OCR default); ``target`` names the field learned."""

    prompt: str
    target: str
    needs: tuple[str, ...] = ()  # fields the row must carry besides the target
    renders_document: bool = False  # without an image, the row's text is rendered to pages


TASKS: dict[str, Task] = {
    "ocr": Task(prompt="", target="text"),
    # DeepSeek-OCR's published document-to-markdown prompt.
    "markdown": Task(prompt=f"{IMAGE}\n<|grounding|>Convert the document to markdown.", target="text"),
    "qa": Task(prompt=f"{IMAGE}\n{{question}}", target="answer", needs=("question",), renders_document=True),
    "summarize": Task(prompt=f"{IMAGE}\nSummarize the document.", target="summary", renders_document=True),
}


@dataclass(frozen=True)
class Preset:
    """How one public dataset is read: ``settings`` are ``DataConfig`` defaults it replaces (task, columns),
    ``passthrough`` names source columns a converter needs beyond the kit's fields, and ``convert`` turns the
    mapped row into plain-text fields (``converters``), or rejects it with a counted reason."""

    settings: dict[str, str]
    passthrough: tuple[str, ...] = ()
    convert: Callable[[dict], dict] | None = None


PRESETS: dict[str, Preset] = {
    "squad": Preset({"task": "qa", "text_column": "context", "question_column": "question", "answer_column": "answers",
                     "id_column": "id"}),
    "natural_questions": Preset({"task": "qa", "text_column": "document", "question_column": "question",
                                 "answer_column": "annotations", "id_column": "id"}, convert=converters.natural_questions),
    "ms_marco": Preset({"task": "qa", "text_column": "passages", "question_column": "query", "answer_column": "answers",
                        "id_column": "query_id"}, passthrough=("wellFormedAnswers",), convert=converters.ms_marco),
    "fiqa": Preset({"task": "qa", "question_column": "query", "id_column": "id"},
                   convert=converters.fiqa),
    "cnn_dailymail": Preset({"task": "summarize", "text_column": "article", "summary_column": "highlights",
                             "id_column": "id"}),
    "xsum": Preset({"task": "summarize", "text_column": "document", "summary_column": "summary", "id_column": "id"}),
}


def preset_of(cfg) -> Preset | None:
    return PRESETS.get(getattr(cfg, "preset", "") or "")


def setting(cfg, name: str):
    """``cfg.<name>`` (a ``DataConfig``), or its preset's value when the user left the field at its default."""
    value = getattr(cfg, name)
    preset = preset_of(cfg)
    if preset is not None and name in preset.settings:
        default = type(cfg).__dataclass_fields__[name].default
        return preset.settings[name] if value == default else value
    return value


def task_prompt(task: Task, ocr_prompt: str, question: str = "", instruction: str = "") -> str:
    """The prompt of ``task``; ``ocr_prompt`` is what OCR rows use (config or family default); ``instruction``
    (``data.instruction``) replaces the task's own instruction."""
    if instruction:
        head = instruction if IMAGE in instruction else f"{IMAGE}\n{instruction}"
        return f"{head}\n{question}" if "question" in task.needs else head
    if not task.prompt:
        return ocr_prompt
    return task.prompt.format(question=question) if "question" in task.needs else task.prompt


def first_answer(value):
    """The answer text of a Q&A field: a string as it is; SQuAD's ``{"text": [...], "answer_start": [...]}`` or a
    list of strings: the first answer (``None`` when there is none, which the row's check reports)."""
    if isinstance(value, dict):
        value = value.get("text")
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value
