"""The known-category head: fitted after training, its posteriors share the embedding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from index_builder.training.category_head import (
    CATEGORY_GRID,
    choose_category_weight,
    cross_fit_halves,
    fit_category_head,
)
from index_builder.training.features import FeatureSet
from model.preprocess import Preprocessing
from model.retrieval import CategoryHead, RetrievalConfig, RetrievalHead, RetrievalModel
from tests.test_fusion import check_onnx_export, small_model

CLASSES = [f"c{i}" for i in range(4)]


def model_with(category_weight: float, fusion_weight: float = 0.5) -> RetrievalModel:
    torch.manual_seed(0)
    model = small_model(
        fusion_weight=fusion_weight, category_classes=4, category_weight=category_weight
    )
    model.scaling.scale_x.fit(torch.randn(50, 12) * 3 + 1)
    model.scaling.scale_y.fit(torch.randn(50, 12) * 2 - 1)
    return model


def feature_set(feats: np.ndarray, labels: list[str]) -> FeatureSet:
    return FeatureSet(feats[:, None, :].astype(np.float32), labels, labels, "test", Preprocessing())


def clustered(n: int, seed: int, spread: float = 0.3) -> tuple[FeatureSet, FeatureSet]:
    """Sketches and photos of the four classes around one centre per class."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(4, 12)) * 3
    labels = [CLASSES[i % 4] for i in range(n)]
    rows = [int(c[1]) for c in labels]
    make = lambda: centres[rows] + rng.normal(size=(n, 12)) * spread  # noqa: E731
    return feature_set(make(), labels), feature_set(make(), labels)


@pytest.mark.parametrize("weight", [0.2, 0.5])
def test_the_cosine_is_the_weighted_mean_of_embedding_and_posteriors(weight: float) -> None:
    with_head = model_with(weight)
    without = with_head.with_head(with_head.head.with_weights(category_weight=0.0))
    x, y = torch.randn(6, 12), torch.randn(6, 12)
    category, scaling = with_head.head.category_head, with_head.scaling
    with torch.no_grad():
        ex, ey = with_head.embed_sketch(x), with_head.embed_photo(y)
        fx = nn.functional.normalize(without.embed_sketch(x), dim=-1)
        fy = nn.functional.normalize(without.embed_photo(y), dim=-1)
        px = nn.functional.softmax(category(scaling.sketch(x)), dim=-1)
        py = nn.functional.softmax(category(scaling.photo(y)), dim=-1)
    assert ex.shape == (6, 4 + 12 + 4) and with_head.embedding_dim == 20
    assert without.embedding_dim == 16  # the head is kept but out of the embedding
    assert without.head.category_head is category
    torch.testing.assert_close(ex.norm(dim=-1), torch.ones(6))
    cos_p = nn.functional.normalize(px, dim=-1) @ nn.functional.normalize(py, dim=-1).T
    expected = (1 - weight) * (fx @ fy.T) + weight * cos_p
    torch.testing.assert_close(ex @ ey.T, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ex[:, -4:], math.sqrt(weight) * nn.functional.normalize(px, dim=-1))


def test_a_weight_needs_the_head_and_the_head_features_of_one_size() -> None:
    with pytest.raises(ValueError, match="category_classes"):
        small_model(category_weight=0.3)
    with pytest.raises(ValueError, match="one size"):
        small_model(dim_y=10, category_classes=4)
    with pytest.raises(ValueError, match="a category head of 4 classes"):
        RetrievalHead(RetrievalConfig(category_classes=5), 4, 12, category_head=CategoryHead(12, 4))


