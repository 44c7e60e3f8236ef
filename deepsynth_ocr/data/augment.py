"""Seeded degradations that make rendered text look scanned: paper texture, rotation, perspective,
blur, contrast, noise and JPEG artefacts. The same ``random.Random`` state gives the same output image.

Used twice: by the synthetic generator (offline, ``data.synthetic``) and on the fly while training
(``AugmentingCollator``, the ``augment`` config section). On the fly, each image's degradation is drawn
from a generator seeded by the run's seed, the epoch and the row's id and text, never from a stream that
advances with each batch: a resumed run, which skips the batches it already trained on, degrades every
later image exactly as the uninterrupted run did. Evaluation never sees it (only training batches pass
through the wrapper).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


@dataclass(frozen=True)
class Augmentations:
    """Upper bounds of each degradation; 0 switches one off. Each image draws its own amounts."""

    texture: float = 0.0  # paper texture strength in [0, 1]: how dark its blotches may get
    rotation: float = 0.0  # degrees, either direction
    perspective: float = 0.0  # corner displacement as a fraction of the image side
    blur: float = 0.0  # Gaussian blur radius in pixels
    contrast: float = 0.0  # contrast factor drawn from [1 - contrast, 1 + contrast]
    noise: float = 0.0  # standard deviation of pixel noise, on the 0-255 scale
    jpeg_quality: int = 0  # lowest JPEG quality (1-95); 0 means no JPEG round trip
    probability: float = 1.0  # chance that each enabled degradation is applied to an image

    @classmethod
    def from_config(cls, cfg) -> Augmentations:
        """The on-the-fly degradations of an ``AugmentConfig`` (no texture or perspective: those belong to rendering)."""
        return cls(rotation=cfg.rotation, blur=cfg.blur, contrast=cfg.contrast, noise=cfg.noise,
                   jpeg_quality=cfg.jpeg_quality, probability=cfg.probability)

    @classmethod
    def scanned(cls) -> Augmentations:
        """A moderate mix that keeps text legible."""
        return cls(texture=0.3, rotation=1.5, perspective=0.02, blur=0.8, noise=8.0, jpeg_quality=40)


def _perspective_coeffs(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> list[float]:
    """Coefficients Pillow's PERSPECTIVE transform needs to map output points ``dst`` to input ``src``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.array(rows, dtype=float), np.array(rhs, dtype=float)).tolist()


def _texture(image: Image.Image, strength: float, np_rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    coarse = np_rng.random((max(2, h // 32), max(2, w // 32)))
    field = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), dtype=float) / 255
    paper = 255.0 * (1.0 - strength * 0.35 * field)
    # The darker of ink and paper: text stays black, the white background takes the texture.
    arr = np.minimum(np.asarray(image, dtype=float), paper[..., None])
    return Image.fromarray(arr.astype(np.uint8))


def augment(image: Image.Image, aug: Augmentations, rng: random.Random) -> Image.Image:
    """``image`` degraded as ``aug`` allows; reproducible for the state of ``rng``."""
    image = image.convert("RGB")
    np_rng = np.random.default_rng(rng.getrandbits(32))

    def on(bound: float) -> bool:
        return bound > 0 and rng.random() < aug.probability

    if on(aug.texture):
        image = _texture(image, rng.uniform(0, aug.texture), np_rng)
    if on(aug.rotation):
        image = image.rotate(rng.uniform(-aug.rotation, aug.rotation), resample=Image.BICUBIC,
                             expand=True, fillcolor=(255, 255, 255))
    if on(aug.perspective):
        w, h = image.size
        corners = [(0, 0), (w, 0), (w, h), (0, h)]
        moved = [(x + rng.uniform(-1, 1) * aug.perspective * w, y + rng.uniform(-1, 1) * aug.perspective * h)
                 for x, y in corners]
        image = image.transform((w, h), Image.PERSPECTIVE, _perspective_coeffs(moved, corners),
                                resample=Image.BICUBIC, fillcolor=(255, 255, 255))
    if on(aug.blur):
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, aug.blur)))
    if on(aug.contrast):
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(max(0.0, 1 - aug.contrast), 1 + aug.contrast))
    if on(aug.noise):
        arr = np.asarray(image, dtype=float) + np_rng.normal(0, rng.uniform(0, aug.noise), (image.height, image.width, 1))
        image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if on(aug.jpeg_quality):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=rng.randint(aug.jpeg_quality, 95))
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return image


class AugmentingCollator:
    """A training collator whose rows' images are degraded first, reproducibly (see the module's docstring).
    ``epoch`` is set by the trainer's callback at each epoch's start; every other attribute is the wrapped
    collator's."""

    def __init__(self, collate, aug: Augmentations, seed: int):
        self.collate, self.aug, self.seed = collate, aug, seed
        self.epoch = 0

    def rng_for(self, row: dict) -> random.Random:
        return random.Random(f"{self.seed}:{self.epoch}:{row.get('id')}:{row.get('text')}")

    def __call__(self, rows: list[dict]):
        return self.collate([{**row, "image": augment(row["image"], self.aug, self.rng_for(row))} for row in rows])

    def __getattr__(self, name):
        if name == "collate":  # not set yet (unpickling in a data-loader worker): no recursion
            raise AttributeError(name)
        return getattr(self.collate, name)
