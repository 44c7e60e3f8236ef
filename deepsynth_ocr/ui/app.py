"""The jobs UI's pages and API: module-level routes over the app's state (``create_ui_app`` sets it).

Pages: the runs list (``/``), a run (``/runs/NAME``: live log over server-sent events, curves, samples,
config, checkpoints, Stop / Resume / Delete / Export), the launch form (``/launch``), compare
(``/compare?run=A&run=B``), data (``/data``) and try-it (``/try``). Files come only from inside the runs
root (``/files/...``), an eval row's image only from the runs root or the data roots. Every write
carries the CSRF header (``guard.Guard``); launches and uploads are rate limited.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
from pathlib import Path

import yaml
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from deepsynth_ocr import corrections
from deepsynth_ocr.config import BASELINE_ENGINES, ConfigError, RunConfig
from deepsynth_ocr.errors import UserError
from deepsynth_ocr.jobs import launch as launches
from deepsynth_ocr.runs import (
    LIVE,
    RunDirError,
    RunPaths,
    checkpoint_adapter,
    list_runs,
    new_run_path,
    read_run,
    stop_run,
)
from deepsynth_ocr.secrets import redact
from deepsynth_ocr.ui import analysis, details, forms, playground, workbench
from deepsynth_ocr.ui.common import UiState, limited, page, run_dir_of, ui_state
from deepsynth_ocr.ui.guard import Guard, RateLimit, csrf_token, inside, ui_secret
from deepsynth_ocr.ui.scheduler import Scheduler, detect_gpus, gpu_use

router = APIRouter()


def _user_error(e: Exception) -> JSONResponse:
    return JSONResponse({"error": redact(str(e))}, status_code=400)


# --- pages ------------------------------------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request):
    return page(request, "runs.html", gpus=ui_state(request).gpus)


@router.get("/runs/{name}", response_class=HTMLResponse)
def run_page(request: Request, name: str):
    info = read_run(run_dir_of(request, name))
    return page(request, "run.html", run=details.summary(info), config=details.config_text(info.dir), scores=details.scores(info.dir),
                 checkpoints=details.checkpoints(info.dir), samples=details.samples(info.dir),
                 trials=details.sweep_trials(info.dir) if info.kind == "sweep" else [],
                 has_report=RunPaths(info.dir).report.is_file(), has_eval=bool(details.eval_tags(info.dir)), has_adapter=RunPaths(info.dir).adapter.is_dir(),
                 has_best=(info.dir / "best_config.yaml").is_file(), exported=(RunPaths(info.dir).export / "merged").is_dir())


@router.get("/launch", response_class=HTMLResponse)
def launch_page(request: Request):
    state = ui_state(request)
    presets = sorted(p.name for p in state.configs.glob("*.yaml"))
    spaces = sorted(p.name for p in (state.configs / "sweeps").glob("*.yaml"))
    clone, start = request.query_params.get("clone") or "", request.query_params.get("resume_from") or ""
    overrides = ""
    if clone:
        run_dir = run_dir_of(request, clone)  # 404 for a name that is not a run
        if start:  # a checkpoint's "Resume from it": a new run that starts from that checkpoint
            if not re.fullmatch(r"checkpoint-\d+", start) or not (RunPaths(run_dir).checkpoints / start).is_dir():
                raise HTTPException(404, f"{clone} has no checkpoint {start!r}")
            overrides = f"train.resume_from={RunPaths(run_dir).checkpoints / start}"
    train_path = request.query_params.get("train_path") or ""  # "Fine-tune on it" from a corrections dataset
    if not forms.allowed_data_path(train_path, state.data_roots):  # checked again, like every field, at launch
        raise HTTPException(404, f"{train_path} is outside the UI's data roots")
    return page(request, "launch.html", presets=presets, spaces=spaces, gpus=state.gpus,
                 data_roots=[str(r) for r in state.data_roots], clone=clone, overrides=overrides,
                 train_path=train_path)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request):
    names = request.query_params.getlist("run")[:4]
    infos = [read_run(run_dir_of(request, n)) for n in names]
    return page(request, "compare.html", data=details.compare(infos) if len(infos) >= 2 else None,
                 choices=[i.dir.name for i in list_runs(ui_state(request).root)], chosen=names)


@router.get("/health")
def health():
    return {"status": "ok"}


@router.get("/favicon.ico")
def favicon():
    return Response(status_code=204)


# --- the runs API -----------------------------------------------------------------------------------------

@router.get("/api/runs")
def api_runs(request: Request, status: str | None = None, name: str | None = None):
    return [details.summary(i) for i in list_runs(ui_state(request).root, status or None, name or None)]


@router.get("/api/runs/{name}")
def api_run(request: Request, name: str):
    run_dir = run_dir_of(request, name)
    return {**details.summary(read_run(run_dir)), "series": details.series(run_dir)}


@router.get("/runs/{name}/events")
async def run_events(request: Request, name: str):
    """Server-sent events: ``log`` (new console lines; the id is the byte offset, so a reconnecting browser
    continues where it was), ``run`` (status, progress and curves whenever they change)."""
    run_dir = run_dir_of(request, name)
    last = request.headers.get("last-event-id")
    offset = int(last) if last and last.isdigit() else None

    async def stream():
        nonlocal offset
        seen, curves, metrics_size = None, None, None
        paths = RunPaths(run_dir)
        yield "retry: 1000\n\n"
        while not await request.is_disconnected():
            text, offset = details.read_log(paths.console_log, offset)
            if text:
                data = "\n".join(f"data: {line}" for line in text.rstrip("\n").split("\n"))
                yield f"event: log\nid: {offset}\n{data}\n\n"
            if paths.manifest.is_file() or paths.launch.is_file():
                size = paths.metrics.stat().st_size if paths.metrics.is_file() else 0
                if size != metrics_size:  # metrics.jsonl only grows: parsed again only when it did
                    curves, metrics_size = details.series(run_dir), size
                payload = json.dumps({**details.summary(read_run(run_dir)), "series": curves}, default=str)
                if payload != seen:
                    seen = payload
                    yield f"event: run\ndata: {payload}\n\n"
            await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post("/api/runs/{name}/stop")
def api_stop(request: Request, name: str):
    run_dir = run_dir_of(request, name)
    if ui_state(request).scheduler.cancel(run_dir):
        return {"stopped": "cancelled while queued"}
    try:
        return {"stopped": stop_run(run_dir)}
    except RunDirError as e:
        return _user_error(e)


@router.post("/api/runs/{name}/resume")
def api_resume(request: Request, name: str):
    state = ui_state(request)
    limited(state.launch_limit, "launches")
    try:
        launch = launches.resume_launch(run_dir_of(request, name))
    except UserError as e:
        return _user_error(e)
    return {"run": launch.run_dir.name, "state": state.scheduler.submit(launch)}


@router.post("/api/runs/{name}/delete")
def api_delete(request: Request, name: str):
    run_dir = run_dir_of(request, name)
    status = read_run(run_dir).status
    if status in LIVE or status == "queued":
        return _user_error(RunDirError(f"{name} is {status}: stop it before deleting it"))
    shutil.rmtree(run_dir)
    return {"deleted": name}


@router.post("/api/runs/{name}/export")
async def api_export(request: Request, name: str):
    """Export the run's adapter, or (``checkpoint``: ``checkpoint-N``) one checkpoint's, with merged weights and a
    model card; ``push`` (``user/name``) uploads it to the hub as the CLI's ``--push`` does."""
    state = ui_state(request)
    run_dir = run_dir_of(request, name)
    body = await request.json() if (await request.body()) else {}
    checkpoint, push = str(body.get("checkpoint") or ""), str(body.get("push") or "").strip()
    try:
        if checkpoint:
            checkpoint_adapter(RunPaths(run_dir), checkpoint)
        elif not RunPaths(run_dir).adapter.is_dir():
            raise RunDirError(f"{name} has no adapter/ to export (status {read_run(run_dir).status})")
        if push and not re.fullmatch(r"[\w.-]+/[\w.-]+", push):
            raise RunDirError(f"push: a hub repository as user/name, got {push!r}")
    except RunDirError as e:
        return _user_error(e)
    limited(state.launch_limit, "launches")
    launch = launches.export_launch(run_dir, checkpoint)
    if push:
        launch.args += ["--push", push]
    return {"run": name, "state": state.scheduler.submit(launch, takes_slot=False), "out": str(launch.run_dir)}


