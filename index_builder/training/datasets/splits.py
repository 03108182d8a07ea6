"""Zero-shot class splits: built-in Sketchy Extended lists or a text file, one class a line.

Class names match across spellings: ``-``, ``_`` and spaces are alike (SEM-PCYC's download
script renames ``hot-air_balloon`` to ``hot_air_balloon`` and ``jack-o-lantern`` to
``jack_o_lantern``); a matched name takes the data set's own spelling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from index_builder.training.datasets.base import DatasetError

SPLITS_DIR = Path(__file__).resolve().parent.parent / "splits"

# name -> file of test classes
BUILTIN_SPLITS: dict[str, Path] = {
    "sketchy-split1": SPLITS_DIR / "sketchy_split1.txt",
    "sketchy-split1-sake": SPLITS_DIR / "sketchy_split1_sake.txt",
    "sketchy-split2": SPLITS_DIR / "sketchy_split2.txt",
}

# The 125 class folders of Sketchy Extended, sorted.
# fmt: off
SKETCHY_CLASSES: tuple[str, ...] = (
    "airplane", "alarm_clock", "ant", "ape", "apple", "armor", "axe", "banana", "bat", "bear",
    "bee", "beetle", "bell", "bench", "bicycle", "blimp", "bread", "butterfly", "cabin", "camel",
    "candle", "cannon", "car_(sedan)", "castle", "cat", "chair", "chicken", "church", "couch",
    "cow", "crab", "crocodilian", "cup", "deer", "dog", "dolphin", "door", "duck", "elephant",
    "eyeglasses", "fan", "fish", "flower", "frog", "geyser", "giraffe", "guitar", "hamburger",
    "hammer", "harp", "hat", "hedgehog", "helicopter", "hermit_crab", "horse", "hot-air_balloon",
    "hotdog", "hourglass", "jack-o-lantern", "jellyfish", "kangaroo", "knife", "lion", "lizard",
    "lobster", "motorcycle", "mouse", "mushroom", "owl", "parrot", "pear", "penguin", "piano",
    "pickup_truck", "pig", "pineapple", "pistol", "pizza", "pretzel", "rabbit", "raccoon",
    "racket", "ray", "rhinoceros", "rifle", "rocket", "sailboat", "saw", "saxophone", "scissors",
    "scorpion", "sea_turtle", "seagull", "seal", "shark", "sheep", "shoe", "skyscraper", "snail",
    "snake", "songbird", "spider", "spoon", "squirrel", "starfish", "strawberry", "swan", "sword",
    "table", "tank", "teapot", "teddy_bear", "tiger", "tree", "trumpet", "turtle", "umbrella",
    "violin", "volcano", "wading_bird", "wheelchair", "windmill", "window", "wine_bottle", "zebra",
)
# fmt: on


def read_class_list(spec: str | Path) -> list[str]:
    """Classes of a built-in split name or of a text file (``#`` comments, blank lines skipped).

    Order is kept; repeats are dropped.
    """
    path = BUILTIN_SPLITS.get(str(spec), Path(spec))
    if not path.is_file():
        raise DatasetError(
            f"split file {path} does not exist (built-in splits: {', '.join(BUILTIN_SPLITS)})"
        )
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    classes = list(dict.fromkeys(line for line in lines if line))
    if not classes:
        raise DatasetError(f"split file {path} names no classes")
    return classes


def class_key(name: str) -> str:
    """A class name with ``-``, ``_`` and runs of spaces made alike."""
    return re.sub(r"[-_ ]+", "_", name.strip())


def match_classes(names: Iterable[str], known: Iterable[str]) -> tuple[list[str], list[str]]:
    """(``names`` in the data set's spelling, those the data set lacks); exact names first."""
    known = list(known)
    by_key: dict[str, list[str]] = {}
    for k in known:
        by_key.setdefault(class_key(k), []).append(k)
    exact = set(known)
    matched, unknown = [], []
    for name in names:
        if name in exact:
            matched.append(name)
        elif len(by_key.get(class_key(name), [])) == 1:
            matched.append(by_key[class_key(name)][0])
        else:
            unknown.append(name)
    return matched, unknown


def resolve_split(
    all_classes: list[str], train: str | Path | None, test: str | Path | None
) -> tuple[list[str], list[str]]:
    """Sorted (train, test) classes; a side not given is the complement of the other."""
    if train is None and test is None:
        raise DatasetError("a split needs a train or a test class list (or both)")
    known = set(all_classes)
    train_set = checked_classes(train, known)
    test_set = checked_classes(test, known)
    if train_set is None:
        train_set = known - test_set
    if test_set is None:
        test_set = known - train_set
    check_disjoint(train, test, train_set, test_set)
    for side, classes in (("train", train_set), ("test", test_set)):
        if not classes:
            raise DatasetError(f"the split leaves no {side} classes (train {train}, test {test})")
    return sorted(train_set), sorted(test_set)


def checked_classes(spec: str | Path | None, known: set[str]) -> set[str] | None:
    """The classes of ``spec``; DatasetError naming any class the data set lacks."""
    if spec is None:
        return None
    classes, unknown = match_classes(read_class_list(spec), sorted(known))
    if unknown:
        names = ", ".join(repr(c) for c in unknown)
        raise DatasetError(
            f"split file {spec} names unknown class{'es' if len(unknown) > 1 else ''} {names} "
            f"(not in the data set's {len(known)} classes)"
        )
    return set(classes)


def check_disjoint(
    train: str | Path | None, test: str | Path | None, train_set: set[str], test_set: set[str]
) -> None:
    """Raise DatasetError naming the classes in both the train and the test split."""
    both = sorted(train_set & test_set)
    if both:
        names = ", ".join(repr(c) for c in both)
        raise DatasetError(f"train split {train} and test split {test} share classes: {names}")
