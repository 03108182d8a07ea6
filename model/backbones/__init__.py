"""Image backbones behind one interface; see ``base.py`` for how to add one."""

from model.backbones import dinov2, efficientnet_lite, vgg  # noqa: F401  (registers them)
from model.backbones.base import (
    Backbone,
    BackboneUnavailableError,
    available_backbones,
    load_backbone,
    register_backbone,
)
from model.backbones.photo_views import with_pseudo_sketch

__all__ = [
    "Backbone",
    "BackboneUnavailableError",
    "available_backbones",
    "load_backbone",
    "register_backbone",
    "with_pseudo_sketch",
]