def _evaluation(request: Request, config: Path, adapter: Path | None, label: str, body: dict):
    """Queue ``deepsynth-ocr evaluate`` of the base with ``config`` (and ``adapter``) on ``eval_path`` under the data
    roots (else the config's), with the chosen ``baselines`` and ``max_samples``: a new evaluation run in the list."""
    state = ui_state(request)
    eval_path = str(body.get("eval_path") or "")
    if not forms.allowed_data_path(eval_path, state.data_roots):
        return JSONResponse({"errors": {"eval_path": f"eval_path: {eval_path} is outside the UI's data roots"}}, status_code=400)
    overrides = [f"output_root={state.root}", f"name={label}"] + ([f"data.eval_path={eval_path}"] if eval_path else [])
    if "baselines" in body:
        chosen = body["baselines"]
        if not isinstance(chosen, list) or any(b not in BASELINE_ENGINES for b in chosen):
            return JSONResponse({"errors": {"baselines": f"baselines: any of {', '.join(BASELINE_ENGINES)}"}}, status_code=400)
        overrides.append(f"eval.baselines={json.dumps(chosen)}")
    if body.get("max_samples") not in (None, ""):
        overrides.append(f"eval.max_samples={body['max_samples']}")
    limited(state.launch_limit, "launches")
    try:
        launch = launches.evaluate_launch(config, overrides, adapter=adapter)
    except UserError as e:
        return JSONResponse({"errors": {"form": redact(str(e))}}, status_code=400)
    return {"run": launch.run_dir.name, "state": state.scheduler.submit(launch)}


