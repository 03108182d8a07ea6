"""Backbone features of a data root: an image data set (any layout) or the authors' features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from index_builder.training.config import BuilderSettings
from index_builder.training.datasets.authors_features import (
    file_split,
    is_authors_features,
    load_authors_features,
    split_dirs,
)
from index_builder.training.datasets.base import DatasetError, SketchPhotoSet, check_classes_present
from index_builder.training.datasets.detect import find_images, load_dataset
from index_builder.training.datasets.sketchy import Gallery
from index_builder.training.datasets.splits import (
    BUILTIN_SPLITS,
    match_classes,
    read_class_list,
    resolve_split,
)
from index_builder.training.features import (
    FeatureSet,
    FeatureSpec,
    cached_backbone,
    extract_features,
)
from model.preprocess import Preprocessing

AUTHORS_BACKBONE = "vgg16-authors"


def data_split(
    root: Path, train: str | Path | None, test: str | Path | None
) -> tuple[Path, list[str], list[str]]:
    """(the folder to read, sorted train classes, sorted test classes) of a data root.

    The authors' feature files carry their split: with no class list that split is used; a
    list that contradicts it is an error naming the classes; a folder holding both splits
    resolves to the one the list names. Image data sets need a list; the other side is the rest.
    """
    check_one_kind(root)
    if not is_authors_features(root):
        return (root, *resolve_split(data_classes(root), train, test))
    folder = pick_split_dir(root, train, test)
    file_train, file_test = file_split(folder)
    if train is None and test is None:
        return folder, file_train, file_test
    got_train, got_test = resolve_split(file_train + file_test, train, test)
    check_matches_files(folder, file_train, file_test, got_train, got_test)
    return folder, got_train, got_test


def check_one_kind(root: Path) -> None:
    """Refuse a folder holding both images and the authors' feature files: say how to pick."""
    if not is_authors_features(root):
        return
    images = find_images(root)
    if images is None:
        return
    folders = ", ".join(str(d) for d in split_dirs(root).values())
    use_images = (
        f"--data {images} for the images"
        if images != Path(root)
        else "move the feature folder elsewhere to use the images"
    )
    raise DatasetError(
        f"{root} holds both images ({images}) and the authors' feature files ({folders}); "
        f"say which to use: --data <a split folder> for the features, or {use_images}"
    )


def pick_split_dir(
    root: Path, train: str | Path | None, test: str | Path | list[str] | None
) -> Path:
    """The split folder of the authors' features that the class lists (or names) name."""
    found = split_dirs(root)
    if len(found) == 1:
        return next(iter(found.values()))
    for spec in (test, train):
        if (
            isinstance(spec, str | Path) and str(spec) in BUILTIN_SPLITS
        ):  # sketchy-split1, sketchy-split1-sake, sketchy-split2
            number = int(str(spec).removeprefix("sketchy-split")[0])
            if number in found:
                return found[number]
    if test is not None:  # a class file: the split whose test classes it lists
        names = test if isinstance(test, list) else read_class_list(test)
        hits = [d for d in found.values() if _same_classes(names, file_split(d)[1])]
        if len(hits) == 1:
            return hits[0]
    folders = ", ".join(f"split {n}: {d}" for n, d in found.items())
    raise DatasetError(
        f"{root} holds the authors' features of several splits ({folders}); pass one split "
        "folder as --data, or name the split with --test-classes sketchy-split1 / sketchy-split2"
    )


def _same_classes(names: list[str], known: list[str]) -> bool:
    matched, unknown = match_classes(names, known)
    return not unknown and set(matched) == set(known)


def check_matches_files(
    folder: Path, file_train: list[str], file_test: list[str], train: list[str], test: list[str]
) -> None:
    """Refuse class lists that put a class of the files' training part into the test set."""
    trained = sorted(set(test) & set(file_train))
    unseen = sorted(set(train) & set(file_test))
    if trained or unseen:
        parts = []
        if trained:
            parts.append(
                f"test class(es) {', '.join(map(repr, trained))} are in the files' training part"
            )
        if unseen:
            parts.append(
                f"training class(es) {', '.join(map(repr, unseen))} are in the files' test part"
            )
        raise DatasetError(
            f"the class lists contradict the split of the feature files in {folder}: "
            f"{'; '.join(parts)}. Omit --train-classes / --test-classes to use the files' own "
            "split, or pass the other split's folder"
        )


def data_classes(root: Path) -> list[str]:
    """Every class of the data root that has both sketches and photos."""
    if is_authors_features(root):
        train, test = file_split(pick_split_dir(root, None, None))
        return sorted(train + test)
    return load_dataset(root).classes()


def feature_sets(
    root: Path,
    classes: list[str],
    backbone: str,
    backbone_weights: str | None = None,
    sketch_views: int = 1,
    photo_views: int = 1,
    settings: BuilderSettings | None = None,
    gallery: Gallery = "extended",
    pseudo_sketch: bool = False,
) -> tuple[FeatureSet, FeatureSet]:
    """(sketch, photo) features of ``classes``, extracted through the cache when needed.
    ``pseudo_sketch``: each photo's features are [the photo's; its pseudo-sketch's]."""
    if is_authors_features(root):
        if pseudo_sketch:
            raise DatasetError(f"{root}: precomputed features have no pseudo-sketches")
        if sketch_views > 1 or photo_views > 1:
            raise DatasetError(f"{root}: precomputed features cannot be augmented (views > 1)")
        return _authors_feature_sets(root, classes)
    settings = settings or BuilderSettings()
    # The whole data set goes through one cache entry, so that every split of its classes
    # (folds, validation classes, test classes) reuses the same extraction.
    ds: SketchPhotoSet = load_dataset(root, gallery)
    check_classes_present(ds, classes)
    cache = settings.cache_dir / "features"
    out = []
    for domain, samples, views in (
        ("sketch", ds.sketches, sketch_views),
        ("photo", ds.photos, photo_views),
    ):
        spec = FeatureSpec(
            backbone=backbone, backbone_weights=backbone_weights, domain=domain, views=views
        )
        net = cached_backbone(backbone, backbone_weights, domain == "photo" and pseudo_sketch)
        every = extract_features(samples, spec, cache, settings.batch_size, settings.workers, net)
        out.append(every.subset(set(classes)))
    return out[0], out[1]


def _authors_feature_sets(root: Path, classes: list[str]) -> tuple[FeatureSet, FeatureSet]:
    folder = pick_split_dir(root, None, None)
    number = next(n for n, d in split_dirs(root).items() if d == folder)
    parts = load_authors_features(folder, number)
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
