"""The UI's OCR error analysis and its correction loop.

``/runs/NAME/errors``: one evaluation's rows (``eval/<tag>.jsonl``) worst first on the task's own scale, each with
its image, a character-level diff and the failure kinds it shows; filters by failure kind and task; the same rows as
other runs read them; CSV and Markdown export of what the filters select. Ticked rows become an eval slice
(``slices/NAME.jsonl`` under the first data root) or, with the text a person corrected them to, rows of a versioned
corrections dataset (``corrections/NAME/``, see ``deepsynth_ocr.corrections``) that a fine-tune then trains on.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections import Counter
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from deepsynth_ocr import corrections, metrics
from deepsynth_ocr.runs import list_runs
from deepsynth_ocr.secrets import redact
from deepsynth_ocr.ui.common import IMAGE_SUFFIXES, limited, page, run_dir_of, ui_state
from deepsynth_ocr.ui.details import eval_rows, eval_tags

router = APIRouter()
ORDERS = ("worst", "best", "file")
PER_PAGE = 50


def image_of(request: Request, row: dict | None) -> Path | None:
    """An eval row's image file, when it lies under the runs root or a data root (never any other file)."""
    state = ui_state(request)
    image = (row or {}).get("image")
    if not image:
        return None
    path = Path(image).resolve()  # symlinks resolved: a link out of the roots is outside them
    allowed = any(path.is_relative_to(r.resolve()) for r in (state.root, *state.data_roots))
    return path if allowed and path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES else None


def select(rows: tuple[dict, ...], kind: str = "", task: str = "", order: str = "worst") -> list[tuple[int, dict]]:
    """(file index, row) of the rows showing failure ``kind`` ('' any, 'error' any imperfect reading) and of ``task``
    ('' any), in ``order``: worst first on the task's own scale, best first, or file order."""
    chosen = [(i, r) for i, r in enumerate(rows)
              if (not task or (r.get("task") or "ocr") == task)
              and (not kind or (kind == "error" and metrics.badness(r) > 0) or kind in metrics.failure_kinds(r))]
    if order != "file":
        chosen.sort(key=lambda p: (-metrics.badness(p[1]) if order == "worst" else metrics.badness(p[1]), p[0]))
    return chosen


def _filters(request: Request, run_dir: Path) -> dict:
    q = request.query_params
    tags = eval_tags(run_dir)
    tag = q.get("tag") or ("after" if "after" in tags else tags[0] if tags else "after")
    kind, task, order = q.get("kind") or "", q.get("task") or "", q.get("order") or "worst"
    if tag not in tags and tags:
        raise HTTPException(404, f"{run_dir.name} has no evaluation {tag!r} (it has {', '.join(tags)})")
    if kind not in ("", "error", *metrics.FAILURE_KINDS) or order not in ORDERS:
        raise HTTPException(400, f"kind: one of error, {', '.join(metrics.FAILURE_KINDS)}; order: one of {', '.join(ORDERS)}")
    vs = [n for n in q.getlist("vs") if n != run_dir.name][:3]
    return {"tag": tag, "kind": kind, "task": task, "order": order, "vs": vs, "tags": tags}


def _others(request: Request, names: list[str], tag: str) -> dict[str, dict]:
    """Each compared run's rows of the same evaluation, by row id."""
    return {n: {r.get("id"): r for r in eval_rows(run_dir_of(request, n), tag)} for n in names}


DIFF_TAGS = {"equal": "span", "delete": "del", "insert": "ins"}