def _model_source(request: Request, model: str, preset: str) -> tuple[Path, Path | None, str]:
    """The config, adapter and run label of a model choice: ``base`` (with a preset), ``RUN`` (its adapter) or
    ``RUN/checkpoint-N``."""
    if model == "base":
        return _preset(request, preset), None, "base"
    name, _, checkpoint = model.partition("/")
    run_dir = run_dir_of(request, name)
    paths = RunPaths(run_dir)
    adapter = checkpoint_adapter(paths, checkpoint) if checkpoint else paths.adapter
    if not (adapter / "adapter_model.safetensors").is_file():
        raise RunDirError(f"{name} has no adapter weights in {checkpoint or 'adapter/'} (status {read_run(run_dir).status})")
    return paths.config, adapter, f"{read_run(run_dir).name or name}-{checkpoint or 'adapter'}"


@router.post("/api/runs/{name}/evaluate")
async def api_evaluate(request: Request, name: str):
    """Evaluate the run's adapter or one of its checkpoints (``checkpoint``: ``adapter`` or ``checkpoint-N``) on the
    run's eval set, or on ``eval_path`` under the data roots: a new evaluation run in the list, base beside it."""
    body = await request.json() if (await request.body()) else {}
    which = str(body.get("checkpoint") or "adapter")
    if which != "adapter" and not re.fullmatch(r"checkpoint-\d+", which):
        return _user_error(RunDirError(f"checkpoint: 'adapter' or 'checkpoint-N', got {which!r}"))
    try:
        config, adapter, label = _model_source(request, name if which == "adapter" else f"{name}/{which}", "")
    except RunDirError as e:
        return _user_error(e)
    return _evaluation(request, config, adapter, label, body)


@router.get("/evaluate", response_class=HTMLResponse)
def evaluate_page(request: Request):
    state = ui_state(request)
    slices = sorted((state.data_roots[0] / "slices").glob("*.jsonl")) if (state.data_roots[0] / "slices").is_dir() else []
    sets = [str(p) for p in slices] + [d["latest"] for d in analysis.correction_datasets(request)]
    return page(request, "evaluate.html", models=playground.models(request), chosen=request.query_params.get("model") or "base",
                presets=sorted(p.name for p in state.configs.glob("*.yaml")), eval_sets=sets,
                baselines=BASELINE_ENGINES,
                data_roots=[str(r) for r in state.data_roots])


@router.post("/api/evaluate")
async def api_evaluate_any(request: Request):
    """The evaluate page: ``model`` (base, RUN or RUN/checkpoint-N; the base with ``preset``), ``eval_path``,
    ``baselines`` and ``max_samples``."""
    body = await request.json()
    try:
        config, adapter, label = _model_source(request, str(body.get("model") or "base"), str(body.get("preset") or ""))
    except RunDirError as e:
        return JSONResponse({"errors": {"model": redact(str(e))}}, status_code=400)
    return _evaluation(request, config, adapter, label, body)


# --- files ------------------------------------------------------------------------------------------------

@router.get("/files/{path:path}")
def files(request: Request, path: str):
    """A file or a folder listing from inside the runs root; 404 for anything else (``..``, symlinks out)."""
    root = ui_state(request).root
    found = inside(root, path)
    if found is None or found.name in (".lock", ".launch", "secret") or ".ui" in found.relative_to(root.resolve()).parts:
        raise HTTPException(404, "not found")
    if found.is_dir():
        entries = sorted(found.iterdir())
        return page(request, "files.html", path=path.rstrip("/"), entries=[
            {"name": e.name + ("/" if e.is_dir() else ""), "size": e.stat().st_size if e.is_file() else None}
            for e in entries if not e.name.startswith(".")])
    if found.suffix in (".log", ".yaml", ".json", ".jsonl", ".txt", ".md"):  # text the page shows: masked
        return HTMLResponse(redact(found.read_text(encoding="utf-8", errors="replace")), media_type="text/plain")
    return FileResponse(found)