def test_the_fitted_head_names_new_sketches_and_photos_of_its_classes() -> None:
    model = model_with(0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    head = fit_category_head(model, *clustered(40, seed=1), CLASSES)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global stream is left alone
    sketches, photos = clustered(20, seed=2)  # new samples of the same classes
    truth = torch.tensor([CLASSES.index(c) for c in sketches.labels])
    with torch.no_grad():
        for fs, scale in ((sketches, model.scaling.sketch), (photos, model.scaling.photo)):
            logits = head(scale(torch.from_numpy(fs.clean)))
            assert (logits.argmax(-1) == truth).float().mean() >= 0.9
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # a new head, model as was
    assert head is not model.head.category_head
    assert all(p.grad is None for p in head.parameters())


def test_with_one_sketch_a_class_the_head_is_fitted_but_left_out() -> None:
    """Nothing can be held out to choose the share on: the head is fitted, its share 0."""
    model = model_with(0.3)
    sketches, photos = clustered(4, seed=1)  # one of each class
    val = clustered(4, seed=3)
    chosen, table = choose_category_weight(model, (sketches, photos), val, CLASSES)
    assert table == {} and chosen.head.cfg.category_weight == 0.0
    assert chosen.head.category_head is not model.head.category_head  # fitted


def test_the_weight_is_chosen_by_the_harmonic_mean_of_seen_and_unseen() -> None:
    """An untrained r (its embedding ranks at random) and classes the head learns easily:
    the posteriors lift held-out sketches of the seen classes, so a positive weight wins."""
    model = model_with(0.0, fusion_weight=0.0)
    fit = clustered(40, seed=1, spread=1.0)
    val_sk, val_ph = clustered(16, seed=3, spread=1.0)
    rename = lambda fs: feature_set(fs.clean, [f"v{c}" for c in fs.labels])  # noqa: E731
    chosen, table = choose_category_weight(model, fit, (rename(val_sk), rename(val_ph)), CLASSES)
    assert list(table) == list(CATEGORY_GRID)
    for row in table.values():
        assert 0 < row["harmonic"] <= max(row["seen"], row["unseen"])
    best = max(table, key=lambda c: table[c]["harmonic"])
    assert chosen.head.cfg.category_weight == best > 0 and model.head.cfg.category_weight == 0
    assert table[best]["seen"] > table[0.0]["seen"]


def test_the_encoders_with_the_head_export_to_onnx(tmp_path: Path) -> None:
    model = model_with(0.3)
    assert model.embedding_dim == 20
    check_onnx_export(model, tmp_path)


def test_the_share_grid_has_both_ends() -> None:
    assert CATEGORY_GRID[0] == 0.0 and CATEGORY_GRID[-1] == 1.0
    assert list(CATEGORY_GRID) == sorted(CATEGORY_GRID)


def test_cross_fitting_holds_out_sketches_and_pictures_alike() -> None:
    """xfit-ph: each half's head never saw the held half's sketches nor its pictures; every
    class keeps sketches and (where it has two) pictures in both fits."""

    def named(labels: list[str], kind: str) -> FeatureSet:
        feats = np.zeros((len(labels), 1, 3), dtype=np.float32)
        paths = [f"{kind}/{c}/{i}.png" for i, c in enumerate(labels)]
        return FeatureSet(feats, labels, paths, "test", Preprocessing())

    sketches = named([CLASSES[i % 4] for i in range(12)], "sketch")
    photos = named([CLASSES[0]] + [c for c in CLASSES[1:] for _ in range(3)], "photo")
    halves = cross_fit_halves(sketches, photos)
    assert len(halves) == 2
    seen_photos: list[str] = []
    for held, kept, kept_photos in halves:
        assert not set(held.paths) & set(kept.paths)
        assert sorted(held.paths + kept.paths) == sorted(sketches.paths)
        assert set(held.labels) == set(kept.labels) == set(CLASSES)
        seen_photos += kept_photos.paths
        assert len(kept_photos.paths) < len(photos.paths)  # some pictures held out
    # each picture is fitted on by exactly one half's head: never by the half scoring it
    assert sorted(seen_photos) == sorted(photos.paths)
    single = [p for p, c in zip(photos.paths, photos.labels, strict=True) if c == CLASSES[0]]
    assert single[0] in halves[1][2].paths and single[0] not in halves[0][2].paths
