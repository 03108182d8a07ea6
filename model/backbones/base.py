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
from model.pseudo_sketch import EdgeConfig


class BackboneUnavailableError(RuntimeError):
    """The backbone's weights cannot be found or fetched."""


class Backbone(nn.Module):
    """A named feature extractor with the preprocessing its inputs need."""

    def __init__(
        self,
        name: str,
        net: nn.Module,
        feature_dim: int,
        preprocessing: Preprocessing,
        edges: EdgeConfig | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.net = net
        self.feature_dim = feature_dim
        self.preprocessing = preprocessing
        self.edges = edges  # photos are read with their pseudo-sketches (photo_views.py)

    @property
    def input_channels(self) -> int:
        """3, or 6 where each photo comes with its pseudo-sketch."""
        return 3 if self.edges is None else 6

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


PROBE_SEED = 20201206  # the probe is fixed forever: a new seed would re-key every cache
SIGNATURE_AXES = 16


def _fingerprint(backbone: Backbone) -> str:
    h = hashlib.sha256(f"{backbone.name}\0{backbone.feature_dim}\0".encode())
    h.update(backbone.preprocessing.model_dump_json().encode())
    for key, tensor in backbone.net.state_dict().items():
        h.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(_computation_signature(backbone).tobytes())
    return h.hexdigest()


def _computation_signature(backbone: Backbone) -> np.ndarray:
    """What the network computes on a fixed probe image, coarse enough that another CPU's
    last bits do not change it: the unit-norm output on 16 fixed random axes, to 2 decimals.
    A changed activation or layer moves these by far more than 0.01."""
    size = backbone.preprocessing.image_size
    gen = torch.Generator().manual_seed(PROBE_SEED)
    probe = torch.rand(1, backbone.input_channels, size, size, generator=gen) * 2 - 1
    device = next(backbone.parameters()).device
    with torch.inference_mode():
        out = backbone.eval()(probe.to(device)).double().cpu().numpy()[0]
    axes = np.random.default_rng(PROBE_SEED).standard_normal((out.size, SIGNATURE_AXES))
    axes /= np.linalg.norm(axes, axis=0)
    return np.round(out / np.linalg.norm(out) @ axes * np.sqrt(out.size), 2) + 0.0  # no -0.0
