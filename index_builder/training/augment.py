"""Image-space augmentation for extra feature views of thin training data (Pillow only)."""

from __future__ import annotations

import random

from PIL import Image, ImageEnhance, ImageFilter
from pydantic import BaseModel


class AugmentConfig(BaseModel):
    """Ranges of the random transforms; view 0 of every image is always the clean one."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    max_rotation: float = 12.0
    flip: bool = True
    colour_jitter: float = 0.3  # photos: brightness/contrast/saturation factor in 1 +- this
    stroke_width_change: bool = True  # sketches: thicken or thin the black strokes


def _random_crop(img: Image.Image, rng: random.Random, scale: tuple[float, float]) -> Image.Image:
    w, h = img.size
    s = rng.uniform(*scale) ** 0.5
    cw, ch = max(1, int(w * s * rng.uniform(0.9, 1.1))), max(1, int(h * s * rng.uniform(0.9, 1.1)))
    cw, ch = min(cw, w), min(ch, h)
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def _geometry(img: Image.Image, rng: random.Random, cfg: AugmentConfig) -> Image.Image:
    img = _random_crop(img, rng, cfg.crop_scale)
    if cfg.flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    angle = rng.uniform(-cfg.max_rotation, cfg.max_rotation)
    return img.rotate(angle, resample=Image.BILINEAR, expand=False, fillcolor=(255, 255, 255))


def augment_sketch(img: Image.Image, rng: random.Random, cfg: AugmentConfig) -> Image.Image:
    """Crop, flip, rotate, and thicken (MinFilter) or thin (MaxFilter) dark strokes."""
    img = _geometry(img, rng, cfg)
    if cfg.stroke_width_change:
        choice = rng.random()
        if choice < 0.35:
            img = img.filter(ImageFilter.MinFilter(3))
        elif choice < 0.5 and min(img.size) > 128:
            img = img.filter(ImageFilter.MaxFilter(3))
    return img


def augment_photo(img: Image.Image, rng: random.Random, cfg: AugmentConfig) -> Image.Image:
    """Crop, flip, rotate, and jitter brightness, contrast and saturation."""
    img = _geometry(img, rng, cfg)
    j = cfg.colour_jitter
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(1 - j, 1 + j))
    return img


def augment(img: Image.Image, domain: str, seed: int, cfg: AugmentConfig) -> Image.Image:
    """A reproducible augmented view: the same seed gives the same image."""
    rng = random.Random(seed)
    return (augment_sketch if domain == "sketch" else augment_photo)(img, rng, cfg)
