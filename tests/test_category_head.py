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
    fit_category_head,
)
from index_builder.training.features import FeatureSet
from model.iiae import IIAE, IIAEConfig
from model.preprocess import Preprocessing
from tests.test_fusion import SMALL, check_onnx_export

CLASSES = [f"c{i}" for i in range(4)]


def model_with(category_weight: float, fusion_weight: float = 0.5) -> IIAE:
    torch.manual_seed(0)
    cfg = IIAEConfig(
        **SMALL, fusion_weight=fusion_weight, category_classes=4, category_weight=category_weight
    )
    model = IIAE(cfg).eval()
    model.scale_x.fit(torch.randn(50, 12) * 3 + 1)
    model.scale_y.fit(torch.randn(50, 12) * 2 - 1)
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
    with_head, without = model_with(weight), model_with(0.0)
    without.load_state_dict(with_head.state_dict())
    x, y = torch.randn(6, 12), torch.randn(6, 12)
    with torch.no_grad():
        ex, ey = with_head.embed_sketch(x), with_head.embed_photo(y)
        fx = nn.functional.normalize(without.embed_sketch(x), dim=-1)
        fy = nn.functional.normalize(without.embed_photo(y), dim=-1)
        px = nn.functional.softmax(with_head.category_logits(with_head.scale_x(x)), dim=-1)
        py = nn.functional.softmax(with_head.category_logits(with_head.scale_y(y)), dim=-1)
    assert ex.shape == (6, 4 + 12 + 4) and with_head.cfg.embedding_dim == 20
    assert without.cfg.embedding_dim == 16  # the head is kept but out of the embedding
    torch.testing.assert_close(ex.norm(dim=-1), torch.ones(6))
    cos_p = nn.functional.normalize(px, dim=-1) @ nn.functional.normalize(py, dim=-1).T
    expected = (1 - weight) * (fx @ fy.T) + weight * cos_p
    torch.testing.assert_close(ex @ ey.T, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ex[:, -4:], math.sqrt(weight) * nn.functional.normalize(px, dim=-1))


def test_a_weight_needs_the_head_and_the_head_features_of_one_size() -> None:
    with pytest.raises(ValueError, match="category_classes"):
        IIAE(IIAEConfig(**SMALL, category_weight=0.3))
    with pytest.raises(ValueError, match="one size"):
        IIAE(IIAEConfig(**{**SMALL, "input_dim_y": 10}, category_classes=4))


def test_the_fitted_head_names_new_sketches_and_photos_of_its_classes() -> None:
    model = model_with(0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_category_head(model, *clustered(40, seed=1), CLASSES)
    sketches, photos = clustered(20, seed=2)  # new samples of the same classes
    truth = torch.tensor([CLASSES.index(c) for c in sketches.labels])
    with torch.no_grad():
        for fs, scale in ((sketches, model.scale_x), (photos, model.scale_y)):
            logits = model.category_logits(scale(torch.from_numpy(fs.clean)))
            assert (logits.argmax(-1) == truth).float().mean() >= 0.9
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"category_head.weight", "category_head.bias"}  # nothing outside it
    assert all(p.grad is None for p in model.parameters())


def test_with_one_sketch_a_class_the_head_is_fitted_but_left_out() -> None:
    """Nothing can be held out to choose the share on: the head is fitted, its share 0."""
    model = model_with(0.3)
    sketches, photos = clustered(4, seed=1)  # one of each class
    val = clustered(4, seed=3)
    assert choose_category_weight(model, (sketches, photos), val, CLASSES) == {}
    assert model.cfg.category_weight == 0.0


def test_the_weight_is_chosen_by_the_harmonic_mean_of_seen_and_unseen() -> None:
    """An untrained r (its embedding ranks at random) and classes the head learns easily:
    the posteriors lift held-out sketches of the seen classes, so a positive weight wins."""
    model = model_with(0.0, fusion_weight=0.0)
    fit = clustered(40, seed=1, spread=1.0)
    val_sk, val_ph = clustered(16, seed=3, spread=1.0)
    rename = lambda fs: feature_set(fs.clean, [f"v{c}" for c in fs.labels])  # noqa: E731
    table = choose_category_weight(model, fit, (rename(val_sk), rename(val_ph)), CLASSES)
    assert list(table) == list(CATEGORY_GRID)
    for row in table.values():
        assert 0 < row["harmonic"] <= max(row["seen"], row["unseen"])
    best = max(table, key=lambda c: table[c]["harmonic"])
    assert model.cfg.category_weight == best > 0
    assert table[best]["seen"] > table[0.0]["seen"]


def test_the_encoders_with_the_head_export_to_onnx(tmp_path: Path) -> None:
    model = model_with(0.3)
    assert model.cfg.embedding_dim == 20
    check_onnx_export(model, tmp_path)
