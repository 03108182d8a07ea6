"""The backbone interface and registry.

A backbone maps a batch of normalised images (B, 3, S, S) to pooled features (B, D).
To add one (a CLIP or DINO model, say), write a module in this package with::

    @register_backbone("my-backbone")
    def build(weights: str | None) -> Backbone:
        return Backbone("my-backbone", net, feature_dim=768, preprocessing=Preprocessing(...))

where ``net`` is an ``nn.Module`` returning (B, D), and import it in ``__init__.py``.
The backbone must load its weights from a local file or a package (no hub downloads at
run time without a fallback), and raise BackboneUnavailableError saying what to do when
it cannot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from model.preprocess import Preprocessing


class BackboneUnavailableError(RuntimeError):
    """The backbone's weights cannot be found or fetched."""


class Backbone(nn.Module):
    """A named feature extractor with the preprocessing its inputs need."""

    def __init__(
        self, name: str, net: nn.Module, feature_dim: int, preprocessing: Preprocessing
    ) -> None:
        super().__init__()
        self.name = name
        self.net = net
        self.feature_dim = feature_dim
        self.preprocessing = preprocessing

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    @property
    def fingerprint(self) -> str:
        """What the features depend on: name, preprocessing, every weight, and the output on
        a fixed probe image. A fixed bug, another weights file under the same name or a library
        that computes differently all change it; caches and exports are keyed by it."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = _fingerprint(self)
        return self._fingerprint


PROBE_SEED = 20201206  # the probe image is fixed forever: a new seed would re-key every cache


def _fingerprint(backbone: Backbone) -> str:
    h = hashlib.sha256(f"{backbone.name}\0{backbone.feature_dim}\0".encode())
    h.update(backbone.preprocessing.model_dump_json().encode())
    for key, tensor in backbone.net.state_dict().items():
        h.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    size = backbone.preprocessing.image_size
    probe = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(PROBE_SEED))
    device = next(backbone.parameters()).device
    with torch.inference_mode():
        out = backbone.eval()(probe.to(device) * 2 - 1).float().cpu().numpy()
    # Rounded, so that the last bits of another CPU's kernels do not re-key every cache.
    h.update(np.round(out, 3).astype(np.float32).tobytes())
    return h.hexdigest()


Builder = Callable[[str | None], Backbone]
_REGISTRY: dict[str, Builder] = {}


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make ``build(weights)`` available as ``load_backbone(name)``."""

    def decorate(build: Builder) -> Builder:
        _REGISTRY[name] = build
        return build

    return decorate


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def load_backbone(name: str, weights: str | None = None) -> Backbone:
    """Build a registered backbone in eval mode; ``weights`` is an optional local file."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backbone {name!r}; available: {', '.join(available_backbones())}"
        )
    return _REGISTRY[name](weights).eval()
