"""The backbone registry and its two backbones, on the real networks and weight files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.backbones import (
    Backbone,
    BackboneUnavailableError,
    available_backbones,
    load_backbone,
)
from model.backbones.efficientnet_lite import imagenet_head
from model.backbones.vgg import VGG16_URL, VGG16Features
from model.export import export_module
from model.preprocess import load_image, to_input_array


@pytest.fixture(scope="module")
def effnet() -> Backbone:
    return load_backbone("efficientnet-lite0")


def _images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Inputs in the backbones' normalised range, reproducible by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1


def test_registry_lists_the_backbones() -> None:
    names = available_backbones()
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "vgg16"} <= set(names)
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
    # batch-size-dependent kernels differ in the last bits (2.6e-5 seen on a loaded AMD EPYC)
    torch.testing.assert_close(alone[0], first[1], rtol=1e-4, atol=1e-4)


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


# Real TuxPaint photos whose ImageNet class is unambiguous: each pretrained backbone must name
# them with its own ImageNet head, through PyTorch and through its ONNX export. This is what
# caught EfficientNet-Lite running with Swish instead of the ReLU6 it was trained with.
STAMPS = Path("/usr/share/tuxpaint/stamps")
IMAGENET_PHOTOS = {
    "food/fruit/banana.png": 954,
    "food/fruit/apple_granny_smith.png": 948,
    "food/fruit/strawberry.png": 949,
    "food/fruit/lemon.png": 951,
    "food/fruit/pineapple.png": 953,
    "food/vegetables/broccoli.png": 937,
    "animals/mammals/equines/zebra.png": 340,
    "animals/birds/pink_flamingo.png": 130,
    "animals/birds/peacock.png": 84,
    "animals/mammals/aquatic/sea_lion.png": 150,
    "hobbies/music/string/guitar_electric.png": 546,
}
EFFICIENTNETS = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


def _stamp_batch(backbone: Backbone) -> np.ndarray:
    if not STAMPS.is_dir():
        pytest.skip(f"{STAMPS} absent: apt-get install tuxpaint-stamps-default")
    images = [load_image(STAMPS / name) for name in IMAGENET_PHOTOS]
    return np.stack([to_input_array(img, backbone.preprocessing) for img in images])


@pytest.mark.slow
@pytest.mark.parametrize("name", EFFICIENTNETS)
def test_efficientnet_names_real_photos_with_its_imagenet_head(name: str, tmp_path: Path) -> None:
    backbone = load_backbone(name)
    head = imagenet_head(backbone)
    batch = _stamp_batch(backbone)
    expected = list(IMAGENET_PHOTOS.values())
    with torch.inference_mode():
        features = backbone(torch.from_numpy(batch))
        assert head(features).argmax(-1).tolist() == expected

    # the same network exported to ONNX, run by ONNX Runtime, then the same head
    path = tmp_path / "backbone.onnx"
    export_module(backbone, path, backbone.preprocessing.image_size, backbone.feature_dim, 17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_features,) = session.run(None, {"image": batch})
    np.testing.assert_allclose(onnx_features, features.numpy(), rtol=1e-3, atol=1e-3)
    logits = onnx_features @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    assert logits.argmax(-1).tolist() == expected


def test_efficientnets_run_with_relu6_not_swish() -> None:
    net = load_backbone("efficientnet-lite0").net.net
    kinds = {type(m).__name__ for m in net.modules()}
    assert "ReLU6" in kinds
    assert not kinds & {"Swish", "MemoryEfficientSwish"}
