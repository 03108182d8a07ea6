"""A backbone that reads each photo as itself and as its pseudo-sketch (model/pseudo_sketch.py).

Input: (B, 6, S, S), the normalised photo and pseudo-sketch stacked (``encoder_input_array``);
output: (B, 2 * D), the photo's features then the pseudo-sketch's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.backbones.base import Backbone
from model.pseudo_sketch import EdgeConfig, edge_key


class PhotoViews(nn.Module):
    """One pass of the backbone over both views (one batch of 2 B images)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> Tensor:
        feats = self.backbone(torch.cat([images[:, :3], images[:, 3:]]))
        return torch.cat(feats.chunk(2), dim=1)


def with_pseudo_sketch(backbone: Backbone, cfg: EdgeConfig | None = None) -> Backbone:
    """``backbone`` reading photos with their pseudo-sketches. Its name carries the edge key,
    so its fingerprint (and every cache and export keyed by it) changes with the drawing."""
    cfg = cfg or EdgeConfig()
    return Backbone(
        f"{backbone.name}+pseudo-sketch-{edge_key(cfg)}",
        PhotoViews(backbone),
        feature_dim=2 * backbone.feature_dim,
        preprocessing=backbone.preprocessing,
        edges=cfg,
    ).eval()
