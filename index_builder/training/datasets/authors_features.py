"""The IIAE authors' released 512-d VGG features of Sketchy Extended.

``SketchyVGG/split{1,2}/{train,test}_{sketch,image}_{features,paths}.npy``: features are
(N, D) floats; paths are N strings ending in ``<class>/<file>``. The files carry their split:
the classes of the ``train_*`` parts are trained on, those of ``test_*`` are unseen. IIAE's
code keeps them in ``<root>/dataset/SketchyVGG``.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from index_builder.training.datasets.base import DatasetError

PARTS = ("train_sketch", "train_image", "test_sketch", "test_image")
FEATURES_DIR = "SketchyVGG"
NPY_MAGIC = b"\x93NUMPY"


class FeaturePart(NamedTuple):
    """One part of the release: features (N, D) float32, class labels and source paths."""

    features: np.ndarray
    labels: list[str]
    paths: list[str]


def holds_split_files(folder: Path) -> bool:
    """Whether ``folder`` holds at least one of the release's feature files."""
    return any((folder / f"{part}_features.npy").is_file() for part in PARTS)


def find_split_dir(root: Path, split: int) -> Path | None:
    """The split folder under ``root``, ``root/SketchyVGG``, ``root/dataset/SketchyVGG``, or
    ``root`` itself."""
    root = Path(root)
    name = f"split{split}"
    for folder in (root / FEATURES_DIR / name, root / "dataset" / FEATURES_DIR / name, root / name):
        if holds_split_files(folder):
            return folder
    if re.fullmatch(r"split\d+", root.name) and root.name != name:
        return None
    return root if holds_split_files(root) else None


def is_authors_features(root: Path, split: int | None = None) -> bool:
    """Whether ``root`` holds the authors' features (of ``split``, or of split 1 or 2)."""
    splits = (1, 2) if split is None else (split,)
    return any(find_split_dir(root, s) is not None for s in splits)


def split_dirs(root: Path) -> dict[int, Path]:
    """Split number -> its folder, for each split found under ``root`` (one folder once)."""
    found: dict[int, Path] = {}
    for split in (1, 2):
        folder = find_split_dir(root, split)
        if folder is not None and folder not in found.values():
            found[split] = folder
    return found


def file_split(folder: Path) -> tuple[list[str], list[str]]:
    """The sorted (train, test) classes the files of one split folder carry."""
    sides = []
    for stage in ("train", "test"):
        labels: set[str] = set()
        for domain in ("sketch", "image"):
            path_file = folder / f"{stage}_{domain}_paths.npy"
            labels |= {label_of(p, path_file, i) for i, p in enumerate(load_paths(path_file))}
        sides.append(sorted(labels))
    return sides[0], sides[1]


def load_authors_features(root: Path, split: int) -> dict[str, FeaturePart]:
    """The four parts of one split, keyed by ``train_sketch``, ..., ``test_image``."""
    folder = find_split_dir(root, split)
    if folder is None:
        raise DatasetError(
            f"no authors' features of split {split} in {root}: expected "
            f"{FEATURES_DIR}/split{split}/<part>_features.npy and <part>_paths.npy "
            f"for parts {', '.join(PARTS)}"
        )
    parts = {part: load_part(folder, part) for part in PARTS}
    check_same_dim(folder, parts)
    return parts


def load_part(folder: Path, part: str) -> FeaturePart:
    """One part's features, labels and paths, checked against each other."""
    feat_file = folder / f"{part}_features.npy"
    path_file = folder / f"{part}_paths.npy"
    features = load_features(feat_file)
    paths = load_paths(path_file)
    if len(paths) != len(features):
        raise DatasetError(
            f"{feat_file} has {len(features)} rows but {path_file} has {len(paths)} paths"
        )
    return FeaturePart(features, [label_of(p, path_file, i) for i, p in enumerate(paths)], paths)


def load_features(path: Path) -> np.ndarray:
    """A 2-D finite float array from ``path``, as float32."""
    arr = load_npy(path, allow_pickle=False)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DatasetError(f"{path}: expected a 2-D numeric array, found {arr.dtype} {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: holds NaN or infinite values")
    return arr


def load_paths(path: Path) -> list[str]:
    """A 1-D array of path strings (unicode, bytes, or pickled objects) as a list of str."""
    arr = load_npy(path, allow_pickle=True)  # old releases pickle object arrays of str
    if arr.ndim != 1:
        raise DatasetError(f"{path}: expected a 1-D array of paths, found shape {arr.shape}")
    return [p.decode() if isinstance(p, bytes) else str(p) for p in arr.tolist()]


def load_npy(path: Path, allow_pickle: bool) -> np.ndarray:
    """One array from a ``.npy`` file; DatasetError naming the file when missing or unreadable.

    With ``allow_pickle`` an object array inside a ``.npy`` file is unpickled; a file that is
    not ``.npy`` (a bare pickle, an ``.npz``) is refused either way.
    """
    if not path.is_file():
        raise DatasetError(f"missing feature file {path}")
    with path.open("rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise DatasetError(f"{path}: not a .npy file")
    try:
        return np.load(path, allow_pickle=allow_pickle, encoding="latin1")
    except (ValueError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise DatasetError(f"{path}: not a readable .npy array ({err})") from err


def label_of(path: str, source: Path, index: int) -> str:
    """The class of a path: its parent folder's name (``/`` or ``\\`` separated)."""
    parts = [p for p in re.split(r"[/\\]", path) if p]
    if len(parts) < 2:
        raise DatasetError(f"{source}[{index}]: path {path!r} does not end in <class>/<file>")
    return parts[-2]


def check_same_dim(folder: Path, parts: dict[str, FeaturePart]) -> None:
    """Raise DatasetError when the parts' feature widths differ."""
    dims = {part: p.features.shape[1] for part, p in parts.items()}
    if len(set(dims.values())) > 1:
        raise DatasetError(f"{folder}: feature widths differ between parts: {dims}")
