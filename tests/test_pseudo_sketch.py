"""Pseudo-sketches of photos, and the photo backbone that reads each photo with its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from model.backbones import Backbone, with_pseudo_sketch
from model.preprocess import Preprocessing, to_input_array
from model.pseudo_sketch import EdgeConfig, edge_key, encoder_input_array, pseudo_sketch

PREP = Preprocessing(image_size=32)


def disc_on_white(width: int = 400, height: int = 200) -> Image.Image:
    """A red disc, 100 px across, on a white photo of another aspect ratio."""
    img = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(img).ellipse((150, 50, 250, 150), fill=(200, 30, 30))
    return img


def ink(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L")) < 128


def test_a_cut_out_becomes_its_outline_fitted_like_a_sketch() -> None:
    cfg = EdgeConfig()
    drawn = ink(pseudo_sketch(disc_on_white(), cfg))
    assert drawn.shape == (cfg.size, cfg.size)
    rows, cols = np.nonzero(drawn)
    # fitted into the canvas less the margin on every side, centred, aspect ratio kept
    inner = cfg.size * (1 - 2 * cfg.margin)
    for lo, hi in ((rows.min(), rows.max()), (cols.min(), cols.max())):
        assert abs((hi - lo) - inner) <= 2 * cfg.line_width  # the ink straddles the edge
        assert abs((lo + hi) / 2 - (cfg.size - 1) / 2) <= 2
    # a ring: ink on the edge, none inside the disc or in the corners
    centre = cfg.size // 2
    assert not drawn[centre - 40 : centre + 40, centre - 40 : centre + 40].any()
    assert not drawn[:20, :20].any() and not drawn[-20:, -20:].any()
    assert drawn[centre, cols.min() : cols.min() + cfg.line_width + 2].any()


def test_a_full_frame_photo_draws_no_frame_and_blank_photos_draw_nothing() -> None:
    photo = Image.new("RGB", (300, 300), (90, 140, 60))  # a meadow to every border
    ImageDraw.Draw(photo).rectangle((100, 100, 200, 200), fill=(240, 240, 20))
    drawn = ink(pseudo_sketch(photo))
    size, margin = drawn.shape[0], round(drawn.shape[0] * 0.1)
    border = drawn[margin + 2 : size - margin - 2, margin + 2 : size - margin - 2]
    assert not border[:3].any() and not border[-3:].any()  # no line along the photo's frame
    assert drawn.any()  # the square's outline
    for blank in (Image.new("RGB", (50, 80), "white"), Image.new("RGB", (50, 80), (90, 90, 90))):
        assert not ink(pseudo_sketch(blank)).any()


def test_the_edge_key_follows_the_settings() -> None:
    assert edge_key(EdgeConfig()) == edge_key(EdgeConfig())
    assert edge_key(EdgeConfig(threshold=0.2)) != edge_key(EdgeConfig())
    assert edge_key(EdgeConfig(line_width=1)) != edge_key(EdgeConfig())


def test_encoder_input_stacks_the_photo_and_its_pseudo_sketch() -> None:
    photo = disc_on_white()
    plain = encoder_input_array(photo, PREP)
    both = encoder_input_array(photo, PREP, EdgeConfig())
    assert plain.shape == (3, 32, 32) and both.shape == (6, 32, 32) and both.dtype == np.float32
    np.testing.assert_array_equal(plain, to_input_array(photo, PREP))
    np.testing.assert_array_equal(both[:3], plain)
    np.testing.assert_array_equal(both[3:], to_input_array(pseudo_sketch(photo), PREP))


class MeanColour(nn.Module):
    """A stand-in network: each channel's mean and a 3x3 conv's pooled output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images.mean(dim=(2, 3)), self.conv(images).mean(dim=(2, 3))], dim=1)


def test_the_photo_backbone_reads_both_views_and_is_fingerprinted_apart() -> None:
    torch.manual_seed(0)
    plain = Backbone("stand-in", MeanColour(), feature_dim=8, preprocessing=PREP).eval()
    both = with_pseudo_sketch(plain)
    assert both.feature_dim == 16 and both.input_channels == 6 and both.edges == EdgeConfig()
    photos = [disc_on_white(), disc_on_white(200, 300)]
    x = torch.from_numpy(np.stack([encoder_input_array(p, PREP, both.edges) for p in photos]))
    with torch.no_grad():
        feats = both(x)
        expected = torch.cat([plain(x[:, :3]), plain(x[:, 3:])], dim=1)
    torch.testing.assert_close(feats, expected)
    assert not torch.allclose(feats[:, :8], feats[:, 8:])  # the views differ
    fingerprints = {
        plain.fingerprint,
        both.fingerprint,
        with_pseudo_sketch(plain, EdgeConfig(threshold=0.3)).fingerprint,
    }
    assert len(fingerprints) == 3


@pytest.mark.parametrize("cfg", [{"threshold": 0}, {"line_width": 0}, {"margin": 0.5}])
def test_bad_edge_settings_are_refused(cfg: dict) -> None:
    with pytest.raises(ValueError):
        EdgeConfig(**cfg)
