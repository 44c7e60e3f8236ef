"""The instruction smoke domain: questions about the smoke domain's shelf-code images, answered from the image.

Each row asks one question about a code like ``k7q2`` (letter, digit, letter, digit): the whole code, its
first letter, its last digit, its letters, or its digits. The answer is always on the label, so reading is
required, and the task is new to the tiny base (pretrained on "Free OCR." only): a short LoRA fine-tune
must raise held-out token F1 (configs/instruction-smoke.yaml, tests/test_instruction_smoke.py).

The images are the smoke domain's own (``data/smoke-domain``), referenced by relative path; only the two
manifests are written. Row ``i``'s question depends only on ``(seed, split, i)``.

    python -m deepsynth_ocr.data.instructions [--out data/instruction-smoke] [--per-eval-image 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

QUESTIONS = {
    "code": ("What is the code on the label?", lambda c: c),
    "first_letter": ("What is the first letter?", lambda c: c[0]),
    "last_digit": ("What is the last digit?", lambda c: c[3]),
    "letters": ("Which letters are on the label?", lambda c: f"{c[0]} {c[2]}"),
    "digits": ("Which digits are on the label?", lambda c: f"{c[1]} {c[3]}"),
}
SEED = 11


def question_rows(manifest: Path, out_dir: Path, split: str, per_image: int, seed: int = SEED) -> list[dict]:
    """``per_image`` distinct questions for each row of a smoke-domain ``manifest``; image paths relative to ``out_dir``."""
    rows = []
    for i, line in enumerate(manifest.read_text(encoding="utf-8").splitlines()):
        source = json.loads(line)
        image = Path(os.path.relpath(manifest.parent / source["image"], out_dir)).as_posix()
        kinds = random.Random(f"{seed}:{split}:{i}").sample(sorted(QUESTIONS), per_image)
        for kind in kinds:
            question, answer = QUESTIONS[kind]
            rows.append({"id": f"{source['id']}:{kind}", "image": image, "task": "qa", "question": question,
                         "answer": answer(source["text"])})
    return rows


def write_instruction_domain(out_dir: Path, smoke_dir: Path, per_train_image: int = 1, per_eval_image: int = 2) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, per_image in (("train", per_train_image), ("eval", per_eval_image)):
        path = out_dir / f"{split}.jsonl"
        rows = question_rows(smoke_dir / f"{split}.jsonl", out_dir, split, per_image)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        written[split] = path
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the instruction smoke domain's manifests (questions about the "
                                 "smoke domain's images).")
    ap.add_argument("--out", default="data/instruction-smoke")
    ap.add_argument("--smoke", default="data/smoke-domain", help="the smoke domain (its train/eval manifests and images)")
    ap.add_argument("--per-train-image", type=int, default=1)
    ap.add_argument("--per-eval-image", type=int, default=2)
    args = ap.parse_args(argv)
    for split, path in write_instruction_domain(Path(args.out), Path(args.smoke), args.per_train_image,
                                                args.per_eval_image).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
