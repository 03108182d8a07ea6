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

from collections.abc import Callable

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
