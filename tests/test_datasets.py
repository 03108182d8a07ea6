"""Data set loaders, split lists and the authors' features, on tiny stand-ins of each layout."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from standins import (
    ARRANGEMENTS,
    SAKE_PHOTOS,
    SKETCHY_PHOTOS,
    SKETCHY_SKETCHES,
    make_authors_features,
    make_folder_layout,
    make_sketchy_arrangement,
    make_sketchy_authors_layout,
    make_sketchy_sake_layout,
    sempcyc_names,
)

from index_builder.training.datasets.authors_features import (
    is_authors_features,
    load_authors_features,
)
from index_builder.training.datasets.base import DatasetError
from index_builder.training.datasets.detect import load_dataset
from index_builder.training.datasets.folder import load_folder
from index_builder.training.datasets.sketchy import is_sketchy, load_sketchy
from index_builder.training.datasets.splits import (
    BUILTIN_SPLITS,
    SKETCHY_CLASSES,
    match_classes,
    read_class_list,
    resolve_split,
)
from index_builder.training.evaluate import _test_classes
from index_builder.training.sources import data_split, pick_split_dir

CLASSES = ["airplane", "jack-o-lantern", "teddy_bear", "wine_bottle"]


# --- folder layout -------------------------------------------------------------------------


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return make_folder_layout(tmp_path / "data", CLASSES, 3, 2)


def test_folder_loads_every_class(folder_root: Path) -> None:
    ds = load_folder(folder_root)
    assert ds.classes() == sorted(CLASSES)
    assert len(ds.sketches) == 4 * 3 and len(ds.photos) == 4 * 2
    assert ds.meta["layout"] == "folder"
    assert all(s.path.parent.name == s.label and s.path.is_file() for s in ds.sketches)
    assert all(p.path.parent.parent.name == "photo" for p in ds.photos)
    assert [s.path for s in ds.sketches] == sorted(s.path for s in ds.sketches)


def test_folder_reads_any_image_suffix_and_skips_other_files(folder_root: Path) -> None:
    photos = folder_root / "photo" / "airplane"
    Image.new("RGB", (8, 8)).save(photos / "extra.BMP")
    Image.new("RGB", (8, 8)).save(photos / "extra.webp")
    (photos / "notes.txt").write_text("not an image")
    (photos / ".hidden.jpg").write_bytes(b"macOS resource fork")
    (folder_root / "sketch" / ".cache").mkdir()
    ds = load_folder(folder_root)
    names = {p.path.name for p in ds.photos if p.label == "airplane"}
    assert names == {"photo_000.jpg", "photo_001.jpg", "extra.BMP", "extra.webp"}
    assert ds.classes() == sorted(CLASSES)


def test_folder_does_not_decode_images(folder_root: Path) -> None:
    (folder_root / "photo" / "airplane" / "broken.jpg").write_bytes(b"not a jpeg")
    ds = load_folder(folder_root)
    assert any(p.path.name == "broken.jpg" for p in ds.photos)


@pytest.mark.parametrize("side", ["sketch", "photo"])
def test_folder_missing_side_names_the_folder(folder_root: Path, side: str) -> None:
    shutil.rmtree(folder_root / side)
    with pytest.raises(DatasetError, match=f"{side} folder.*{re.escape(str(folder_root / side))}"):
        load_folder(folder_root)


def test_folder_missing_root_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        load_folder(tmp_path / "nowhere")


def test_folder_class_without_photos_is_named(folder_root: Path) -> None:
    shutil.rmtree(folder_root / "photo" / "teddy_bear")
    with pytest.raises(DatasetError, match="class 'teddy_bear' has sketches but no photos"):
        load_folder(folder_root)


def test_folder_class_with_empty_sketch_folder_is_named(folder_root: Path) -> None:
    for f in (folder_root / "sketch" / "wine_bottle").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="class 'wine_bottle' has photos but no sketches"):
        load_folder(folder_root)


def test_folder_without_classes(tmp_path: Path) -> None:
    (tmp_path / "sketch").mkdir()
    (tmp_path / "photo").mkdir()
    with pytest.raises(DatasetError, match="no classes"):
        load_folder(tmp_path)


# --- Sketchy Extended ------------------------------------------------------------------------


def test_sketchy_authors_layout(tmp_path: Path) -> None:
    base = make_sketchy_authors_layout(tmp_path, CLASSES, 5, 4)
    for root in (base, tmp_path):
        assert is_sketchy(root)
        ds = load_sketchy(root)
        assert ds.meta["layout"] == "sketchy-authors"
        assert ds.classes() == sorted(CLASSES)
        assert len(ds.sketches) == 20 and len(ds.photos) == 16
    sketch = base / SKETCHY_SKETCHES / "airplane" / "n02691156_58-1.png"
    assert sketch in {s.path for s in ds.sketches}
    photos = {p.path.name for p in ds.photos if p.label == "airplane"}
    assert photos == {"n02691156_58.jpg", "n02691156_65.jpg", "ext_1.jpg", "ext_2.jpg"}


def test_sketchy_sake_layout(tmp_path: Path) -> None:
    root = make_sketchy_sake_layout(tmp_path / "Sketchy", CLASSES, 2, 3)
    for given in (root, tmp_path):
        ds = load_sketchy(given)
        assert ds.meta["layout"] == "sketchy-sake"
        assert ds.classes() == sorted(CLASSES)
        assert len(ds.sketches) == 8 and len(ds.photos) == 12
    assert all(p.path.parent.parent.name == SAKE_PHOTOS for p in ds.photos)


def test_sketchy_rejects_other_layouts(folder_root: Path) -> None:
    assert not is_sketchy(folder_root)
    with pytest.raises(DatasetError, match=r"sketchy-authors.*\n.*sketchy-sake"):
        load_sketchy(folder_root)


def test_sketchy_class_without_photos_is_named(tmp_path: Path) -> None:
    base = make_sketchy_authors_layout(tmp_path, CLASSES, 2, 2)
    shutil.rmtree(base / SKETCHY_PHOTOS / "jack-o-lantern")
    with pytest.raises(DatasetError, match="'jack-o-lantern' has sketches but no photos"):
        load_sketchy(base)


def test_standins_are_deterministic_and_differ_by_class(tmp_path: Path) -> None:
    a = make_sketchy_authors_layout(tmp_path / "a", CLASSES, 4, 4, seed=3)
    b = make_sketchy_authors_layout(tmp_path / "b", CLASSES, 4, 4, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.*"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.*"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    ds = load_sketchy(a)
    for samples in (ds.sketches, ds.photos):
        assert nearest_centroid_accuracy(samples) >= 0.9


def nearest_centroid_accuracy(samples: list) -> float:
    """Accuracy of classifying each image by the nearest class-mean image (pixels)."""
    pixels = np.stack([np.asarray(Image.open(s.path), dtype=np.float32).ravel() for s in samples])
    labels = np.array([s.label for s in samples])
    classes = sorted(set(labels))
    centroids = np.stack([pixels[labels == c].mean(0) for c in classes])
    dist = ((pixels[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((np.array(classes)[dist.argmin(1)] == labels).mean())


# --- detection -------------------------------------------------------------------------------


def test_load_dataset_detects_each_layout(tmp_path: Path) -> None:
    authors = make_sketchy_authors_layout(tmp_path / "authors", CLASSES, 1, 1)
    sake = make_sketchy_sake_layout(tmp_path / "sake", CLASSES, 1, 1)
    folder = make_folder_layout(tmp_path / "folder", CLASSES, 1, 1)
    assert load_dataset(authors).meta["layout"] == "sketchy-authors"
    assert load_dataset(authors.parent).meta["layout"] == "sketchy-authors"
    assert load_dataset(sake).meta["layout"] == "sketchy-sake"
    assert load_dataset(folder).meta["layout"] == "folder"


def test_load_dataset_lists_the_layouts_it_reads(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    for layout in ("sketchy-authors", "sketchy-sake", "folder", str(tmp_path)):
        assert layout in str(err.value)


# --- splits ----------------------------------------------------------------------------------


def test_sketchy_class_list() -> None:
    assert len(SKETCHY_CLASSES) == 125 == len(set(SKETCHY_CLASSES))
    assert list(SKETCHY_CLASSES) == sorted(SKETCHY_CLASSES)


@pytest.mark.parametrize(
    ("name", "n_test"),
    [("sketchy-split1", 25), ("sketchy-split1-sake", 25), ("sketchy-split2", 21)],
)
def test_builtin_splits(name: str, n_test: int) -> None:
    test = read_class_list(name)
    assert len(test) == len(set(test)) == n_test
    train, test_resolved = resolve_split(list(SKETCHY_CLASSES), None, name)
    assert sorted(test) == test_resolved
    assert len(train) == 125 - n_test


def test_builtin_split_names() -> None:
    assert set(BUILTIN_SPLITS) == {"sketchy-split1", "sketchy-split1-sake", "sketchy-split2"}
    assert {"jack-o-lantern", "teddy_bear", "wine_bottle"} <= {
        c for name in BUILTIN_SPLITS for c in read_class_list(name)
    }


def test_split1_is_sem_pcyc_seed_0_draw() -> None:
    """SEM-PCYC: numpy seed 0 draws the 100 training classes from the sorted class folders."""
    train = np.random.RandomState(0).choice(SKETCHY_CLASSES, 100, replace=False)
    assert sorted(set(SKETCHY_CLASSES) - set(train)) == sorted(read_class_list("sketchy-split1"))


def test_read_class_list_skips_comments_and_blanks(tmp_path: Path) -> None:
    f = tmp_path / "test.txt"
    f.write_text("# unseen classes\n\nbear\n  tiger  # big cat\nbear\n\n")
    assert read_class_list(f) == ["bear", "tiger"]
    assert read_class_list(str(f)) == ["bear", "tiger"]


def test_read_class_list_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"split file .*nope\.txt does not exist"):
        read_class_list(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DatasetError, match=r"empty\.txt names no classes"):
        read_class_list(tmp_path / "empty.txt")


def write_list(path: Path, classes: list[str]) -> Path:
    path.write_text("\n".join(classes) + "\n")
    return path


def test_resolve_split_complements_a_missing_side(tmp_path: Path) -> None:
    test_file = write_list(tmp_path / "test.txt", ["wine_bottle", "airplane"])
    train_file = write_list(tmp_path / "train.txt", ["teddy_bear"])
    assert resolve_split(CLASSES, None, test_file) == (
        ["jack-o-lantern", "teddy_bear"],
        ["airplane", "wine_bottle"],
    )
    assert resolve_split(CLASSES, train_file, None) == (
        ["teddy_bear"],
        ["airplane", "jack-o-lantern", "wine_bottle"],
    )
    assert resolve_split(CLASSES, train_file, test_file) == (
        ["teddy_bear"],
        ["airplane", "wine_bottle"],
    )


def test_resolve_split_unknown_class_names_file_and_class(tmp_path: Path) -> None:
    bad = write_list(tmp_path / "test.txt", ["airplane", "foo"])
    with pytest.raises(DatasetError, match=r"split file .*test\.txt names unknown class 'foo'"):
        resolve_split(CLASSES, None, bad)
    with pytest.raises(DatasetError, match=r"unknown class.*'bear'"):
        resolve_split(CLASSES, None, "sketchy-split1")


def test_resolve_split_overlap(tmp_path: Path) -> None:
    train = write_list(tmp_path / "train.txt", ["airplane", "teddy_bear"])
    test = write_list(tmp_path / "test.txt", ["teddy_bear", "wine_bottle"])
    with pytest.raises(DatasetError, match="share classes: 'teddy_bear'"):
        resolve_split(CLASSES, train, test)


def test_resolve_split_needs_both_sides_non_empty(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train or a test"):
        resolve_split(CLASSES, None, None)
    every = write_list(tmp_path / "all.txt", CLASSES)
    with pytest.raises(DatasetError, match="no train classes"):
        resolve_split(CLASSES, None, every)


def test_split_restricts_a_loaded_set(folder_root: Path, tmp_path: Path) -> None:
    ds = load_folder(folder_root)
    train, test = resolve_split(ds.classes(), None, write_list(tmp_path / "t.txt", ["airplane"]))
    assert ds.restrict(test).classes() == ["airplane"]
    assert ds.restrict(train).classes() == train


# --- the authors' features ---------------------------------------------------------------------


def test_authors_features_load_from_any_level(tmp_path: Path) -> None:
    root = make_authors_features(tmp_path, 1, CLASSES, 3, dim=16)
    for given in (root, root / "SketchyVGG", root / "SketchyVGG" / "split1"):
        assert is_authors_features(given)
        parts = load_authors_features(given, 1)
        assert set(parts) == {"train_sketch", "train_image", "test_sketch", "test_image"}
    feats, labels, paths = parts["test_sketch"]
    assert feats.dtype == np.float32 and feats.shape == (3, 16)
    assert labels == ["wine_bottle"] * 3
    assert paths[0].endswith("wine_bottle/n02714913_58-1.png")
    assert set(parts["train_image"].labels) == set(CLASSES[:3])
    assert parts["train_image"].features.shape == (9, 16)


def test_authors_features_default_dim_and_split2(tmp_path: Path) -> None:
    make_authors_features(tmp_path, 2, CLASSES, 2, test_classes=["airplane", "teddy_bear"])
    assert is_authors_features(tmp_path, 2) and not is_authors_features(tmp_path, 1)
    parts = load_authors_features(tmp_path, 2)
    assert parts["test_image"].features.shape == (4, 512)
    assert sorted(set(parts["test_image"].labels)) == ["airplane", "teddy_bear"]
    with pytest.raises(DatasetError, match="no authors' features of split 1"):
        load_authors_features(tmp_path / "SketchyVGG" / "split2", 1)


def test_authors_features_absent(tmp_path: Path) -> None:
    assert not is_authors_features(tmp_path)
    with pytest.raises(DatasetError, match="SketchyVGG/split1"):
        load_authors_features(tmp_path, 1)


def split_dir(tmp_path: Path) -> Path:
    make_authors_features(tmp_path, 1, CLASSES, 2, dim=8)
    return tmp_path / "SketchyVGG" / "split1"


def test_authors_features_missing_file_is_named(tmp_path: Path) -> None:
    folder = split_dir(tmp_path)
    (folder / "test_image_paths.npy").unlink()
    with pytest.raises(DatasetError, match=r"missing feature file .*test_image_paths\.npy"):
        load_authors_features(tmp_path, 1)


def test_authors_features_length_mismatch(tmp_path: Path) -> None:
    folder = split_dir(tmp_path)
    paths = np.load(folder / "train_sketch_paths.npy")
    np.save(folder / "train_sketch_paths.npy", paths[:-1])
    with pytest.raises(DatasetError, match=r"train_sketch_features\.npy has 6 rows but .* 5 paths"):
        load_authors_features(tmp_path, 1)


def test_authors_features_must_be_2d(tmp_path: Path) -> None:
    folder = split_dir(tmp_path)
    np.save(folder / "test_sketch_features.npy", np.zeros(2, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"test_sketch_features\.npy: expected a 2-D"):
        load_authors_features(tmp_path, 1)


def test_authors_features_other_faults(tmp_path: Path) -> None:
    folder = split_dir(tmp_path)
    np.save(folder / "test_image_features.npy", np.zeros((2, 9), dtype=np.float32))
    with pytest.raises(DatasetError, match="feature widths differ"):
        load_authors_features(tmp_path, 1)
    np.save(folder / "test_image_features.npy", np.full((2, 8), np.nan, dtype=np.float32))
    with pytest.raises(DatasetError, match="NaN"):
        load_authors_features(tmp_path, 1)
    np.save(folder / "test_image_features.npy", np.zeros((2, 8), dtype=np.float32))
    np.save(folder / "test_image_paths.npy", np.array(["a.jpg", "airplane/b.jpg"]))
    with pytest.raises(DatasetError, match=r"test_image_paths\.npy\[0\]: path 'a.jpg'"):
        load_authors_features(tmp_path, 1)
    (folder / "test_image_paths.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"test_image_paths\.npy: not a \.npy file"):
        load_authors_features(tmp_path, 1)
    (folder / "test_image_paths.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(DatasetError, match=r"test_image_paths\.npy: not a readable"):
        load_authors_features(tmp_path, 1)


def test_authors_paths_as_bytes_objects_or_backslashes(tmp_path: Path) -> None:
    folder = split_dir(tmp_path)
    paths = ["C:\\Sketchy\\extended_photo\\wine_bottle\\ext_1.jpg", "x/wine_bottle/ext_2.jpg"]
    np.save(folder / "test_image_paths.npy", np.array([p.encode() for p in paths]))
    assert load_authors_features(tmp_path, 1)["test_image"].labels == ["wine_bottle"] * 2
    np.save(folder / "test_image_paths.npy", np.array(paths, dtype=object), allow_pickle=True)
    assert load_authors_features(tmp_path, 1)["test_image"].paths == paths


# --- Sketchy Extended as users have it: every published arrangement ---------------------------

ARR_CLASSES = ["airplane", "hot-air_balloon", "jack-o-lantern", "zebra"]


@pytest.mark.parametrize(
    ("arrangement", "layout"),
    [
        ("sem-pcyc", "sketchy-authors"),
        ("iiae", "sketchy-authors"),
        ("sake", "sketchy-sake"),
        ("archives", "sketchy-archives"),
        ("doodle2search", "sketchy-doodle2search"),
    ],
)
def test_every_arrangement_is_found_with_sketches_and_photos_apart(
    tmp_path: Path, arrangement: str, layout: str
) -> None:
    root = make_sketchy_arrangement(tmp_path, arrangement, ARR_CLASSES, 2, 3)
    ds = load_dataset(root)
    assert ds.meta["layout"] == layout
    assert ds.classes() == sorted(ARR_CLASSES)
    assert len(ds.sketches) == 8 and len(ds.photos) == 12
    sketch_rel, photo_rel, _ = ARRANGEMENTS[arrangement]
    assert all(str(s.path).startswith(str(root / sketch_rel)) for s in ds.sketches)
    assert all(str(p.path).startswith(str(root / photo_rel)) for p in ds.photos)


def test_the_archives_inner_256x256_folder_is_not_read_as_classes(tmp_path: Path) -> None:
    root = make_sketchy_arrangement(tmp_path, "archives", ARR_CLASSES, 1, 2)
    ds = load_dataset(root / "256x256")
    assert ds.classes() == sorted(ARR_CLASSES)  # not ["tx_000000000000"]
    assert all(p.path.parent.parent.name == "EXTEND_image_sketchy" for p in ds.photos)


@pytest.mark.parametrize("arrangement", ["sake", "archives"])
def test_sake_gallery_adds_sketchys_own_photos(tmp_path: Path, arrangement: str) -> None:
    root = make_sketchy_arrangement(
        tmp_path, arrangement, ARR_CLASSES, 1, 2, own_photos_per_class=3
    )
    extended, sake = load_dataset(root), load_dataset(root, "sake")
    assert len(extended.photos) == 8 and len(sake.photos) == 8 + 12
    assert sake.sketches == extended.sketches
    own = [p for p in sake.photos if p.path.name.startswith("own_")]
    assert {p.label for p in own} == set(ARR_CLASSES) and len(own) == 12


def test_sake_gallery_without_own_photos_is_a_clear_error(tmp_path: Path) -> None:
    root = make_sketchy_arrangement(tmp_path, "sem-pcyc", ARR_CLASSES)
    with pytest.raises(DatasetError, match="gallery 'sake' needs Sketchy's own photos"):
        load_dataset(root, "sake")


def test_no_arrangement_error_names_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "Sketchy" / "sketch" / "tx_000000000000" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        load_sketchy(tmp_path)
    for looked in (
        "extended_photo",
        "EXTEND_image_sketchy",
        str(tmp_path / "Sketchy"),
        "dataset/Sketchy",
    ):
        assert looked in str(err.value)
    with pytest.raises(DatasetError, match="SketchyVGG/split<N>"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("arrangement", "split", "n_test"),
    [
        (a, s, n)
        for a in ARRANGEMENTS
        for s, n in (("sketchy-split1", 25), ("sketchy-split1-sake", 25), ("sketchy-split2", 21))
    ],
)
def test_every_arrangement_takes_every_builtin_split(
    tmp_path_factory: pytest.TempPathFactory, arrangement: str, split: str, n_test: int
) -> None:
    root = _full_arrangement(tmp_path_factory, arrangement)
    names = sempcyc_names(SKETCHY_CLASSES) if arrangement in ("sem-pcyc", "iiae") else None
    folder, train, test = data_split(root, None, split)
    assert folder == root and len(test) == n_test and len(train) == 125 - n_test
    assert set(test) <= set(names or SKETCHY_CLASSES)  # the data set's own spelling


_FULL: dict[str, Path] = {}


def _full_arrangement(factory: pytest.TempPathFactory, arrangement: str) -> Path:
    """All 125 classes (SEM-PCYC's renamed where it renames), one sketch and photo each."""
    if arrangement not in _FULL:
        renamed = arrangement in ("sem-pcyc", "iiae")
        names = sempcyc_names(SKETCHY_CLASSES) if renamed else list(SKETCHY_CLASSES)
        _FULL[arrangement] = make_sketchy_arrangement(
            factory.mktemp(arrangement), arrangement, names, 1, 1, 0
        )
    return _FULL[arrangement]


# --- class names across spellings -------------------------------------------------------------


def test_builtin_splits_match_sempcyc_renamed_classes() -> None:
    renamed = sempcyc_names(SKETCHY_CLASSES)
    assert "jack_o_lantern" in renamed and "jack-o-lantern" not in renamed
    for name in BUILTIN_SPLITS:
        train, test = resolve_split(renamed, None, name)
        assert set(train) | set(test) == set(renamed)
        assert set(test) <= set(renamed)  # the data set's own spelling
    spec = read_class_list("sketchy-split1")
    assert resolve_split(renamed, None, "sketchy-split1")[1] == sorted(sempcyc_names(spec))


def test_class_files_match_dashes_underscores_and_spaces(tmp_path: Path) -> None:
    spec = tmp_path / "test.txt"
    spec.write_text("hot air balloon\njack-o-lantern\nteddy-bear\n")
    known = ["airplane", "hot_air_balloon", "jack_o_lantern", "teddy_bear"]
    train, test = resolve_split(known, None, spec)
    assert test == ["hot_air_balloon", "jack_o_lantern", "teddy_bear"] and train == ["airplane"]
    assert match_classes(["a-b", "c"], ["a_b", "a-b"]) == (["a-b"], ["c"])  # exact first
    assert match_classes(["a b"], ["a_b", "a-b"]) == ([], ["a b"])  # ambiguous: unknown


# --- the authors' feature files carry their split ---------------------------------------------

FEAT_CLASSES = ["airplane", "bell", "cup", "jack_o_lantern", "swan", "zebra"]


def test_feature_files_train_with_their_own_split(tmp_path: Path) -> None:
    make_authors_features(tmp_path, 1, FEAT_CLASSES, 2, dim=8, test_classes=["bell", "swan"])
    folder, train, test = data_split(tmp_path, None, None)
    assert folder == tmp_path / "SketchyVGG" / "split1"
    assert test == ["bell", "swan"] and train == ["airplane", "cup", "jack_o_lantern", "zebra"]
    spec = tmp_path / "same.txt"
    spec.write_text("swan\nbell\n")
    assert data_split(tmp_path, None, spec) == (folder, train, test)


def test_a_list_contradicting_the_files_names_the_classes(tmp_path: Path) -> None:
    make_authors_features(tmp_path, 1, FEAT_CLASSES, 2, dim=8, test_classes=["bell", "swan"])
    spec = tmp_path / "other.txt"
    spec.write_text("bell\nzebra\njack-o-lantern\n")
    with pytest.raises(DatasetError) as err:
        data_split(tmp_path, None, spec)
    msg = str(err.value)
    assert "'jack_o_lantern', 'zebra' are in the files' training part" in msg
    assert "'swan' are in the files' test part" in msg and "Omit" in msg


def test_a_folder_of_both_splits_picks_the_named_one_or_asks(tmp_path: Path) -> None:
    make_authors_features(tmp_path, 1, FEAT_CLASSES, 2, dim=8, test_classes=["bell", "swan"])
    make_authors_features(tmp_path, 2, FEAT_CLASSES, 2, dim=8, test_classes=["cup"])
    vgg = tmp_path / "SketchyVGG"
    assert pick_split_dir(vgg, None, "sketchy-split2") == vgg / "split2"
    assert pick_split_dir(vgg, None, "sketchy-split1-sake") == vgg / "split1"
    spec = tmp_path / "cup.txt"
    spec.write_text("cup\n")
    assert data_split(vgg, None, spec)[0] == vgg / "split2"
    with pytest.raises(DatasetError, match=r"several splits.*split 1.*split 2.*--test-classes"):
        data_split(vgg, None, None)
    assert data_split(vgg / "split2", None, None)[2] == ["cup"]


def test_iiae_root_finds_features_and_asks_when_images_are_there_too(tmp_path: Path) -> None:
    make_authors_features(tmp_path / "dataset", 1, FEAT_CLASSES, 2, dim=8)
    assert data_split(tmp_path, None, None)[0] == tmp_path / "dataset" / "SketchyVGG" / "split1"
    make_sketchy_arrangement(tmp_path, "iiae", FEAT_CLASSES)
    with pytest.raises(DatasetError) as err:
        data_split(tmp_path, None, None)
    msg = str(err.value)
    assert "both images" in msg and f"--data {tmp_path / 'dataset' / 'Sketchy'}" in msg
    (tmp_path / "t.txt").write_text("bell\n")
    assert data_split(tmp_path / "dataset" / "Sketchy", None, tmp_path / "t.txt")[2] == ["bell"]


def test_a_runs_stored_classes_take_the_data_sets_spelling(tmp_path: Path) -> None:
    root = make_folder_layout(tmp_path, ["airplane", "jack_o_lantern"], 1, 1)
    assert _test_classes(root, None, {"test_classes": ["jack-o-lantern"]}) == ["jack_o_lantern"]
    with pytest.raises(DatasetError, match="lacks the run's test class"):
        _test_classes(root, None, {"test_classes": ["zebra"]})
