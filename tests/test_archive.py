"""`deepsynth-ocr runs archive` / `runs restore`: a finished run as one .tar.gz with a manifest of every file, back
byte for byte; never of a live run, never over an existing archive or directory, never from a damaged archive."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from deepsynth_ocr.cli import main
from deepsynth_ocr.runs import update_manifest


def _run(root, name, status="ok"):
    run = root / name
    (run / "eval").mkdir(parents=True)
    update_manifest(run, name=name.split("_")[0], kind="train", status=status, created_at="2026-12-06T10:00:00")
    (run / "config.yaml").write_text("name: x\n")
    (run / "eval" / "after.jsonl").write_text('{"id": "r1", "prediction": "ab"}\n')
    (run / "adapter.bin").write_bytes(bytes(range(256)) * 64)
    (run / ".lock").write_text("{}")  # a holder's record: not archived
    return run


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_finished_run_archives_and_restores_byte_for_byte(tmp_path, capsys):
    root, other = tmp_path / "runs", tmp_path / "elsewhere"
    run = _run(root, "smoke_20261206_100000")
    assert main(["runs", "archive", run.name, "--root", str(root), "--to", str(tmp_path / "arch")]) == 0
    archive = tmp_path / "arch" / f"{run.name}.tar.gz"
    assert f"archived {archive}" in capsys.readouterr().out
    with tarfile.open(archive) as tar:
        record = json.load(tar.extractfile(f"{run.name}/deepsynth-archive.json"))
    assert record["manifest"]["status"] == "ok" and record["run"] == run.name
    assert {f["path"] for f in record["files"]} == {"manifest.json", "config.yaml", "eval/after.jsonl", "adapter.bin"}
    assert main(["runs", "restore", str(archive), "--root", str(other)]) == 0
    expected = {k: v for k, v in _files(run).items() if not k.endswith(".lock")}
    assert _files(other / run.name) == expected
    # nothing is overwritten: the archive again, the restore again
    assert main(["runs", "archive", run.name, "--root", str(root), "--to", str(tmp_path / "arch")]) == 2
    assert "exists; nothing is overwritten" in capsys.readouterr().err
    assert main(["runs", "restore", str(archive), "--root", str(other)]) == 2
    assert "exists; move it away first" in capsys.readouterr().err


def test_a_live_run_is_refused_and_nothing_is_written_for_any_run(tmp_path, capsys):
    root = tmp_path / "runs"
    done, live = _run(root, "a_20261206_100000"), _run(root, "b_20261206_100001", status="running")
    (live / ".lock").write_text(json.dumps({"pid": 1, "host": __import__("socket").gethostname()}))  # pid 1 lives
    code = main(["runs", "archive", done.name, live.name, "--root", str(root), "--to", str(tmp_path / "arch")])
    err = capsys.readouterr().err
    assert code == 2 and f"{live.name} is running" in err and err.count("\n") == 1
    assert not (tmp_path / "arch").exists()


def test_a_damaged_or_foreign_archive_restores_nothing(tmp_path, capsys):
    root = tmp_path / "runs"
    run = _run(root, "smoke_20261206_100000")
    main(["runs", "archive", run.name, "--root", str(root), "--to", str(tmp_path / "arch")])
    good = tmp_path / "arch" / f"{run.name}.tar.gz"
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(good) as src, tarfile.open(damaged, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith("adapter.bin"):
                data = b"\xff" + data[1:]  # one byte changed (it was 0), same size
            dst.addfile(member, io.BytesIO(data))
    assert main(["runs", "restore", str(damaged), "--root", str(tmp_path / "out")]) == 2
    assert "adapter.bin does not match" in capsys.readouterr().err
    assert not (tmp_path / "out" / run.name).exists() and list((tmp_path / "out").iterdir()) == []
    escaping = tmp_path / "escape.tar.gz"
    with tarfile.open(escaping, "w:gz") as tar:
        member = tarfile.TarInfo("../outside.txt")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    assert main(["runs", "restore", str(escaping), "--root", str(tmp_path / "out2")]) == 2
    assert not (tmp_path / "outside.txt").exists()
    capsys.readouterr()


@pytest.mark.parametrize("argv, words", [(["runs", "archive"], "name the runs"), (["runs", "restore"], "name the archive"),
                                         (["runs", "a", "b"], "one run at a time")])
def test_archive_commands_without_their_arguments_say_what_to_give(argv, words, tmp_path, capsys):
    assert main([*argv, "--root", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err
