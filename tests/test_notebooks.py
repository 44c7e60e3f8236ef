"""The notebooks: parameters mirror RunConfig, committed clean, paired with their .py, run by papermill."""

import ast
import json
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

from deepsynth_ocr.cells import EXTRA_PARAMETERS
from deepsynth_ocr.config import RunConfig
from deepsynth_ocr.jobs.notebook import NOTEBOOKS_DIR, NotebookFailed, run_notebook

from .conftest import ROOT

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
# Parameters whose notebook default differs from the RunConfig default on purpose: none yet.
DELIBERATE_DIFFERENCES: dict[str, str] = {}


def test_all_four_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_prepare_data", "02_finetune", "03_evaluate", "04_inference"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_are_run_config_fields_with_config_defaults(path):
    params = papermill.inspect_notebook(str(path))
    assert params, f"{path.name} has no cell tagged 'parameters'"
    defaults = RunConfig().to_flat()
    for name, info in params.items():
        assert name in defaults or name in EXTRA_PARAMETERS, f"{path.name}: {name} is not a RunConfig field"
        if name in defaults and name not in DELIBERATE_DIFFERENCES:
            assert ast.literal_eval(info["default"]) == defaults[name], f"{path.name}: {name} default differs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_clean_and_thin(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "Colab" in nb.cells[0].source.splitlines()[0]
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name} has outputs"
        tree = ast.parse(cell.source)
        logic = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.For, ast.While))]
        assert not logic, f"{path.name}: logic belongs in the package, found {logic} in:\n{cell.source}"
    # The parameters cell holds plain literals only.
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign)
        ast.literal_eval(node.value)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_paired_py_percent_file_is_in_sync(path):
    paired = jupytext.read(path.with_suffix(".py"))
    nb = nbformat.read(path, as_version=4)
    strip = lambda cells: [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in cells]  # noqa: E731
    assert strip(paired.cells) == strip(nb.cells), f"run: jupytext --sync {path.with_suffix('.py')}"


def test_a_missing_data_path_fails_naming_the_parameter_and_keeps_the_notebook(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(NotebookFailed) as err:
        run_notebook("02_finetune", {"data_train_path": "/nonexistent/train.jsonl", "tracking_wandb": "disabled"},
                     str(ROOT / "configs" / "smoke.yaml"), run_dir)
    assert "data_train_path" in str(err.value) and "/nonexistent/train.jsonl" in str(err.value)
    executed = run_dir / "02_finetune.ipynb"
    assert executed.is_file()
    errors = [o for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1 and "/nonexistent/train.jsonl" in errors[0]["evalue"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert "config_from_parameters" in "\n".join(manifest["failing_cell"]["source"])


@pytest.mark.slow
def test_notebook_and_cli_give_the_same_metrics(tmp_path):
    from deepsynth_ocr.cli import main

    overrides = {"train_max_steps": 20, "tracking_wandb": "disabled", "eval_max_samples": 8}
    nb_dir = run_notebook("02_finetune", overrides, str(ROOT / "configs" / "smoke.yaml"), tmp_path / "nb")
    assert main(["train", "-c", str(ROOT / "configs" / "smoke.yaml"), "-s", f"output_root={tmp_path / 'cli'}",
                 "-s", "train.max_steps=20", "-s", "tracking.wandb=disabled", "-s", "eval.max_samples=8"]) == 0
    cli_dir = next((tmp_path / "cli").iterdir())
    nb_metrics = json.loads((nb_dir / "manifest.json").read_text())["metrics"]
    cli_metrics = json.loads((cli_dir / "manifest.json").read_text())["metrics"]
    for tag in ("before", "after"):
        assert nb_metrics[tag]["cer"] == pytest.approx(cli_metrics[tag]["cer"], abs=1e-9)
    assert nb_metrics["train_loss"] == pytest.approx(cli_metrics["train_loss"], rel=1e-6)
    assert (nb_dir / "02_finetune.ipynb").is_file()


def test_deepsynth_notebook_cli_reports_unknown_notebooks(capsys):
    from deepsynth_ocr.jobs.notebook import find_notebook

    with pytest.raises(FileNotFoundError, match="02_finetune"):
        find_notebook("99_nope")
    assert Path(find_notebook("02_finetune")).name == "02_finetune.ipynb"


def test_notebook_cli_exits_non_zero_naming_the_bad_parameter(tmp_path, capsys, monkeypatch):
    from deepsynth_ocr.cli import main

    monkeypatch.chdir(ROOT)
    code = main(["notebook", "02_finetune", "-f", "configs/smoke.yaml", "--run-dir", str(tmp_path / "run"),
                 "-p", "data_eval_path", "/nonexistent/eval.jsonl"])
    assert code == 1
    err = capsys.readouterr().err
    assert "data_eval_path" in err and "/nonexistent/eval.jsonl" in err and "02_finetune.ipynb" in err
    assert (tmp_path / "run" / "02_finetune.ipynb").is_file()
