"""Mistakes a user can fix, through the CLI: one line on stderr naming the field, file or value (and what
to do where there is a choice), exit code 2, no traceback. A bug keeps its traceback and exits 1."""

import pytest
import torch

from deepsynth_ocr.cli import main

from .conftest import ROOT

SMOKE = ["train", "-c", "configs/smoke.yaml"]

# (arguments, what the one line must name)
MISTAKES = {
    "unknown field": (SMOKE + ["-s", "train.max_stpes=10"], ["train.max_stpes", "unknown field", "max_steps"]),
    "wrong type": (SMOKE + ["-s", "train.max_steps=ten"], ["train.max_steps", "expected int", "'ten'"]),
    "unknown section": (SMOKE + ["-s", "trian.max_steps=3"], ["trian", "unknown config section", "train"]),
    "override without a value": (SMOKE + ["-s", "train.max_steps"], ["train.max_steps", "section.field=value"]),
    "missing config file": (["train", "-c", "configs/nope.yaml"], ["config file not found", "configs/nope.yaml"]),
    "missing data file": (SMOKE + ["-s", "data.train_path=/nonexistent/train.jsonl"], ["/nonexistent/train.jsonl"]),
    "bad family": (SMOKE + ["-s", "model.family=deepseek-ocr-3"], ["model.family", "deepseek-ocr-3", "deepseek-ocr-2"]),
    "bad dtype": (SMOKE + ["-s", "model.dtype=bf16"], ["model.dtype", "'bf16'", "bfloat16"]),
    "cuda-only backend on a cpu": (SMOKE + ["-s", "model.backend=unsloth"], ["model.backend", "unsloth", "CUDA", "'hf'"]),
    "gpu recipe on a cpu": (["train", "-c", "configs/deepseek-ocr-2-qlora.yaml"], ["CUDA GPU", "configs/smoke.yaml"]),
    "run directory that does not exist": (["export", "/nonexistent/run_1"], ["/nonexistent/run_1", "does not exist"]),
    "report of a run directory that does not exist": (["report", "/nonexistent/run_2"], ["/nonexistent/run_2"]),
    "notebook that does not exist": (["notebook", "09_nope"], ["09_nope", "02_finetune"]),
    "prepare without sources": (["prepare"], ["prepare.sources"]),
    "vllm backend without vllm": (["infer", "data/samples/images", "-o", "OUT", "-s", "infer.backend=vllm"],
                                  ["infer.backend 'vllm'", "vllm", "'hf'"]),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_user_mistake_is_one_line_exit_2_and_no_traceback(mistake, tmp_path, capsys, monkeypatch):
    args, named = MISTAKES[mistake]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(ROOT)
    args = [str(tmp_path / "out.jsonl") if a == "OUT" else a for a in args]
    if args[0] == "train":
        args += ["-s", f"output_root={tmp_path / 'runs'}", "-s", "tracking.wandb=disabled"]
    code = main(args)
    out, err = capsys.readouterr()
    # Progress bars (loading weights) may come first; the error itself is one line.
    lines = [line for line in err.strip().splitlines() if "it/s]" not in line]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert all(n in lines[0] for n in named), (named, lines[0])
    assert "Traceback" not in out + err


def test_a_run_directory_without_an_adapter_names_its_status(tmp_path, capsys):
    run_dir = tmp_path / "run_x"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: x\n")
    (run_dir / "manifest.json").write_text('{"status": "failed"}')
    assert main(["evaluate", "--run", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no adapter/" in err and "status: failed" in err


def test_a_bug_is_not_turned_into_a_one_line_error(tmp_path, monkeypatch):
    """Not a user's mistake (here a ValueError from inside the package): main lets it through, so the
    console script prints its traceback and exits 1, as Python does for an uncaught exception."""
    def broken(run_dir):
        raise ValueError("kit bug")

    monkeypatch.setattr("deepsynth_ocr.report.write_report", broken)
    with pytest.raises(ValueError, match="kit bug"):
        main(["report", str(tmp_path)])
