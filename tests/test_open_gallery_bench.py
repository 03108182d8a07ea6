"""The open-gallery bench's own logic: its metrics on hand-made rankings, the query sets and
the weights it evaluates the model at (bench/open_gallery.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.open_gallery import Gallery, harmonic, open_scores, queries_of, row_settings, weights
from bench.protocol import is_heldout
from bench.stamp_labels import StampLabel
from index_builder.training.features import FeatureSet
from model.iiae import IIAE, IIAEConfig
from model.preprocess import Preprocessing


def label(*cats: str, glyph: bool = False) -> StampLabel:
    return StampLabel(glyph, frozenset(cats))


GALLERY = Gallery(
    np.zeros((4, 2)),
    ["a.png", "b.png", "c.png", "d.png"],
    [label("cat"), label("cat", "dog"), label(glyph=True), label("cow")],
)


def test_open_scores_on_a_known_ranking() -> None:
    # query 0 ranks d, a, c, b; query 1 ranks c, d, a, b
    scores = np.array([[3.0, 1.0, 2.0, 4.0], [2.0, 1.0, 4.0, 3.0]])
    relevant = GALLERY.relevant(["cat", "dog"])  # the two-label stamp b counts for both
    taken = {
        "glyph": np.array([s.glyph for s in GALLERY.labels]),
        "cow": GALLERY.of_classes({"cow"}),
    }
    row = open_scores(scores, relevant, taken)
    ap_cat = (1 / 2 + 2 / 4) / 2  # relevant at ranks 2 and 4
    ap_dog = 1 / 4  # relevant at rank 4
    assert row["map_all"] == pytest.approx((ap_cat + ap_dog) / 2)
    assert row["hit_at_10"] == 1.0  # four stamps: every relevant one is in the first 10
    assert row["median_first_rank"] == pytest.approx((1 + 3) / 2)
    assert row["slots_glyph"] == 1.0 and row["slots_cow"] == 1.0


def test_slots_do_not_count_relevant_stamps() -> None:
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    row = open_scores(scores, GALLERY.relevant(["cow"]), {"cow": GALLERY.of_classes({"cow"})})
    assert row["slots_cow"] == 0.0


def test_harmonic() -> None:
    assert harmonic(0.5, 0.5) == 0.5 and harmonic(0.0, 0.0) == 0.0
    assert harmonic(0.2, 0.6) == pytest.approx(0.3)


def test_queries_of_split_unseen_and_heldout() -> None:
    keys = [str(k) for k in range(20)]
    held = [k for k in keys if is_heldout(k)]
    assert held and len(held) < len(keys)
    labels = ["cat"] * 10 + ["cow"] * 5 + ["ant"] * 5  # ant has no stamp
    sketches = FeatureSet(
        np.zeros((20, 1, 2)),
        labels,
        [f"sketch/{c}/{k}.png" for c, k in zip(labels, keys, strict=True)],
        "test",
        Preprocessing(),
    )
    unseen, heldout = queries_of(sketches, ["cow", "ant"], ["cat"], GALLERY)
    assert unseen.labels == ["cow"] * 5  # the fold's classes with a stamp, every sketch
    expected = [p for p, c in zip(sketches.paths, labels, strict=True) if c == "cat"]
    assert heldout.paths == [p for p in expected if p.split("/")[-1][:-4] in held]


def test_weights_are_restored_and_rows_name_the_ablations() -> None:
    model = IIAE(
        IIAEConfig(
            input_dim_x=8,
            input_dim_y=8,
            category_classes=3,
            fusion_weight=0.75,
            category_weight=0.2,
        )
    )
    rows = row_settings(model)
    assert rows["recipe"] == (0.75, 0.2) and rows["scaled features (training-free)"] == (1.0, 0.0)
    assert rows["scaled features + category head (no IIAE)"] == (1.0, 0.2)
    with weights(model, 1.0, 0.0):
        assert model.cfg.embedding_dim == 64 + 8
        model.eval()
        with torch.no_grad():
            assert model.embed_sketch(torch.randn(2, 8)).shape == (2, 72)
    assert (model.cfg.fusion_weight, model.cfg.category_weight) == (0.75, 0.2)