# --- launching --------------------------------------------------------------------------------------------

def _preset(request: Request, name: str) -> Path:
    configs = ui_state(request).configs
    path = inside(configs, name)
    if path is None or path.parent != configs or path.suffix != ".yaml" or not path.is_file():
        raise HTTPException(404, f"no preset {name!r}")
    return path


@router.get("/api/presets/{name}")
def api_preset(request: Request, name: str):
    try:
        cfg = RunConfig.from_yaml(_preset(request, name))
    except ConfigError as e:
        return _user_error(e)
    return {"fields": redact(forms.fields(cfg))}


@router.get("/api/estimate")
def api_estimate(request: Request, family: str, backend: str = "auto", load_in_4bit: bool = False, batch: int = 1,
                 gradient_checkpointing: bool = True):
    from deepsynth_ocr.memory import estimate

    gpus = ui_state(request).gpus
    if family not in forms.CHOICES["model.family"] or batch < 1:
        return _user_error(ConfigError(f"model.family: unknown family {family!r}"))
    backend = backend if backend != "auto" else ("unsloth" if gpus else "hf")
    return {**estimate(family, backend, load_in_4bit, batch, gpus[0]["memory_gib"] if gpus else None,
                       gradient_checkpointing),
            "gpu": gpus[0]["name"] if gpus else None}


@router.get("/api/runs/{name}/form")
def api_run_form(request: Request, name: str):
    """The launch form filled from a run's own config.yaml, to clone it."""
    config = RunPaths(run_dir_of(request, name)).config
    if not config.is_file():
        raise HTTPException(404, f"{name} has no config.yaml to clone")
    try:
        cfg = RunConfig.from_yaml(config)
    except ConfigError as e:
        return _user_error(e)
    return {"fields": redact(forms.fields(cfg)), "clone": name}


def _launch_base(request: Request, body: dict) -> Path:
    """The config a launch starts from: a preset of the configs folder, or (``clone``) a run's own config.yaml."""
    if body.get("clone"):
        config = RunPaths(run_dir_of(request, str(body["clone"]))).config
        if not config.is_file():
            raise HTTPException(404, f"{body['clone']} has no config.yaml to clone")
        return config
    return _preset(request, str(body.get("preset", "")))


def _form(request: Request, body: dict) -> tuple[Path, list[str]] | JSONResponse:
    """The config the form starts from and its checked overrides (fields, then the overrides box), or the response
    that refuses them field by field."""
    state = ui_state(request)
    base = _launch_base(request, body)
    overrides, errors = forms.overrides(base, body.get("fields") or {}, state.data_roots, state.root)
    extra, extra_error = forms.extra_overrides(str(body.get("overrides") or ""), base, state.data_roots, state.root)
    if extra_error:
        errors["overrides"] = extra_error
    if errors:
        return JSONResponse({"errors": redact(errors)}, status_code=400)
    return base, overrides + extra


def _launch_of(request: Request, body: dict):
    """The job the form describes, or the response that refuses it (per-field errors; nothing starts)."""
    state = ui_state(request)
    form = _form(request, body)
    if isinstance(form, JSONResponse):
        return form
    base, overrides = form
    try:
        if body.get("kind") == "sweep":
            space = inside(state.configs / "sweeps", str(body.get("space", "")))
            trials = body.get("trials")
            if space is None or not space.is_file():
                return JSONResponse({"errors": {"space": "choose a search space from configs/sweeps/"}}, status_code=400)
            if not isinstance(trials, int) or trials < 1:
                return JSONResponse({"errors": {"trials": "trials: a whole number >= 1"}}, status_code=400)
            cfg = RunConfig.load(base, overrides)
            return launches.sweep_launch(base, space, trials, overrides, new_run_path(state.root, f"sweep-{cfg.name}"))
        return launches.train_launch(base, overrides)
    except UserError as e:
        return JSONResponse({"errors": {"form": redact(str(e))}}, status_code=400)


