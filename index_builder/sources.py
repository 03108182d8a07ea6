"""Backbone features of a data root: an image data set (any layout) or the authors' features."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from index_builder.config import BuilderSettings
from index_builder.datasets.authors_features import is_authors_features, load_authors_features
from index_builder.datasets.base import DatasetError, SketchPhotoSet, check_classes_present
from index_builder.datasets.detect import load_dataset
from index_builder.features import FeatureSet, FeatureSpec, extract_features
from model.preprocess import Preprocessing

AUTHORS_BACKBONE = "vgg16-authors"


def data_classes(root: Path) -> list[str]:
    """Every class of the data root that has both sketches and photos."""
    if is_authors_features(root):
        parts = load_authors_features(root, _split_number(root))
        return sorted({c for _, labels, _ in parts.values() for c in labels})
    return load_dataset(root).classes()


def feature_sets(
    root: Path,
    classes: list[str],
    backbone: str,
    backbone_weights: str | None = None,
    sketch_views: int = 1,
    photo_views: int = 1,
    settings: BuilderSettings | None = None,
) -> tuple[FeatureSet, FeatureSet]:
    """(sketch, photo) features of ``classes``, extracted through the cache when needed."""
    if is_authors_features(root):
        if sketch_views > 1 or photo_views > 1:
            raise DatasetError(f"{root}: precomputed features cannot be augmented (views > 1)")
        return _authors_feature_sets(root, classes)
    settings = settings or BuilderSettings()
    # The whole data set goes through one cache entry, so that every split of its classes
    # (folds, validation classes, test classes) reuses the same extraction.
    ds: SketchPhotoSet = load_dataset(root)
    check_classes_present(ds, classes)
    cache = settings.cache_dir / "features"
    out = []
    for domain, samples, views in (("sketch", ds.sketches, sketch_views),
                                   ("photo", ds.photos, photo_views)):  # fmt: skip
        spec = FeatureSpec(backbone=backbone, backbone_weights=backbone_weights,
                           domain=domain, views=views)  # fmt: skip
        every = extract_features(samples, spec, cache, settings.batch_size, settings.workers)
        out.append(every.subset(set(classes)))
    return out[0], out[1]


def _split_number(root: Path) -> int:
    """The split of an authors' features root: its own folder name, else split 1."""
    match = re.fullmatch(r"split(\d)", root.resolve().name)
    return int(match.group(1)) if match else 1


def _authors_feature_sets(root: Path, classes: list[str]) -> tuple[FeatureSet, FeatureSet]:
    parts = load_authors_features(root, _split_number(root))
    wanted = set(classes)
    prep = Preprocessing(image_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    sets = []
    for domain in ("sketch", "image"):
        feats, labels, paths = [], [], []
        for part in ("train", "test"):
            f, lab, pth = parts[f"{part}_{domain}"]
            keep = [i for i, c in enumerate(lab) if c in wanted]
            feats.append(f[keep])
            labels += [lab[i] for i in keep]
            paths += [pth[i] for i in keep]
        stacked = np.concatenate(feats)[:, None, :].astype(np.float32)
        sets.append(FeatureSet(stacked, labels, paths, AUTHORS_BACKBONE, prep))
    return sets[0], sets[1]
