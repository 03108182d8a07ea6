"""The open-gallery bench's own logic: its metrics on hand-made rankings, the query sets and
the ablation bench's rows (bench/open_gallery.py, bench/ablation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.ablation import ROWS, row_functions
from bench.open_gallery import Gallery, harmonic, open_scores, queries_of
from bench.protocol import is_heldout
from bench.stamp_labels import StampLabel
from index_builder.training.evaluate import TrainingFree
from index_builder.training.features import FeatureSet
from model.preprocess import Preprocessing
from tests.test_fusion import small_model


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


def test_the_ablation_rows_are_the_models_parts_at_their_weights() -> None:
    """bench.ablation's rows: the run's own weights, the parts alone; the model as it was."""
    model = small_model(category_classes=3, fusion_weight=0.75, category_weight=0.2).eval()
    sketches = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    train = FeatureSet(
        sketches[:, None], ["a"] * 5, [f"{i}.png" for i in range(5)], "t", Preprocessing()
    )
    free = TrainingFree((train, train), (0.5, 30.0))
    rows = row_functions(model, free)
    assert list(rows) == list(ROWS)
    with torch.no_grad():
        own = model.embed_sketch(torch.from_numpy(sketches)).numpy()
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    np.testing.assert_allclose(rows["recipe"][0](sketches), own, rtol=1e-5, atol=1e-6)
    assert rows["IIAE alone"][0](sketches).shape == (5, model.iiae.cfg.latent_dim)
    assert rows["recipe without head"][0](sketches).shape == (5, model.iiae.cfg.latent_dim + 12)
    np.testing.assert_allclose(rows[ROWS[0]][0](sketches), free.sketch(sketches))
    assert (model.head.cfg.fusion_weight, model.head.cfg.category_weight) == (0.75, 0.2)
