"""Check and normalise one image: decodable, not a decompression bomb, within size bounds, upright, RGB.

An image that needs no change keeps its original encoded bytes (no recompression of JPEGs); one
that was rotated or converted is stored as PNG. Problems raise ``RowError`` with a reason code.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepsynth_ocr.config import DataConfig
from deepsynth_ocr.errors import RowError

EXIF_ORIENTATION = 0x0112


@dataclass
class CheckedImage:
    """``stored`` is what a ``datasets.Image`` column takes: ``{"bytes": ..., "path": ...}``."""

    stored: dict
    size: tuple[int, int]
    changes: list[str] = field(default_factory=list)


def _source(value, base_dir: Path) -> tuple[bytes | None, Path | None, Image.Image | None]:
    """What an image field holds: encoded bytes, a file path, or an already decoded image."""
    if isinstance(value, Image.Image):
        return None, None, value
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, dict):  # datasets' undecoded Image: {"bytes": b or None, "path": p or None}
        if value.get("bytes"):
            return value["bytes"], None, None
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        if not value:
            raise RowError("missing_field", "field 'image' holds no bytes")
        return bytes(value), None, None
    if not isinstance(value, str) or not value.strip():
        raise RowError("missing_field" if not value else "invalid_field",
                       f"field 'image' must be a path, bytes or {{bytes, path}}, got {type(value).__name__}")
    path = (base_dir / value).resolve()
    if not path.is_file():
        raise RowError("missing_image", f"file not found: {path}")
    return None, path, None


def _to_rgb(im: Image.Image) -> tuple[Image.Image, str | None]:
    """RGB version of ``im`` and what was converted (None when it already was RGB).

    16-bit greys are scaled down (not clipped, which would turn most of a scan white), and
    transparent pixels become white paper rather than black.
    """
    mode = im.mode
    if mode == "RGB":
        return im, None
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).convert("RGB"), f"{mode}->RGB"
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).convert("RGB"), "F->RGB"
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB"), f"{mode}(alpha)->RGB"
    return im.convert("RGB"), f"{mode}->RGB"


def _decode(value, base_dir: Path, cfg: DataConfig):
    """Decoded, upright, RGB image of an image field within the size limits, with what was changed and where
    it came from; ``RowError`` with the reason otherwise."""
    data, path, decoded = _source(value, base_dir)
    name = path.name if path else "image bytes"
    try:
        with warnings.catch_warnings():
            # The kit checks its own pixel limit (data.max_image_pixels) from the header, below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = decoded if decoded is not None else Image.open(path if path else io.BytesIO(data))
            w, h = im.size
            if w * h > cfg.max_image_pixels:
                raise RowError("decompression_bomb", f"{w}x{h} = {w * h} pixels exceeds data.max_image_pixels={cfg.max_image_pixels}")
            if max(w, h) > cfg.max_image_side:
                raise RowError("image_too_large", f"{w}x{h} has a side above data.max_image_side={cfg.max_image_side}")
            if min(w, h) < cfg.min_image_side:
                raise RowError("image_too_small", f"{w}x{h} has a side below data.min_image_side={cfg.min_image_side}")
            im.load()  # full decode: catches truncated files that open() alone accepts
    except RowError:
        raise
    except Image.DecompressionBombError as e:
        raise RowError("decompression_bomb", f"{name}: {e}") from None
    except OSError as e:
        if "truncated" in str(e).lower():
            raise RowError("truncated_image", f"{name}: {e}") from None
        raise RowError("undecodable_image", f"{name}: {e}") from None
    except (UnidentifiedImageError, SyntaxError, ValueError, EOFError) as e:
        raise RowError("undecodable_image", f"{name}: {type(e).__name__}: {e}") from None

    changes = []
    if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)
        changes.append("exif_rotated")
    try:
        im, converted = _to_rgb(im)
    except (ValueError, OSError) as e:
        raise RowError("unsupported_image_mode", f"{name}: mode {im.mode} cannot be converted to RGB ({e})") from None
    if converted:
        changes.append(converted)
    return im, changes, data, path, decoded


def load_image(value, cfg: DataConfig, base_dir: Path = Path(".")) -> Image.Image:
    """The one way the kit reads an image to use it (prepare, infer, the server): the size limits, the EXIF
    rotation and the RGB conversion of ``check_image``, so the same photo reads the same everywhere."""
    return _decode(value, base_dir, cfg)[0]


def render_pdf_page(page, number: int, dpi: int, cfg: DataConfig) -> Image.Image:
    """A PDF page (pypdfium2) as an RGB image at ``dpi``; its pixel count is checked before rendering, where
    a huge page would be the bomb."""
    w, h = (round(side * dpi / 72) for side in page.get_size())
    if w * h > cfg.max_image_pixels:
        raise RowError("decompression_bomb", f"page {number} renders to {w}x{h} pixels, above "
                       f"data.max_image_pixels={cfg.max_image_pixels}; lower the dpi")
    return page.render(scale=dpi / 72).to_pil().convert("RGB")


def check_image(value, base_dir: Path, cfg: DataConfig, embed: bool = True) -> CheckedImage:
    """Validate and normalise one image field.

    ``embed`` False keeps an unchanged file as a path reference (cheap for in-process training
    from a manifest); True always stores bytes, so a saved dataset does not depend on the source.
    """
    im, changes, data, path, decoded = _decode(value, base_dir, cfg)
    if changes or decoded is not None:
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=1)  # fast: prepare is I/O- and decode-bound already
        return CheckedImage({"bytes": buf.getvalue(), "path": None}, im.size, changes)
    if path is not None and not embed:
        return CheckedImage({"bytes": None, "path": str(path)}, im.size)
    return CheckedImage({"bytes": data if data is not None else path.read_bytes(), "path": None}, im.size)
