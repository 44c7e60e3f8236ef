"""The package's shape: library modules never import the layers above them, no import cycle anywhere
(imports inside functions included), and every module says what it owns."""

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "deepsynth_ocr"
# Layers above the library: the jobs, the run-directory owner, the report and tracking the jobs write
# with, and the front ends (CLI, notebook cells, GPU scripts) that call jobs.
UPPER = ("deepsynth_ocr.jobs", "deepsynth_ocr.runs", "deepsynth_ocr.report", "deepsynth_ocr.tracking",
         "deepsynth_ocr.cli", "deepsynth_ocr.cells", "deepsynth_ocr.gpu_proof", "deepsynth_ocr.gpu_smoke", "deepsynth_ocr.ui")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _is_upper(name: str) -> bool:
    return any(name == u or name.startswith(u + ".") for u in UPPER)


def test_library_modules_never_import_jobs_runs_report_tracking_or_front_ends():
    graph = _graph()
    bad = {m: sorted(t for t in targets if _is_upper(t)) for m, targets in graph.items() if not _is_upper(m)}
    assert {m: t for m, t in bad.items() if t} == {}
    assert not any(t.startswith("deepsynth_ocr.jobs") for t in graph["deepsynth_ocr.report"] | graph["deepsynth_ocr.runs"])


def test_there_is_no_import_cycle_in_the_package():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The two checks above, on a graph that breaks both rules."""
    modules = {"deepsynth_ocr.a": None, "deepsynth_ocr.b": None, "deepsynth_ocr.runs": None}
    assert all(_is_upper(m) is (m == "deepsynth_ocr.runs") for m in modules)
    tree = "def f():\n    from deepsynth_ocr.b import x\n    from deepsynth_ocr import runs\n"
    path = ROOT / "tests" / "_structure_probe.py"
    path.write_text(tree)
    try:
        assert _imports("deepsynth_ocr.a", path, modules) == {"deepsynth_ocr.b", "deepsynth_ocr.runs"}
    finally:
        path.unlink()


def test_every_module_opens_with_a_docstring_saying_what_it_owns():
    missing = [name for name, path in _modules().items()
               if not (ast.get_docstring(ast.parse(path.read_text())) or "").strip()]
    assert missing == []


def test_no_test_loads_a_benchmark_script_by_path():
    offenders = [p.name for p in (ROOT / "tests").glob("*.py")
                 if p.name != Path(__file__).name and "spec_from_file_location" in p.read_text()]
    assert offenders == []
