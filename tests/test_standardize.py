"""The input scaling (model/scaling.py): signed power, then z-score or a shrunk, rank-limited
whitening."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model.export import export_module
from model.scaling import Standardize


def anisotropic(n: int = 400, dim: int = 10, seed: int = 0) -> torch.Tensor:
    """Non-negative features (as pooled ReLU features) spread far more along some axes."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=gen) * torch.logspace(1, -1, dim)[:, None]
    return (torch.randn(n, dim, generator=gen) @ mix).abs() + 0.1


def test_default_is_the_per_dimension_z_score() -> None:
    x = anisotropic()
    scale = Standardize(10)
    scale.fit(x)
    torch.testing.assert_close(scale(x), (x - x.mean(0)) / x.std(0))


def test_power_keeps_the_sign() -> None:
    scale = Standardize(3, power=0.5)
    torch.testing.assert_close(
        scale(torch.tensor([[-4.0, 0.0, 9.0]])), torch.tensor([[-2.0, 0.0, 3.0]])
    )


def test_whitening_is_the_shrunk_inverse_root_of_the_covariance() -> None:
    x = anisotropic()
    scale = Standardize(10, power=0.5, shrinkage=0.3, rank=10)
    scale.fit(x)
    root = x.double().sqrt()
    centred = root - root.mean(0)
    cov = centred.T @ centred / len(x)
    var, axes = torch.linalg.eigh(cov)
    shrunk = axes @ torch.diag((var + 0.3 * cov.diagonal().mean()).rsqrt()) @ axes.T
    white = centred @ shrunk
    expected = white / white.var(0).mean().sqrt()
    torch.testing.assert_close(scale(x).double(), expected, rtol=1e-4, atol=1e-4)
    assert abs(scale(x).var(0).mean().item() - 1) < 1e-4
    # the spread is evened out: the output's covariance is far better conditioned
    out_var = torch.linalg.eigvalsh(torch.cov(scale(x).T.double()))
    assert out_var.max() / out_var.min() < (var.max() / var.min()) / 10


def test_rank_limited_whitening_keeps_the_leading_axes() -> None:
    """Beyond the kept axes the whitening is a constant: with the rank covering the axes
    that carry the spread, it matches the full one."""
    x = anisotropic(dim=12)
    full, limited = Standardize(12, shrinkage=1.0, rank=12), Standardize(12, shrinkage=1.0, rank=6)
    full.fit(x)
    limited.fit(x)
    a, b = (
        torch.nn.functional.normalize(full(x), dim=-1),
        torch.nn.functional.normalize(limited(x), dim=-1),
    )
    assert (a * b).sum(-1).min() > 0.97


def test_blocks_are_fitted_each_on_their_own() -> None:
    a, b = anisotropic(seed=1), anisotropic(seed=2) * 5
    both = Standardize(20, power=0.5, shrinkage=2.0, blocks=2)
    both.fit(torch.cat([a, b], dim=1))
    for part, half in ((a, slice(0, 10)), (b, slice(10, 20))):
        alone = Standardize(10, power=0.5, shrinkage=2.0)
        alone.fit(part)
        torch.testing.assert_close(both(torch.cat([a, b], dim=1))[:, half], alone(part))


def test_whitening_exports_to_onnx(tmp_path: Path) -> None:
    x = anisotropic(dim=12)
    scale = Standardize(12, power=0.5, shrinkage=3.0, rank=4, blocks=2).eval()
    scale.fit(x)

    class Flat(torch.nn.Module):  # images (B, 3, 2, 2) -> their 12 numbers, scaled
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return scale(images.flatten(1))

    images = x[:5].reshape(5, 3, 2, 2)
    export_module(Flat().eval(), tmp_path / "scale.onnx", 2, 12, 17)
    session = ort.InferenceSession(str(tmp_path / "scale.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": images.numpy()})[0]
    np.testing.assert_allclose(got, scale(x[:5]).detach().numpy(), rtol=1e-4, atol=1e-5)