def _shown(index: int, row: dict, others: dict[str, dict], diff: bool = True) -> dict:
    """One row as the page (with its character diff) or the export (without) shows it."""
    reference, prediction = str(row.get("reference") or ""), str(row.get("prediction") or "")
    return redact({
        "index": index, "id": row.get("id"), "task": row.get("task") or "ocr", "score": metrics.sample_label(row, 3),
        "kinds": metrics.failure_kinds(row), "reference": reference, "prediction": prediction,
        "prompt": row.get("prompt") or "", "has_image": bool(row.get("image")),
        "diff": [(DIFF_TAGS[op], text) for op, text in metrics.char_diff(reference, prediction)] if diff else [],
        "others": [{"run": n, "prediction": rows.get(row.get("id"), {}).get("prediction"),
                    "score": metrics.sample_label(rows[row.get("id")], 3) if row.get("id") in rows else ""}
                   for n, rows in others.items()],
    })


@router.get("/runs/{name}/errors", response_class=HTMLResponse)
def errors_page(request: Request, name: str):
    run_dir = run_dir_of(request, name)
    f = _filters(request, run_dir)
    rows = eval_rows(run_dir, f["tag"])
    chosen = select(rows, f["kind"], f["task"], f["order"])
    try:
        number = max(1, int(request.query_params.get("page") or 1))
    except ValueError:
        number = 1
    pages = max(1, -(-len(chosen) // PER_PAGE))
    number = min(number, pages)
    others = _others(request, f["vs"], f["tag"])
    shown = [_shown(i, r, others) for i, r in chosen[(number - 1) * PER_PAGE: number * PER_PAGE]]
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "page"]
    return page(request, "errors.html", run=name, rows=shown, total=len(rows), matched=len(chosen), page_no=number,
                pages=pages, query=query, filters=f, kinds=metrics.FAILURE_KINDS,
                tasks=sorted({r.get("task") or "ocr" for r in rows}),
                runs=[i.dir.name for i in list_runs(ui_state(request).root) if i.dir.name != name and i.kind != "sweep"],
                counts=Counter(k for r in rows for k in metrics.failure_kinds(r)),
                datasets=correction_datasets(request), corrections_root=ui_state(request).data_roots[0] / "corrections")


def _export_rows(request: Request, name: str) -> tuple[list[str], list[list[str]]]:
    run_dir = run_dir_of(request, name)
    f = _filters(request, run_dir)
    others = _others(request, f["vs"], f["tag"])
    header = ["id", "task", "score", "failure", "reference", "prediction"]
    for n in f["vs"]:
        header += [f"prediction ({n})", f"score ({n})"]
    out = []
    for index, row in select(eval_rows(run_dir, f["tag"]), f["kind"], f["task"], f["order"]):
        s = _shown(index, row, others, diff=False)
        line = [s["id"], s["task"], s["score"], " ".join(s["kinds"]), s["reference"], s["prediction"]]
        for o in s["others"]:
            line += [o["prediction"] if o["prediction"] is not None else "", o["score"]]
        out.append([str(v) for v in line])
    return header, out


@router.get("/runs/{name}/errors.csv")
def errors_csv(request: Request, name: str):
    header, rows = _export_rows(request, name)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}-errors.csv"'})


def _md_cell(text: str) -> str:
    # entities keep markup in a prediction as text in any Markdown viewer; a pipe or newline would break the table
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ⏎ ")


