"""Measured figures live in one generated place: each benchmark writes its own section of docs/benchmarks.md.

``record.main("name", main)`` runs a benchmark's ``main()``, which prints as usual; when it finishes,
replaces the section between ``<!-- begin name -->`` and ``<!-- end name -->`` with that output, the
command line, the date and the machine. Nothing else edits those sections by hand.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import sys
from datetime import date
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def write_section(name: str, body: str, doc: Path = DOC) -> None:
    text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
    block = f"<!-- begin {name} -->\n{body.rstrip()}\n<!-- end {name} -->"
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda m: block, text) if pattern.search(text) else text.rstrip() + f"\n\n## {name}\n\n{block}\n"
    doc.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def recorded(name: str):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buffer)):
        yield
    command = " ".join(["python", *sys.argv])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    write_section(name, f"`{command}`, {date.today().isoformat()}, {machine}:\n\n```\n{buffer.getvalue().rstrip()}\n```")
    print(f"recorded in {DOC}")


def main(name: str, fn) -> None:
    with recorded(name):
        fn()
