"""The k-fold logic of bench.zero_shot: class folds and the summary over folds."""

from __future__ import annotations

import pytest

from bench.zero_shot import class_folds, summarise


def test_folds_partition_the_classes_evenly_and_reproducibly() -> None:
    classes = [f"c{i:02d}" for i in range(23)]
    folds = class_folds(classes, 5)
    assert sorted(c for fold in folds for c in fold) == classes
    assert sorted(len(fold) for fold in folds) == [4, 4, 5, 5, 5]
    assert all(fold == sorted(fold) for fold in folds)
    assert class_folds(classes, 5) == folds
    assert class_folds(classes, 5, seed=1) != folds


def test_too_many_or_too_few_folds_are_refused() -> None:
    with pytest.raises(ValueError, match="between 2 and 3"):
        class_folds(["a", "b", "c"], 4)
    with pytest.raises(ValueError):
        class_folds(["a", "b", "c"], 1)


def _row(map_all: float) -> dict[str, float]:
    return {"map_all": map_all, "p_at_10": map_all / 2, "p_at_100": map_all / 4}


def test_the_choice_is_made_on_validation_and_compared_fold_by_fold() -> None:
    """Recipe B wins on test classes but A on validation: A is chosen."""
    folds = [
        {
            "rows": {"standardized": _row(0.2), "A": _row(0.3), "B": _row(0.5)},
            "validation": {"A": 0.6, "B": 0.4},
        },
        {
            "rows": {"standardized": _row(0.4), "A": _row(0.3), "B": _row(0.9)},
            "validation": {"A": 0.5, "B": 0.45},
        },
    ]
    result = summarise(folds)
    assert result["chosen"] == "A"
    assert result["validation"] == pytest.approx({"A": 0.55, "B": 0.425})
    assert result["ratio_to_standardized"] == pytest.approx([1.5, 0.75])
    assert result["rows"]["A"]["map_all"] == pytest.approx(0.3)
    assert result["rows"]["standardized"]["map_all_sd"] == pytest.approx(0.1)
    assert result["gain_of_means"] == pytest.approx(0.3 / 0.3 - 1)
