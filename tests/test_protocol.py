"""The shared evaluation protocol (bench/protocol.py): sealed classes and their committed
split file, development folds, held-out sketches and the log of sealed-set looks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench import protocol
from index_builder.training.datasets.splits import read_class_list
from index_builder.training.heldout import is_heldout, sketch_key_id
from index_builder.training.prepare import PHOTO_MAP, read_photo_table
from index_builder.training.recipes import recipe

# the 205 classes `prepare` writes are the curated photo map's (all have drawings)
CLASSES = sorted(read_photo_table(PHOTO_MAP))
# sha256 of the sealed class names, one a line: pinned without naming them
SEALED_SHA256 = "99f7e45ba243616329424e00586beb531ba6de0e0400d9c99e4926f5382ceb67"


def test_sealed_and_folds_partition_the_classes() -> None:
    sealed = protocol.sealed_classes(CLASSES)
    folds = protocol.dev_folds(CLASSES)
    assert len(sealed) == 41 and [len(f) for f in folds] == [41] * 4
    assert all(f == sorted(f) for f in [sealed, *folds])
    every = [c for part in [sealed, *folds] for c in part]
    assert sorted(every) == CLASSES, "not a partition"
    assert protocol.dev_classes(CLASSES) == sorted(c for f in folds for c in f)
    digest = hashlib.sha256("".join(f"{c}\n" for c in sealed).encode()).hexdigest()
    assert digest == SEALED_SHA256, "the sealed set moved"
    assert folds[0][:3] == ["anvil", "apple", "axe"]  # fold 0 as the research measured it


def test_sealed_classes_are_the_smallest_hashes() -> None:
    def rank(c: str) -> str:
        return hashlib.sha256(f"sketch-search sealed v1:{c}".encode()).hexdigest()

    sealed = set(protocol.sealed_classes(CLASSES))
    assert max(map(rank, sealed)) < min(rank(c) for c in CLASSES if c not in sealed)


def test_another_class_list_is_refused() -> None:
    with pytest.raises(protocol.ProtocolError, match="204 classes"):
        protocol.sealed_classes(CLASSES[1:])
    with pytest.raises(protocol.ProtocolError):
        protocol.dev_folds([*CLASSES[1:], "unicorn"])


def test_heldout_key_ids() -> None:
    assert protocol.is_heldout("0") and not protocol.is_heldout("1")
    share = sum(protocol.is_heldout(str(5_000_000_000_000_000 + i)) for i in range(5000)) / 5000
    assert 0.18 < share < 0.22
    assert sketch_key_id("data/sketch/cat/4601524584218624.png") == "4601524584218624"


def test_sealed_split_file_is_the_protocols(tmp_path: Path) -> None:
    committed = read_class_list(protocol.SEALED_SPLIT)
    assert committed == protocol.sealed_classes(CLASSES)
    written = protocol.write_sealed_split(CLASSES, tmp_path / "sealed.txt")
    assert written.read_text() == protocol.SEALED_SPLIT.read_text()


def test_heldout_rule_is_the_training_codes() -> None:
    keys = [str(4_000_000_000_000_000 + i) for i in range(2000)]
    assert [protocol.is_heldout(k) for k in keys] == [is_heldout(k, 0.2) for k in keys]
    assert recipe("recommended").holdout_sketches == protocol.HELDOUT_SHARE


def test_sealed_looks_are_logged(tmp_path: Path) -> None:
    count = protocol.sealed_look_count()  # the committed log
    assert count >= 1  # issue 24's final recipe
    benchmarks = (Path(protocol.__file__).parent.parent / "BENCHMARKS.md").read_text()
    assert f"looks so far: {count}**" in benchmarks, "BENCHMARKS.md quotes another count"
    log = tmp_path / "looks.md"
    log.write_text(protocol.SEALED_LOOKS.read_text())
    sealed = protocol.look_at_sealed(CLASSES, "recommended recipe, final check", log)
    assert sealed == protocol.sealed_classes(CLASSES)
    assert protocol.sealed_look_count(log) == count + 1
    assert "recommended recipe, final check" in log.read_text()
    with pytest.raises(ValueError, match="one line"):
        protocol.look_at_sealed(CLASSES, "a | b", log)
