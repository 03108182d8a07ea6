"""ImageNet VGG-16, global-average-pooled conv5_3 features (512-d), one network for both domains.

Not the paper's input: IIAE used SEM-PCYC's VGG-16 fine-tuned on Sketchy (fc7 then a
4096 -> 512 layer, separate sketch and photo networks); only the authors' released feature
files (``SketchyVGG``) are those inputs.

The layers carry torchvision's names, so torchvision's ``vgg16-397923af.pth`` loads as is,
without torchvision installed. Weights: a local file (``weights``), else a download when the
network allows one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.backbones.base import Backbone, BackboneUnavailableError, register_backbone
from model.preprocess import Preprocessing

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` followed by global average pooling."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images).mean(dim=(2, 3))


def _load_state(weights: str | None) -> dict[str, Tensor]:
    if weights is not None:
        return torch.load(weights, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(VGG16_URL, map_location="cpu", progress=True)
    except Exception as err:  # network errors come in many types
        raise BackboneUnavailableError(
            f"vgg16: no weights file given and the download of {VGG16_URL} failed ({err}); "
            "download it where a network is available and pass it with --backbone-weights"
        ) from err


@register_backbone("vgg16")
def build(weights: str | None) -> Backbone:
    net = VGG16Features()
    state = {k: v for k, v in _load_state(weights).items() if k.startswith("features.")}
    net.load_state_dict(state)
    prep = Preprocessing(image_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    return Backbone("vgg16", net, 512, prep)
