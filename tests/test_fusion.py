"""The fused retrieval embedding (model/retrieval.py): r^x / r^y with the scaled features."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from index_builder.training.features import FeatureSet
from index_builder.training.train import FUSION_GRID, choose_fusion_weight
from model.export import build_encoders, export_module
from model.iiae import IIAEConfig
from model.preprocess import Preprocessing
from model.retrieval import (
    ModelConfig,
    RetrievalConfig,
    RetrievalHead,
    RetrievalModel,
    fusion_basis,
)
from model.scaling import InputScaling, ScalingConfig

SMALL = {
    "input_dim_x": 12,
    "input_dim_y": 12,
    "latent_dim": 4,
    "hidden_dims": (8, 6),
    "joint_hidden_dim": 8,
    "decoder_hidden_dims": (6, 8),
}


def small_model(dim_y: int = 12, pseudo_sketch: bool = False, **retrieval) -> RetrievalModel:
    """A small untrained model of ``SMALL``'s IIAE with these retrieval parts."""
    dims = {"input_dim_x": 12, "input_dim_y": dim_y}
    cfg = ModelConfig(
        iiae=IIAEConfig(**{**SMALL, **dims}),
        scaling=ScalingConfig(**dims, pseudo_sketch=pseudo_sketch),
        retrieval=RetrievalConfig(**retrieval),
    )
    return RetrievalModel.from_config(cfg).eval()


def model_with(weight: float, seed: int = 0) -> RetrievalModel:
    torch.manual_seed(seed)
    model = small_model(fusion_weight=weight)
    model.scaling.scale_x.fit(torch.randn(50, 12) * 3 + 1)
    model.scaling.scale_y.fit(torch.randn(50, 12) * 2 - 1)
    return model


def test_no_fusion_is_the_papers_embedding() -> None:
    model = model_with(0.0)
    x = torch.randn(5, 12)
    with torch.no_grad():
        expected = model.iiae.shared_x(model.scaling.sketch(x)).mean
        torch.testing.assert_close(model.embed_sketch(x), expected)
    assert model.embedding_dim == 4


@pytest.mark.parametrize("weight", [0.25, 0.5, 0.75])
def test_fused_cosine_is_the_weighted_mean_of_the_parts(weight: float) -> None:
    fused, plain = model_with(weight), model_with(0.0)
    x, y = torch.randn(6, 12), torch.randn(6, 12)
    with torch.no_grad():
        ex, ey = fused.embed_sketch(x), fused.embed_photo(y)
        rx = nn.functional.normalize(plain.embed_sketch(x), dim=-1)
        ry = nn.functional.normalize(plain.embed_photo(y), dim=-1)
        sx = nn.functional.normalize(plain.scaling.sketch(x), dim=-1)
        sy = nn.functional.normalize(plain.scaling.photo(y), dim=-1)
    assert ex.shape == (6, 4 + 12) and fused.embedding_dim == 16
    torch.testing.assert_close(ex.norm(dim=-1), torch.ones(6))
    expected = (1 - weight) * (rx @ ry.T) + weight * (sx @ sy.T)
    torch.testing.assert_close(ex @ ey.T, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ex[:, :4], math.sqrt(1 - weight) * rx)


def test_projected_fusion_keeps_the_principal_axes() -> None:
    torch.manual_seed(0)
    untrained = small_model(fusion_weight=0.5, fusion_dim=3)
    # training features whose spread lies along three known directions
    directions = torch.linalg.qr(torch.randn(12, 3))[0].T
    x = torch.randn(200, 3) @ (directions * torch.tensor([[9.0], [5.0], [3.0]]))
    y = torch.randn(200, 3) @ (directions * torch.tensor([[8.0], [6.0], [2.0]]))
    scaling = InputScaling.fitted_on(untrained.scaling.cfg, x, y)
    basis = fusion_basis(scaling, x, y, 3)
    head = RetrievalHead(untrained.head.cfg, 4, 12, basis)
    model = RetrievalModel(scaling, untrained.iiae, head).eval()
    torch.testing.assert_close(basis.T @ basis, torch.eye(3), atol=1e-5, rtol=0)
    emb = model.embed_sketch(x[:5])
    assert emb.shape == (5, 4 + 3) and model.embedding_dim == 7
    scaled = scaling.sketch(x[:5])
    expected = math.sqrt(0.5) * nn.functional.normalize(scaled @ basis, dim=-1)
    torch.testing.assert_close(emb[:, 4:], expected)


