"""``deepsynth-ocr runs archive`` / ``runs restore``: a finished run or sweep directory as one compressed file that
can leave the machine, and back.

An archive is ``<run directory name>.tar.gz`` holding the directory and ``deepsynth-archive.json``: when and from
where it was made, the run's manifest, and every file's size and SHA-256. A live or queued run is refused (its
files are still being written); so is an archive or a directory that already exists: nothing is overwritten.
Restoring unpacks beside the runs root, checks every file against the list, and only then moves the directory in.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import tarfile
import tempfile
from datetime import datetime
from pathlib import Path

from deepsynth_ocr.runs import LIVE, RunDirError, find_run, read_run

RECORD = "deepsynth-archive.json"
FORMAT = 1
SKIPPED = (".lock", ".launch", ".manifest.lock")  # holders and locks: meaningless on another machine


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def archive_runs(specs: list[str], root: str | Path, dest: str | Path) -> list[Path]:
    """Archive each run (a path, or a directory name under ``root``) into ``dest``; returns the archives written.
    Every run is checked before the first is written, so a refusal writes nothing."""
    if not specs:
        raise RunDirError("runs archive: name the runs to archive (directory names under --root, or paths)")
    dest = Path(dest)
    infos = [read_run(find_run(spec, root)) for spec in specs]
    for info in infos:
        if info.status in (*LIVE, "queued"):
            raise RunDirError(f"runs archive: {info.dir.name} is {info.status}; stop it or let it finish first")
        if (dest / f"{info.dir.name}.tar.gz").exists():
            raise RunDirError(f"runs archive: {dest / (info.dir.name + '.tar.gz')} exists; nothing is overwritten")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for info in infos:
        files = sorted(p for p in info.dir.rglob("*") if p.is_file() and p.name not in SKIPPED)
        record = {"format": FORMAT, "run": info.dir.name, "archived_at": datetime.now().isoformat(timespec="seconds"),
                  "host": socket.gethostname(), "manifest": info.manifest,
                  "files": [{"path": p.relative_to(info.dir).as_posix(), "bytes": p.stat().st_size, "sha256": _sha256(p)}
                            for p in files]}
        out = dest / f"{info.dir.name}.tar.gz"
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            for p in files:
                tar.add(p, arcname=f"{info.dir.name}/{p.relative_to(info.dir).as_posix()}", recursive=False)
            data = json.dumps(record, indent=2, default=str).encode()
            member = tarfile.TarInfo(f"{info.dir.name}/{RECORD}")
            member.size, member.mtime = len(data), int(datetime.now().timestamp())
            tar.addfile(member, fileobj=io.BytesIO(data))
        partial.replace(out)  # a complete archive or none
        written.append(out)
    return written


def restore_run(archive: str | Path, root: str | Path) -> Path:
    """Unpack ``archive`` into ``root`` as the run directory it holds, every file checked against its list."""
    archive, root = Path(archive), Path(root)
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as e:
        raise RunDirError(f"runs restore: {archive} is not a run archive ({e})") from None
    with tar:
        tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        if len(tops) != 1:
            raise RunDirError(f"runs restore: {archive} holds {sorted(tops)[:3]}, not one run directory")
        (name,) = tops
        target = root / name
        if target.exists():
            raise RunDirError(f"runs restore: {target} exists; move it away first (nothing is overwritten)")
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=root) as tmp:
            try:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, "..", links out of the folder
            except tarfile.TarError as e:
                raise RunDirError(f"runs restore: {archive}: {e}") from None
            unpacked = Path(tmp) / name
            try:
                record = json.loads((unpacked / RECORD).read_text())
            except (OSError, ValueError):
                raise RunDirError(f"runs restore: {archive} has no readable {RECORD}; not an archive of this kit") from None
            for f in record["files"]:
                path = unpacked / f["path"]
                if not path.is_file() or path.stat().st_size != f["bytes"] or _sha256(path) != f["sha256"]:
                    raise RunDirError(f"runs restore: {archive}: {f['path']} does not match the archive's list; "
                                      "the archive is damaged, nothing was restored")
            (unpacked / RECORD).unlink()
            shutil.move(str(unpacked), str(target))
    return target
