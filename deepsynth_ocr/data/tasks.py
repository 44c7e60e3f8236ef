"""Task modes, carried by each sample's prompt so that one dataset can mix tasks.

| task | image | prompt | target |
|---|---|---|---|
| ocr | the row's image | ``data.prompt`` or the family's (``<image>\\nFree OCR.``) | ``text`` |
| markdown | the row's image | ``<image>\\n<|grounding|>Convert the document to markdown.`` | ``text`` |
| qa | the row's image, else ``text`` rendered to pages | ``<image>\\n`` + the question | ``answer`` |
| summarize | the row's image, else ``text`` rendered to pages (DeepSynth) | ``<image>\\nSummarize the document.`` | ``summary`` |

A row's own prompt (``data.prompt_column``) replaces the task's prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def task_prompt(task: Task, ocr_prompt: str, question: str = "") -> str:
    """The prompt of ``task``; ``ocr_prompt`` is what OCR rows use (config or family default)."""
    if not task.prompt:
        return ocr_prompt
    return task.prompt.format(question=question) if "question" in task.needs else task.prompt
