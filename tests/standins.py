"""Tiny stand-ins for the real data sets, in their exact on-disk layouts (helpers, not tests).

Each class draws its own shape (and, for photos, its own colour) with random jitter, so that
images differ by class: sketches are black outlines on white PNGs, photos coloured filled
shapes on a textured background (JPEGs). Everything is deterministic by ``seed``.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
N_SHAPES = 8
SKETCHY_SKETCHES = "sketch/tx_000000000000"
SKETCHY_PHOTOS = "extended_photo"
SAKE_SKETCHES = "256x256/sketch/tx_000000000000_ready"
SAKE_PHOTOS = "EXTEND_image_sketchy_ready"

Polygon = list[tuple[float, float]]


def unit_shape(kind: int) -> Polygon:
    """Shape ``kind`` (0..N_SHAPES-1) as a polygon around the origin, radius about 1."""
    if kind == 0:  # circle
        return polar([1.0] * 16)
    if kind == 1:  # square
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if kind == 2:  # triangle
        return polar([1.0] * 3)
    if kind == 3:  # diamond
        return [(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)]
    if kind == 4:  # plus sign
        a, b = 0.3, 1.0
        return [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    if kind == 5:  # five-pointed star
        return polar([1.0, 0.4] * 5)
    if kind == 6:  # arrow
        return [
            (-1.0, -0.3),
            (0.2, -0.3),
            (0.2, -0.8),
            (1.0, 0.0),
            (0.2, 0.8),
            (0.2, 0.3),
            (-1.0, 0.3),
        ]
    return [(-0.8, -1.0), (-0.3, -1.0), (-0.3, 0.5), (0.8, 0.5), (0.8, 1.0), (-0.8, 1.0)]  # L


def polar(radii: Sequence[float]) -> Polygon:
    """Points at the given radii, evenly spaced in angle, starting at the top."""
    n = len(radii)
    return [
        (r * math.sin(2 * math.pi * i / n), -r * math.cos(2 * math.pi * i / n))
        for i, r in enumerate(radii)
    ]


def class_polygon(class_index: int, rng: np.random.Generator) -> Polygon:
    """The class's shape, squashed and rotated by its class group, jittered in place and size.

    Classes ``i`` and ``i + N_SHAPES`` share a shape but differ in aspect and angle, so that
    even round shapes tell the groups apart.
    """
    group = class_index // N_SHAPES
    squash = (1.0, 0.6, 0.8)[group % 3]
    angle = group * math.pi / 7 + rng.uniform(-0.15, 0.15)
    radius = SIZE * rng.uniform(0.3, 0.4)
    cx, cy = SIZE / 2 + rng.uniform(-3, 3, size=2)
    cos, sin = math.cos(angle), math.sin(angle)
    return [
        (cx + radius * (x * squash * cos - y * sin), cy + radius * (x * squash * sin + y * cos))
        for x, y in unit_shape(class_index % N_SHAPES)
    ]


def class_colour(class_index: int) -> tuple[int, int, int]:
    """A saturated colour per class (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((class_index * 0.618034) % 1.0, 0.85, 0.9)
    return round(r * 255), round(g * 255), round(b * 255)


def draw_sketch(class_index: int, rng: np.random.Generator) -> Image.Image:
    """Black outline of the class shape on white, with a stray stroke."""
    img = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(img)
    poly = class_polygon(class_index, rng)
    draw.line([*poly, poly[0]], fill="black", width=int(rng.integers(1, 3)))
    x0, y0, x1, y1 = rng.uniform(0, SIZE, size=4)
    draw.line([(x0, y0), (x0 + (x1 - x0) / 4, y0 + (y1 - y0) / 4)], fill="black", width=1)
    return img


def draw_photo(class_index: int, rng: np.random.Generator) -> Image.Image:
    """Filled class shape in the class colour on a noisy, muted background."""
    tone = rng.uniform(90, 170, size=3)
    noise = rng.normal(0, 25, size=(SIZE, SIZE, 3))
    background = np.clip(tone + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(background, "RGB")
    shift = rng.integers(-20, 21, size=3)
    colour = tuple(int(v) for v in np.clip(np.array(class_colour(class_index)) + shift, 0, 255))
    ImageDraw.Draw(img).polygon(class_polygon(class_index, rng), fill=colour)
    return img


def synset(class_index: int) -> str:
    """A Sketchy-like ImageNet synset id for a class."""
    return f"n{2691156 + 7919 * class_index:08d}"


def sketchy_names(class_index: int, n_sketches: int, n_photos: int) -> tuple[list[str], list[str]]:
    """Sketch and photo file names as in Sketchy Extended.

    Half the photos (rounded up) are Sketchy's own (``n02691156_58.jpg``), the rest from the
    extension (``ext_1.jpg``); sketches (``n02691156_58-1.png``) are of Sketchy's photos.
    """
    n_own = max(1, (n_photos + 1) // 2)
    ids = [f"{synset(class_index)}_{58 + 7 * i}" for i in range(n_own)]
    photos = [f"{i}.jpg" for i in ids][:n_photos]
    photos += [f"ext_{k + 1}.jpg" for k in range(n_photos - len(photos))]
    sketches = [f"{ids[k % n_own]}-{k // n_own + 1}.png" for k in range(n_sketches)]
    return sketches, photos


def write_images(
    folder: Path, names: Sequence[str], class_index: int, kind: str, seed: int
) -> None:
    """Draw and save one image per name (``kind`` "sketch" or "photo"); creates ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    draw = draw_sketch if kind == "sketch" else draw_photo
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, class_index, i, kind == "sketch"])
        draw(class_index, rng).save(folder / name)


def write_sketchy(
    sketch_dir: Path,
    photo_dir: Path,
    classes: Sequence[str],
    sketches_per_class: int,
    photos_per_class: int,
    seed: int,
) -> None:
    """Sketchy-named sketches and photos of every class under the two folders."""
    for ci, cls in enumerate(classes):
        sketches, photos = sketchy_names(ci, sketches_per_class, photos_per_class)
        write_images(sketch_dir / cls, sketches, ci, "sketch", seed)
        write_images(photo_dir / cls, photos, ci, "photo", seed)


def make_sketchy_authors_layout(
    root: Path,
    classes: Sequence[str],
    sketches_per_class: int,
    photos_per_class: int,
    seed: int = 0,
) -> Path:
    """``<root>/Sketchy/sketch/tx_000000000000/<class>`` + ``extended_photo/<class>``.

    Returns ``<root>/Sketchy``, the folder holding ``sketch/`` and ``extended_photo/``.
    """
    base = Path(root) / "Sketchy"
    sketch_dir, photo_dir = base / SKETCHY_SKETCHES, base / SKETCHY_PHOTOS
    write_sketchy(sketch_dir, photo_dir, classes, sketches_per_class, photos_per_class, seed)
    return base


def make_sketchy_sake_layout(
    root: Path,
    classes: Sequence[str],
    sketches_per_class: int,
    photos_per_class: int,
    seed: int = 0,
) -> Path:
    """SAKE's layout: ``<root>/256x256/sketch/tx_000000000000_ready/<class>`` and
    ``<root>/EXTEND_image_sketchy_ready/<class>``. Returns ``root``.
    """
    root = Path(root)
    sketch_dir, photo_dir = root / SAKE_SKETCHES, root / SAKE_PHOTOS
    write_sketchy(sketch_dir, photo_dir, classes, sketches_per_class, photos_per_class, seed)
    return root


def make_folder_layout(
    root: Path,
    classes: Sequence[str],
    sketches_per_class: int,
    photos_per_class: int,
    seed: int = 0,
) -> Path:
    """``<root>/sketch/<class>/sketch_<i>.png`` and ``<root>/photo/<class>/photo_<i>.jpg``.

    Returns ``root``.
    """
    root = Path(root)
    for ci, cls in enumerate(classes):
        sketches = [f"sketch_{i:03d}.png" for i in range(sketches_per_class)]
        photos = [f"photo_{i:03d}.jpg" for i in range(photos_per_class)]
        write_images(root / "sketch" / cls, sketches, ci, "sketch", seed)
        write_images(root / "photo" / cls, photos, ci, "photo", seed)
    return root


def make_authors_features(
    root: Path,
    split: int,
    classes: Sequence[str],
    n_per_class: int,
    dim: int = 512,
    test_classes: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """``<root>/SketchyVGG/split<split>/{train,test}_{sketch,image}_{features,paths}.npy``.

    Test classes default to the last quarter of ``classes`` (at least one). Features are a
    class centre plus a per-domain offset plus noise, float32; paths are absolute Sketchy paths
    ending in ``<class>/<file>``. Returns ``root``.
    """
    root = Path(root)
    n_test = max(1, len(classes) // 4)
    test = list(classes[-n_test:] if test_classes is None else test_classes)
    train = [c for c in classes if c not in test]
    folder = root / "SketchyVGG" / f"split{split}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, split])
    centres = {c: rng.normal(0, 1, dim) for c in classes}
    offsets = {d: rng.normal(0, 0.5, dim) for d in ("sketch", "image")}
    for stage, stage_classes in (("train", train), ("test", test)):
        for domain in ("sketch", "image"):
            feats, paths = fake_part(classes, stage_classes, domain, n_per_class, centres, rng)
            feats = (feats + offsets[domain]).astype(np.float32)
            np.save(folder / f"{stage}_{domain}_features.npy", feats)
            np.save(folder / f"{stage}_{domain}_paths.npy", np.array(paths))
    return root


def fake_part(
    classes: Sequence[str],
    part_classes: Sequence[str],
    domain: str,
    n_per_class: int,
    centres: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[str]]:
    """Features (before the domain offset) and Sketchy paths of one part of the release."""
    feats, paths = [], []
    for cls in part_classes:
        sketches, photos = sketchy_names(list(classes).index(cls), n_per_class, n_per_class)
        if domain == "sketch":
            paths += [f"/data/Sketchy/{SKETCHY_SKETCHES}/{cls}/{n}" for n in sketches]
        else:
            paths += [f"/data/Sketchy/{SKETCHY_PHOTOS}/{cls}/{n}" for n in photos]
        feats.append(centres[cls] + rng.normal(0, 0.3, (n_per_class, len(centres[cls]))))
    return np.concatenate(feats), paths


# SEM-PCYC's download_datasets.sh renames these two class folders
SEMPCYC_RENAMES = {"hot-air_balloon": "hot_air_balloon", "jack-o-lantern": "jack_o_lantern"}

# arrangement -> (sketch folder, extended photo folder, Sketchy's own photo folder or None),
# relative to the root a user passes
ARRANGEMENTS: dict[str, tuple[str, str, str | None]] = {
    "sem-pcyc": ("Sketchy/" + SKETCHY_SKETCHES, "Sketchy/" + SKETCHY_PHOTOS, None),
    "iiae": ("dataset/Sketchy/" + SKETCHY_SKETCHES, "dataset/Sketchy/" + SKETCHY_PHOTOS, None),
    "sake": (
        "Sketchy/" + SAKE_SKETCHES,
        "Sketchy/" + SAKE_PHOTOS,
        "Sketchy/256x256/photo/tx_000000000000_ready",
    ),
    "archives": (
        "256x256/sketch/tx_000000000000",
        "EXTEND_image_sketchy",
        "256x256/photo/tx_000000000000",
    ),
    "doodle2search": ("Sketchy/sketch/tx_000000000000", "EXTEND_image_sketchy", None),
}


def make_sketchy_arrangement(
    root: Path,
    arrangement: str,
    classes: Sequence[str],
    sketches_per_class: int = 1,
    photos_per_class: int = 1,
    own_photos_per_class: int = 1,
    seed: int = 0,
) -> Path:
    """Sketchy Extended as one published arrangement lays it out (``ARRANGEMENTS``); classes
    are written as given (pass ``SEMPCYC_RENAMES``-renamed names for SEM-PCYC's). Own photos
    (Sketchy's ``256x256/photo``) are ``own_<i>.jpg``. Returns ``root``."""
    root = Path(root)
    sketch_rel, photo_rel, own_rel = ARRANGEMENTS[arrangement]
    write_sketchy(
        root / sketch_rel, root / photo_rel, classes, sketches_per_class, photos_per_class, seed
    )
    if own_rel is not None:
        for ci, cls in enumerate(classes):
            names = [f"own_{i}.jpg" for i in range(own_photos_per_class)]
            write_images(root / own_rel / cls, names, ci, "photo", seed + 1)
    return root


def sempcyc_names(classes: Sequence[str]) -> list[str]:
    """Class names as SEM-PCYC's download script leaves them."""
    return [SEMPCYC_RENAMES.get(c, c) for c in classes]