@router.post("/api/presets")
async def api_save_preset(request: Request):
    """The form (a preset or a clone, its fields and overrides) as a new preset ``configs/NAME.yaml``: the resolved
    config, without the runs root (the UI's own). An existing preset is never overwritten."""
    state = ui_state(request)
    limited(state.launch_limit, "launches")
    body = await request.json()
    name = str(body.get("name") or "").removesuffix(".yaml")
    if not corrections.NAME.fullmatch(name):
        return JSONResponse({"errors": {"preset_name": f"preset name {name!r}: letters, digits, '_', '-', '.'"}}, status_code=400)
    form = _form(request, body)
    if isinstance(form, JSONResponse):
        return form
    base, overrides = form
    try:
        cfg = RunConfig.load(base, [o for o in overrides if not o.startswith("output_root=")])
    except UserError as e:  # a combination of values (the fields each passed)
        return JSONResponse({"errors": {"form": redact(str(e))}}, status_code=400)
    if str(cfg.output_root) == str(state.root):
        cfg.output_root = RunConfig().output_root
    path = state.configs / f"{name}.yaml"
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    try:
        with path.open("x", encoding="utf-8") as f:
            f.write(f"# saved from the jobs UI's launch form ({'clone of ' + str(body['clone']) if body.get('clone') else body.get('preset')})\n{text}")
    except FileExistsError:
        return JSONResponse({"errors": {"preset_name": f"{path.name} exists already; choose another name (presets are "
                                                       "never overwritten)"}}, status_code=409)
    return {"preset": path.name}


@router.post("/api/launch/preview")
async def api_launch_preview(request: Request):
    """The exact command the form would run (validated as a launch is), without starting it."""
    launch = _launch_of(request, await request.json())
    if isinstance(launch, JSONResponse):
        return launch
    return {"command": redact(shlex.join(launch.command)), "run": launch.run_dir.name}


@router.post("/api/launch")
async def api_launch(request: Request):
    """Launch (or queue) a training run or a sweep from the form, on GPU ``gpu`` or any free one; per-field errors
    start nothing."""
    body = await request.json()
    launch = _launch_of(request, body)
    if isinstance(launch, JSONResponse):
        return launch
    state = ui_state(request)
    gpu = body.get("gpu")
    if gpu not in (None, "") and not (str(gpu).isdigit() and int(gpu) < len(state.gpus)):
        return JSONResponse({"errors": {"gpu": f"gpu: one of this machine's GPUs (0..{len(state.gpus) - 1}) or any"
                                               if state.gpus else "gpu: this machine has no GPU"}}, status_code=400)
    limited(state.launch_limit, "launches")
    return {"run": launch.run_dir.name, "state": state.scheduler.submit(launch, gpu=int(gpu) if gpu not in (None, "") else None)}


@router.get("/api/queue")
def api_queue(request: Request):
    return ui_state(request).scheduler.queue()


@router.post("/api/queue/{name}/move")
async def api_queue_move(request: Request, name: str):
    """Reorder the queue: ``to`` is up, down, top or bottom. (Cancel is the run's Stop.)"""
    to = str((await request.json()).get("to") or "")
    if to not in ("up", "down", "top", "bottom"):
        return _user_error(RunDirError("to: up, down, top or bottom"))
    if not ui_state(request).scheduler.move(run_dir_of(request, name), to):
        return _user_error(RunDirError(f"{name} is not queued"))
    return {"queue": ui_state(request).scheduler.queue()}


@router.get("/api/gpus")
def api_gpus(request: Request):
    """Each GPU's use now (nvidia-smi) and which run, or the Try-it model, computes on it."""
    used = ui_state(request).scheduler.gpus_in_use()
    return [{**g, "job": used.get(g["index"])} for g in gpu_use()]


def create_ui_app(cfg: RunConfig, token: str = "", cwd: Path | None = None) -> FastAPI:
    """The UI over ``cfg.output_root``; ``token`` (may be empty on loopback) guards every request."""
    root = Path(cfg.output_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    secret = ui_secret(root / ".ui")
    gpus = detect_gpus()
    scheduler = Scheduler(root, cfg.ui.gpu_slots or len(gpus) or 1, cwd, gpus=len(gpus))
    app = FastAPI(title="DeepSynth OCR jobs", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = UiState(root, cfg, scheduler, csrf_token(secret), [Path(r).resolve() for r in cfg.ui.data_roots],
                           Path(cfg.ui.configs_dir).resolve(), gpus, RateLimit(cfg.ui.launches_per_minute),
                           RateLimit(cfg.ui.uploads_per_minute))
    app.state.ui.playground = playground.Playground(scheduler, cfg.ui.try_idle_minutes * 60)
    app.add_middleware(Guard, token=token, csrf=csrf_token(secret))
    app.mount("/static", StaticFiles(directory=str(Path(__file__).resolve().parent / "static")), name="static")
    app.include_router(router)
    app.include_router(workbench.router)
    app.include_router(analysis.router)
    app.include_router(playground.router)
    return app