def test_fusion_needs_features_of_one_size() -> None:
    with pytest.raises(ValueError, match="one size"):
        small_model(dim_y=10, fusion_weight=0.5)


def _feature_set(feats: np.ndarray, labels: list[str]) -> FeatureSet:
    return FeatureSet(feats[:, None, :].astype(np.float32), labels, labels, "test", Preprocessing())


def test_the_weight_is_chosen_by_validation_map() -> None:
    """Features that name their class outright, and an untrained r: the standardised part
    wins, so a positive weight is chosen (the smallest of the best, on a tie); the model
    given is left as it was."""
    rng = np.random.default_rng(0)
    labels = [f"c{i % 4}" for i in range(40)]
    centres = rng.normal(size=(4, 12)) * 5
    sketches = centres[[int(c[1]) for c in labels]] + rng.normal(size=(40, 12)) * 0.1
    photos = centres[[int(c[1]) for c in labels]] + rng.normal(size=(40, 12)) * 0.1
    model = model_with(0.0)
    chosen, scores = choose_fusion_weight(
        model, _feature_set(sketches, labels), _feature_set(photos, labels)
    )
    assert list(scores) == list(FUSION_GRID)
    assert FUSION_GRID[0] == 0.0 and FUSION_GRID[-1] == 1.0  # the IIAE alone, the features alone
    best = max(scores.values())
    assert chosen.head.cfg.fusion_weight == min(w for w, v in scores.items() if v == best) > 0
    assert best > scores[0.0] and model.head.cfg.fusion_weight == 0.0
    assert chosen.iiae is model.iiae and chosen.scaling is model.scaling


class TinyBackbone(nn.Module):
    """A stand-in image backbone: conv, then global average pooling to 12 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).mean(dim=(2, 3))


def check_onnx_export(model: RetrievalModel, folder: Path) -> None:
    """Both encoders (on a tiny backbone) export to ONNX and embed there as in PyTorch."""
    encoders = build_encoders(model, TinyBackbone().eval())
    images = torch.randn(3, 3, 16, 16)
    dim = model.embedding_dim
    for domain, encoder in encoders.items():
        path = folder / f"{domain}.onnx"
        export_module(encoder, path, 16, dim, 17)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {"image": images.numpy()})
        with torch.no_grad():
            expected = encoder(images).numpy()
        assert got.shape == (3, dim)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_the_fused_encoders_export_to_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = model_with(0.5)
    assert model.embedding_dim == 16
    check_onnx_export(model, tmp_path)


def test_with_pseudo_sketches_the_photo_part_is_the_mean_of_its_halves() -> None:
    """Photo features [photo; pseudo-sketch] (twice a sketch's size): r^y reads both, and the
    fused standardised part is the mean of the two z-scored halves."""
    torch.manual_seed(0)
    model = small_model(dim_y=24, pseudo_sketch=True, fusion_weight=0.5)
    model.scaling.scale_y.fit(torch.randn(50, 24) * 2 - 1)
    y = torch.randn(3, 24)
    with torch.no_grad():
        emb = model.embed_photo(y)
        scaled = model.scaling.photo(y)
    assert emb.shape == (3, 4 + 12) and model.embedding_dim == 16
    halves_mean = (scaled[:, :12] + scaled[:, 12:]) / 2
    expected = math.sqrt(0.5) * nn.functional.normalize(halves_mean, dim=-1)
    torch.testing.assert_close(emb[:, 4:], expected)
    with pytest.raises(ValueError, match="one size"):
        small_model(pseudo_sketch=True, fusion_weight=0.5)  # 12 = 2 x 6, not 12


def test_a_model_is_changed_only_by_building_another() -> None:
    """The configurations are frozen; other weights are a new head over the same parts."""
    model = model_with(0.5)
    for cfg in (model.iiae.cfg, model.scaling.cfg, model.head.cfg):
        with pytest.raises(ValueError, match="frozen"):
            cfg.latent_dim = 3  # type: ignore[union-attr]
    other = model.head.with_weights(fusion_weight=0.25)
    assert other.cfg.fusion_weight == 0.25 and model.head.cfg.fusion_weight == 0.5
    with pytest.raises(ValueError, match="not a weight"):
        model.head.with_weights(fusion_dim=3)
    with pytest.raises(ValueError, match="less than or equal to 1"):
        model.head.with_weights(fusion_weight=1.5)
