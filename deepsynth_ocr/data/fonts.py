"""Fonts available offline, by name: the one place that finds font files.

Fonts come first from the files matplotlib ships inside its (pinned) wheel, so the same name is the
same font file on every machine and rendered data is reproducible; system fonts (e.g. Debian's
fonts-dejavu-core, fonts-noto-core) add the names matplotlib lacks. A leaf module: every renderer
(lines, documents, synthetic sets) imports it and it imports none of them.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from deepsynth_ocr.errors import MissingFileError

SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/noto")


@cache
def available_fonts() -> tuple[Path, ...]:
    """Regular (non-bold, non-italic) TrueType fonts found offline, sorted for reproducibility."""
    dirs = []
    try:
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:
        pass
    dirs += [Path(d) for d in SYSTEM_FONT_DIRS]
    fonts: dict[str, Path] = {}
    for d in dirs:
        for p in sorted(d.glob("*.ttf")) if d.is_dir() else ():
            stem = p.stem
            if any(s in stem for s in ("Bold", "Oblique", "Italic", "Light", "Display")):
                continue
            fonts.setdefault(stem, p)  # first directory wins: bundled fonts before system ones
    if not fonts:
        raise RuntimeError(
            "no TrueType font found offline; install Debian's fonts-dejavu-core or matplotlib"
        )
    return tuple(fonts[k] for k in sorted(fonts))


def find_font(name: str = "DejaVuSans") -> Path:
    for p in available_fonts():
        if p.stem == name:
            return p
    raise MissingFileError(
        f"font {name!r} not found; available: {[p.stem for p in available_fonts()]}"
    )
