"""The notebook job: a kit notebook executed by papermill into a run directory (``deepsynth-ocr notebook``).

The executed notebook is saved in the run directory whether or not a cell fails; on failure the
run's ``manifest.json`` says ``failed`` and names the failing cell, and the caller exits non-zero.
The manifest (kind ``notebook``) names this process among its ``workers`` while it runs and records
the notebook, its parameters and config, so ``deepsynth-ocr resume`` can run it again in place.
A stop signal, to this process or to the kernel that holds the run's lock, ends ``interrupted``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path

import psutil

from deepsynth_ocr.cells import PROJECT_ROOT
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.errors import Interrupted, MissingFileError
from deepsynth_ocr.jobs.launch import notebook_run_dir
from deepsynth_ocr.runs import RunPaths, edit_manifest, join_workers, leave_workers, signal_handlers, this_process
from deepsynth_ocr.secrets import redact

log = logging.getLogger(__name__)

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
KERNEL_NAME = "deepsynth-ocr"  # registered in the venv by `make setup`


class NotebookFailed(RuntimeError):
    """A cell of the notebook raised; the executed notebook with the error is in the run directory."""


def find_notebook(name: str) -> Path:
    """``02_finetune``, ``02_finetune.ipynb`` or a path."""
    path = Path(name)
    if path.suffix != ".ipynb":
        path = path.with_suffix(".ipynb")
    for candidate in (path, NOTEBOOKS_DIR / path.name):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    raise MissingFileError(f"notebook {name!r} not found; the kit's notebooks are {known}")


def _kernel_name() -> str | None:
    from jupyter_client.kernelspec import KernelSpecManager

    # The kit's registered kernel runs this venv's Python; without it papermill uses the notebook's own.
    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else None


def _failing_cell(executed: Path) -> dict:
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return {"index": index, "execution_count": cell.get("execution_count"),
                        "source": cell.source.splitlines()[:3], "error": f"{output['ename']}: {output['evalue']}"}
    return {}


def _stop_signal(evalue: str) -> int:
    """The signal a ``TrainingInterrupted`` message starts with (``SIGTERM at step 12: ...``)."""
    name = evalue.split(" ", 1)[0]
    return signal.Signals[name].value if name in signal.Signals.__members__ else signal.SIGTERM.value


def run_notebook(name: str, parameters: dict | None = None, config_path: str | None = None,
                 run_dir: str | Path | None = None) -> Path:
    """Execute notebook ``name`` with ``parameters`` into ``run_dir`` (new when None); returns the run dir."""
    import papermill

    notebook = find_notebook(name)
    parameters = dict(parameters or {})
    run_dir = Path(run_dir) if run_dir else notebook_run_dir(parameters, config_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    executed = run_dir / notebook.name
    me = this_process()

    def begin(manifest: dict) -> None:
        manifest.setdefault("name", parameters.get("name") or RunConfig.load(config_path).name)
        manifest.update(kind="notebook", notebook_name=notebook.stem, notebook_parameters=parameters,
                        config_path=str(Path(config_path).resolve()) if config_path else None)
        manifest["status"] = "starting"  # until a training cell's Run says running (or, without one, the end)
        join_workers(manifest, me)

    edit_manifest(run_dir, begin)
    log.info("executing %s -> %s", notebook, executed)
    try:
        with _signals_to_kernel() as received:
            papermill.execute_notebook(str(notebook), str(executed), parameters={**parameters, "run_dir": str(run_dir),
                                       "config_path": config_path or ""}, cwd=str(PROJECT_ROOT),
                                       kernel_name=_kernel_name(), progress_bar=False)
    except papermill.PapermillExecutionError as e:
        _mask_secrets(executed)
        if e.ename in ("TrainingInterrupted", "Interrupted") or received:
            # Stopped on purpose: the training cell saved a checkpoint (or nothing had started); the kernel's
            # Run marked the run interrupted, or this process does.
            signum = received[0] if received else _stop_signal(e.evalue)
            _end(run_dir, me, notebook=str(executed), status="interrupted")
            raise Interrupted(signal.Signals(signum).name, f"{notebook.name}: {e.evalue}") from None
        cell = _failing_cell(executed)
        _end(run_dir, me, status="failed", notebook=str(executed), failing_cell=cell, error=f"{e.ename}: {e.evalue}")
        raise NotebookFailed(
            f"{notebook.name} failed in cell {cell.get('index')} ({e.ename}: {e.evalue}); "
            f"executed notebook with the error: {executed}"
        ) from None
    except BaseException:
        if not received:
            _end(run_dir, me, status="failed")
            raise
        _end(run_dir, me, status="interrupted")  # the kernel went down with the signal it was passed
        name = signal.Signals(received[0]).name
        raise Interrupted(name, f"{notebook.name}: stopped by {name}") from None
    _mask_secrets(executed)
    status = RunPaths(run_dir).read_manifest().get("status")
    _end(run_dir, me, notebook=str(executed), status="ok" if status in (None, "starting", "running") else status)
    return run_dir


def _end(run_dir: Path, me: dict, **fields) -> None:
    def end(manifest: dict) -> None:
        leave_workers(manifest, me)
        manifest.update(fields)
        manifest["ended_at"] = this_process()["started"]

    edit_manifest(run_dir, end)


@contextlib.contextmanager
def _signals_to_kernel():
    """A SIGTERM to this process (a scheduler stopping the job) is passed to the notebook's kernel, where a
    training cell saves a checkpoint and stops (``jobs.train``); papermill then sees that cell fail. Ctrl-C
    needs no forwarding: the terminal sends SIGINT to the kernel too (same process group)."""
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGTERM)

    with signal_handlers(forward, (signal.SIGTERM,)):
        yield received


def _mask_secrets(executed: Path) -> None:
    """The executed notebook holds the injected parameters and every cell's output: no token stays in it."""
    if executed.is_file():
        text = executed.read_text(encoding="utf-8")
        masked = redact(text)
        if masked != text:
            executed.write_text(masked, encoding="utf-8")
