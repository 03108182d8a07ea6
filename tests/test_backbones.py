"""The backbone registry and its two backbones, on the real networks and weight files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.backbones import (
    Backbone,
    BackboneUnavailableError,
    available_backbones,
    load_backbone,
)
from model.backbones.vgg import VGG16_URL, VGG16Features


@pytest.fixture(scope="module")
def effnet() -> Backbone:
    return load_backbone("efficientnet-lite0")


def _images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Inputs in the backbones' normalised range, reproducible by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1


def test_registry_lists_both_backbones() -> None:
    names = available_backbones()
    assert {"efficientnet-lite0", "vgg16"} <= set(names)
    assert names == sorted(names)


def test_unknown_backbone_names_the_available_ones() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet-9000'") as err:
        load_backbone("resnet-9000")
    for name in available_backbones():
        assert name in str(err.value)


@pytest.mark.slow
def test_efficientnet_pools_to_1280_features(effnet: Backbone) -> None:
    assert effnet.name == "efficientnet-lite0"
    assert effnet.feature_dim == 1280
    assert not effnet.training
    prep = effnet.preprocessing
    assert prep.image_size == 224 and prep.mean == prep.std == (0.5, 0.5, 0.5)
    with torch.inference_mode():
        out = effnet(_images(2, prep.image_size))
    assert out.shape == (2, 1280)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1])  # different images, different features


@pytest.mark.slow
def test_efficientnet_is_deterministic_in_eval_mode(effnet: Backbone) -> None:
    x = _images(2, 64, seed=1)
    with torch.inference_mode():
        first = effnet(x)
        second = effnet(x)
        alone = effnet(x[1:])
    assert torch.equal(first, second)
    # eval-mode BatchNorm: an image's features do not depend on the rest of its batch
    torch.testing.assert_close(alone[0], first[1], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_vgg16_loads_a_local_torchvision_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = VGG16Features()
    state = dict(source.state_dict())
    # torchvision's file also holds the classifier, which the backbone must ignore
    state["classifier.0.weight"] = torch.zeros(8, 4)
    state["classifier.0.bias"] = torch.zeros(8)
    state["classifier.6.weight"] = torch.zeros(10, 8)
    weights = tmp_path / "vgg16-local.pth"
    torch.save(state, weights)

    vgg = load_backbone("vgg16", str(weights))
    assert vgg.name == "vgg16" and vgg.feature_dim == 512 and not vgg.training
    assert vgg.preprocessing.image_size == 224
    for key, value in vgg.net.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = _images(2, 64)
    with torch.inference_mode():
        out = vgg(x)
        expected = source.eval()(x)
    assert out.shape == (2, 512)
    torch.testing.assert_close(out, expected)


def test_vgg16_without_weights_or_network_says_how_to_pass_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached download
    try:
        vgg = load_backbone("vgg16")
    except BackboneUnavailableError as err:
        message = str(err)
    else:
        assert vgg.feature_dim == 512
        pytest.skip("the VGG-16 download worked: a network is reachable here")
    assert "--backbone-weights" in message
    assert VGG16_URL in message
    assert "vgg16" in message
