"""Image normalisation: EXIF orientation, every common mode to RGB, bombs refused before decoding."""

import io

import numpy as np
import pytest
from PIL import Image

from deepsynth_ocr.config import DataConfig
from deepsynth_ocr.data.images import RowError, check_image


def _stored(value, **cfg):
    checked = check_image(value, None, DataConfig(**cfg))
    return Image.open(io.BytesIO(checked.stored["bytes"])), checked.changes


def _encode(im, fmt="PNG", **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), "white")
    im.paste((0, 0, 0), (0, 0, 20, 20))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out, changes = _stored(_encode(im, "JPEG", exif=exif))
    assert out.size == (20, 40) and changes == ["exif_rotated"]
    arr = np.asarray(out.convert("L"))
    assert arr[:15].mean() < 60 and arr[25:].mean() > 200  # the black half is now on top


@pytest.mark.parametrize("mode", ["CMYK", "P", "L", "1", "LA", "RGBA", "I;16", "I", "F"])
def test_modes_become_rgb_with_sensible_values(mode):
    grey = Image.new("L", (16, 16), 200)
    grey.paste(0, (0, 0, 8, 16))
    if mode in ("I;16", "I"):
        im = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # a 16-bit grey image, mode I;16
        im = im.convert("I") if mode == "I" else im
    elif mode == "F":
        im = Image.fromarray(np.asarray(grey).astype(np.float32) / 255)
    elif mode == "1":
        im = grey.convert("1", dither=Image.Dither.NONE)
    else:
        im = grey.convert(mode)
    out, changes = _stored(im)
    assert out.mode == "RGB" and changes
    arr = np.asarray(out.convert("L")).astype(int)
    expected_light = 255 if mode == "1" else 200
    assert abs(arr[:, :8].mean() - 0) <= 2 and abs(arr[:, 8:].mean() - expected_light) <= 3, (mode, arr.mean())


def test_transparent_pixels_become_white_paper():
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent black
    im.putpixel((0, 0), (0, 0, 0, 255))
    out, _ = _stored(_encode(im))
    assert out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 0)


def test_unchanged_rgb_keeps_its_original_bytes():
    data = _encode(Image.new("RGB", (20, 20), "white"), "JPEG", quality=30)
    assert check_image(data, None, DataConfig()).stored["bytes"] == data


def test_bomb_is_refused_from_the_header_without_decoding():
    data = _encode(Image.new("1", (6000, 6000)))  # ~5 KB on disk, 36 Mpx
    with pytest.raises(RowError) as err:
        check_image(data, None, DataConfig(max_image_pixels=10_000_000))
    assert err.value.reason == "decompression_bomb" and "data.max_image_pixels" in err.value.detail


def test_the_same_photo_reads_the_same_through_prepare_infer_and_the_server(tmp_path):
    """One decoding function: EXIF rotation, RGB and the pixel limit apply to all three readers."""
    from deepsynth_ocr.infer import InferInput, load_input
    from deepsynth_ocr.serving.inputs import ApiError, decode_image

    im = Image.new("L", (40, 20), 255)
    im.paste(0, (0, 0, 10, 20))  # a dark band on the left: where it ends up shows the rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "photo.png"
    im.save(photo, exif=exif)
    cfg = DataConfig()
    prepared = Image.open(io.BytesIO(check_image(str(photo), tmp_path, cfg).stored["bytes"]))
    read = [np.asarray(prepared), np.asarray(load_input(InferInput(str(photo), photo, None), 200, cfg)),
            np.asarray(decode_image(photo.read_bytes(), cfg, "image"))]
    assert all(a.shape == (40, 20, 3) for a in read)  # rotated upright, RGB
    assert all(np.array_equal(read[0], a) for a in read[1:])
    assert read[0][:10].max() == 0 and read[0][10:].min() == 255  # the band on the left is on top
    small = DataConfig(max_image_pixels=500)
    with pytest.raises(RowError, match="data.max_image_pixels=500"):
        load_input(InferInput(str(photo), photo, None), 200, small)
    with pytest.raises(ApiError, match="data.max_image_pixels=500"):
        decode_image(photo.read_bytes(), small, "image")
