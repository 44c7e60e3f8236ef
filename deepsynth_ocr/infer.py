"""Batch OCR of image files, folders, globs and PDFs into a JSONL file that streams and resumes.

Owns input expansion and the output file; ``jobs.infer`` loads the model and calls ``ocr_inputs``.

One output row per input (a PDF page is an input: ``file.pdf#page=2``), written and flushed as
soon as its batch is done, so an interrupted run loses at most one batch. A rerun reads the file
first and skips every input already there. An input that cannot be read or recognised becomes an
error row (``"error": "..."``) and the run goes on; error rows count as done, so a rerun does not
repeat them (delete those lines to retry).

Backends: ``hf`` (transformers batched greedy generate with the kit's repetition guard; tested)
and ``vllm`` for GPU throughput (import-guarded, not installed or tested here). The ``vllm`` path
follows the official DeepSeek-OCR vLLM recipe: greedy, ``NGramPerReqLogitsProcessor`` with
``ngram_size=30, window_size=90`` and the table tokens ``<td>``/``</td>`` whitelisted, no prefix
caching; give it merged weights (``deepsynth-ocr export``) as ``model.name_or_path``.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from deepsynth_ocr.collate import make_collator
from deepsynth_ocr.config import DataConfig, RunConfig
from deepsynth_ocr.data.images import load_image, render_pdf_page
from deepsynth_ocr.errors import MissingFileError, UserError
from deepsynth_ocr.evaluate import Prediction, generate_batch
from deepsynth_ocr.models.families import get_family
from deepsynth_ocr.timing import StageClock

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class InferInput:
    key: str  # unique id of the input in the output file: the absolute path, plus #page=N for PDFs
    path: Path
    page: int | None = None  # 1-based PDF page


@dataclass
class InferSummary:
    inputs: int
    skipped: int  # already in the output file
    written: int
    errors: int  # error rows written by this run
    timing: dict = field(default_factory=dict)  # StageClock.take(): time/decode_s, time/preprocess_s, time/generate_s, ...

    def __str__(self) -> str:
        spent = ", ".join(f"{k.removeprefix('time/').removesuffix('_s')} {v:.2f} s" for k, v in self.timing.items()
                          if k.startswith("time/") and k != "time/wall_s")
        rate = f", {self.timing['images_per_s']:.1f} inputs/s" if "images_per_s" in self.timing else ""
        return (f"{self.inputs} inputs: {self.skipped} already done, {self.written} written "
                f"({self.errors} errors)" + (f"; {spent}{rate}" if spent else ""))


def require_some_input(specs: list[str]) -> tuple[list[InferInput], list[dict]]:
    """``expand_inputs(specs)``, or a one-line error when not one spec names an existing image or PDF (a
    typo, a wrong folder): a run that would write only error rows and exit 0 is no run."""
    items, spec_errors = expand_inputs(specs)
    if not items and not any("file" in e for e in spec_errors):
        raise MissingFileError(f"no input found: {', '.join(e['input'] for e in spec_errors)} "
                               "(no such file, or no image/PDF file in that folder or glob)")
    return items, spec_errors


def _pdf_pages(path: Path) -> int:
    import pypdfium2

    with pypdfium2.PdfDocument(str(path)) as pdf:
        return len(pdf)


def expand_inputs(specs: list[str]) -> tuple[list[InferInput], list[dict]]:
    """Files, folders (recursive; image and PDF files only) and globs -> inputs, plus error rows for
    specs that match nothing and PDFs that cannot be opened."""
    items: list[InferInput] = []
    errors: list[dict] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | {".pdf"})
        elif path.is_file():
            files = [path]
        elif glob.has_magic(spec):
            files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        else:
            files = []
        if not files:
            errors.append({"input": spec, "error": "no such file, or no image/PDF file in this folder or glob"})
        for f in files:
            f = f.resolve()
            if f.suffix.lower() != ".pdf":
                items.append(InferInput(str(f), f))
                continue
            try:
                n = _pdf_pages(f)
            except Exception as e:  # pypdfium2 raises its own PdfiumError for damaged files
                errors.append({"input": str(f), "file": str(f), "error": f"unreadable PDF: {e}"})
                continue
            items += [InferInput(f"{f}#page={i}", f, i) for i in range(1, n + 1)]
    seen: set[str] = set()
    unique = [i for i in items if not (i.key in seen or seen.add(i.key))]  # a file matched by two specs runs once
    return unique, errors


def load_input(item: InferInput, dpi: int, data_cfg: DataConfig) -> Image.Image:
    """The input as an RGB image, read as ``prepare`` and the server read it (``data.images``: the size limits,
    EXIF rotation, RGB); raises with the reason when it cannot be read."""
    if item.page is None:
        return load_image(item.path, data_cfg)
    import pypdfium2

    with pypdfium2.PdfDocument(str(item.path)) as pdf:
        return render_pdf_page(pdf[item.page - 1], item.page, dpi, data_cfg)


def done_inputs(out_path: Path) -> set[str]:
    """Inputs already in ``out_path``; a damaged line (an interrupted write) is reported and redone."""
    if not out_path.is_file():
        return set()
    done = set()
    for lineno, line in enumerate(out_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["input"])
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s:%d: not a complete result row; that input will be processed again", out_path, lineno)
    return done


class _Writer:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # An interrupted run can leave a last line without its newline: start on a fresh line.
        needs_newline = path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
        self.f = path.open("a", encoding="utf-8")
        if needs_newline:
            self.f.write("\n")
        self.written = self.errors = 0

    def row(self, record: dict) -> None:
        self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.f.flush()
        self.written += 1
        self.errors += record.get("error") is not None


def _record(item: InferInput, pred: Prediction | None = None, error: str | None = None) -> dict:
    out = {"input": item.key, "file": str(item.path), "page": item.page}
    if pred is not None:
        out |= {"text": pred.text, "stopped": pred.stopped, "looped": pred.looped, "n_tokens": pred.n_tokens, "error": None}
    else:
        out |= {"text": None, "error": error}
    return out


def _hf_generator(loaded, cfg: RunConfig):
    collator = make_collator(loaded.processor, loaded.family, for_generation=True)
    gen_cfg = replace(cfg.eval, batch_size=cfg.infer.batch_size)
    loaded.model.eval()
    return lambda rows, clock=None: generate_batch(loaded.model, collator, rows, gen_cfg, cfg.infer.max_new_tokens, clock=clock)


def _vllm_generator(cfg: RunConfig):
    try:
        from vllm import LLM, SamplingParams
        from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor
    except ImportError as e:
        raise UserError(f"infer.backend 'vllm' needs the vllm package on a CUDA machine ({e}); use backend 'hf'") from None
    if cfg.infer.adapter:
        raise UserError("infer.backend 'vllm' serves merged weights: run `deepsynth-ocr export` and set "
                           "model.name_or_path to its merged/ directory instead of infer.adapter")
    llm = LLM(model=cfg.model.name_or_path, enable_prefix_caching=False, mm_processor_cache_gb=0,
              logits_processors=[NGramPerReqLogitsProcessor])
    params = SamplingParams(temperature=0.0, max_tokens=cfg.infer.max_new_tokens, skip_special_tokens=False,
                            extra_args={"ngram_size": 30, "window_size": 90, "whitelist_token_ids": {128821, 128822}})

    def generate(rows, clock=None):
        with (clock or StageClock()).stage("generate"):  # vLLM preprocesses inside generate
            outputs = llm.generate([{"prompt": r["prompt"], "multi_modal_data": {"image": r["image"]}} for r in rows], params)
        return [Prediction(o.outputs[0].text, o.outputs[0].finish_reason == "stop", n_tokens=len(o.outputs[0].token_ids))
                for o in outputs]

    return generate


def ocr_inputs(specs: list[str], out_path: str | Path, cfg: RunConfig, loaded=None,
               expanded: tuple[list[InferInput], list[dict]] | None = None) -> InferSummary:
    """OCR every input of ``specs`` into ``out_path`` (JSONL), skipping inputs already there.

    With the ``hf`` backend pass the ``LoadedModel`` to read with (``jobs.infer`` loads it), and
    ``expanded``, ``expand_inputs(specs)`` when the caller already has it.
    """
    cfg.validate()
    out_path = Path(out_path)
    items, spec_errors = expanded if expanded is not None else expand_inputs(specs)
    done = done_inputs(out_path)
    todo = [i for i in items if i.key not in done]
    generate_rows = _vllm_generator(cfg) if cfg.infer.backend == "vllm" else _hf_generator(loaded, cfg)
    prompt = cfg.infer.prompt or (loaded.family if loaded else get_family(cfg.model.family)).default_prompt
    writer = _Writer(out_path)
    clock = StageClock()
    try:
        for err in spec_errors:
            if err["input"] not in done:
                writer.row({"file": None, "page": None, "text": None} | err)
        bar = tqdm(total=len(todo), desc="infer", unit="input")
        for start in range(0, len(todo), cfg.infer.batch_size):
            ready: list[tuple[InferInput, dict]] = []
            for item in todo[start:start + cfg.infer.batch_size]:
                try:
                    with clock.stage("decode"):
                        ready.append((item, {"image": load_input(item, cfg.infer.pdf_dpi, cfg.data), "prompt": prompt}))
                except Exception as e:  # any decoder error: record it against this input, keep going
                    writer.row(_record(item, error=f"cannot read input: {type(e).__name__}: {e}"))
            if ready:
                _generate_into(writer, ready, functools.partial(generate_rows, clock=clock))
                clock.count("images", len(ready))
            bar.update(min(cfg.infer.batch_size, len(todo) - start))
        bar.close()
    finally:
        writer.f.close()
    keys = [i.key for i in items] + [e["input"] for e in spec_errors]
    summary = InferSummary(len(keys), sum(k in done for k in keys), writer.written, writer.errors, clock.take())
    log.info("infer: %s -> %s", summary, out_path)
    return summary


def _generate_into(writer: _Writer, ready: list[tuple[InferInput, dict]], generate_rows) -> None:
    """Generate a batch; if the batch fails, retry row by row so only the bad input becomes an error row."""
    try:
        preds = generate_rows([row for _, row in ready])
    except Exception as e:
        if len(ready) == 1:
            writer.row(_record(ready[0][0], error=f"generation failed: {type(e).__name__}: {e}"))
            return
        log.warning("a batch of %d failed (%s); retrying one by one", len(ready), e)
        for one in ready:
            _generate_into(writer, [one], generate_rows)
        return
    for (item, _), pred in zip(ready, preds, strict=True):
        writer.row(_record(item, pred))