@router.get("/runs/{name}/errors.md")
def errors_markdown(request: Request, name: str):
    header, rows = _export_rows(request, name)
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
    return Response("\n".join(lines) + "\n", media_type="text/markdown; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}-errors.md"'})


@router.get("/runs/{name}/image/{tag}/{index}")
def eval_image(request: Request, name: str, tag: str, index: int):
    from fastapi.responses import FileResponse

    rows = eval_rows(run_dir_of(request, name), tag)
    path = image_of(request, rows[index] if 0 <= index < len(rows) else None)
    if path is None:
        raise HTTPException(404, "no image for this row")
    return FileResponse(path)


def _ticked(request: Request, name: str, body: dict) -> tuple[str, list[tuple[int, dict]]]:
    """The evaluation and the rows (by file index) a write names; 400s for anything that is not one of them."""
    run_dir = run_dir_of(request, name)
    tag = str(body.get("tag") or "")
    rows = eval_rows(run_dir, tag)
    if not rows:
        raise HTTPException(400, f"{name} has no evaluation {tag!r}")
    indexes = body.get("rows")
    if not isinstance(indexes, list) or not indexes or not all(isinstance(i, int) and 0 <= i < len(rows) for i in indexes):
        raise HTTPException(400, f"rows: tick at least one row of {tag} (indexes 0..{len(rows) - 1})")
    return tag, [(i, rows[i]) for i in dict.fromkeys(indexes)]


@router.post("/api/runs/{name}/slice")
async def api_slice(request: Request, name: str):
    """The ticked rows as an eval set (``slices/NAME.jsonl`` under the first data root): image, reference, task and
    prompt, readable by ``data.eval_path``. An existing slice is never overwritten."""
    state = ui_state(request)
    limited(state.upload_limit, "writes")
    body = await request.json()
    tag, picked = _ticked(request, name, body)
    slice_name = str(body.get("name") or "")
    if not corrections.NAME.fullmatch(slice_name):
        return JSONResponse({"error": f"slice name {slice_name!r}: letters, digits, '_', '-', '.', no '/'"}, status_code=400)
    missing = [str(r.get("id")) for _, r in picked if image_of(request, r) is None]
    if missing:
        return JSONResponse({"error": f"rows without an image under the data or runs roots: {', '.join(missing[:5])}"},
                            status_code=400)
    out = state.data_roots[0] / "slices" / f"{slice_name}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("x", encoding="utf-8") as f:
            for _, r in picked:
                row = {"id": r.get("id"), "image": str(image_of(request, r)), "text": r.get("reference") or "",
                       "task": r.get("task") or "ocr"}
                f.write(json.dumps({**row, **({"prompt": r["prompt"]} if r.get("prompt") else {})}, ensure_ascii=False) + "\n")
    except FileExistsError:
        return JSONResponse({"error": f"{out} exists already; choose another name (slices are never overwritten)"},
                            status_code=409)
    return {"slice": str(out), "rows": len(picked), "from": f"{name} {tag}"}


def corrections_folder(request: Request, dataset: str) -> Path:
    return ui_state(request).data_roots[0] / "corrections" / corrections.check_name(dataset)


@router.post("/api/runs/{name}/corrections")
async def api_correct_rows(request: Request, name: str):
    """Ticked eval rows with the text a person corrected them to, into a corrections dataset's next version."""
    limited(ui_state(request).upload_limit, "writes")
    body = await request.json()
    tag, picked = _ticked(request, name, body)
    texts = body.get("texts")
    if not isinstance(texts, dict):
        return JSONResponse({"error": "texts: the corrected text of each ticked row, by row index"}, status_code=400)
    items = []
    for index, row in picked:
        items.append(corrections.Correction(image_of(request, row), str(texts.get(str(index), "")),
                                            row.get("prompt") or "", f"{name} {tag} row {row.get('id')}"))
    return add_corrections(request, str(body.get("dataset") or ""), items)


def add_corrections(request: Request, dataset: str, items: list[corrections.Correction]) -> JSONResponse | dict:
    try:
        added = corrections.add(corrections_folder(request, dataset), items)
    except corrections.CorrectionError as e:
        return JSONResponse({"error": redact(str(e))}, status_code=409 if "duplicates are refused" in str(e) else 400)
    return redact({**added.to_dict(), "dataset": dataset, "rows": len(corrections.read_rows(added.version))})


def correction_datasets(request: Request) -> list[dict]:
    """Each corrections dataset under the first data root: its versions and the latest one's row count."""
    root = ui_state(request).data_roots[0] / "corrections"
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        history = corrections.versions(folder)
        if history:
            out.append({"name": folder.name, "versions": [v.stem for v in history], "latest": str(history[-1]),
                        "rows": len(corrections.read_rows(history[-1]))})
    return out
