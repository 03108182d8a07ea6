"""The open-gallery bench's own logic: name matching, outlines, ranks and its metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.demo_gallery import (
    chance_row,
    first_relevant_ranks,
    names_class,
    outline,
    score_row,
    stamp_labels,
    weight_tradeoff,
    weights_arg,
)
from tests.test_fusion import small_model


@pytest.mark.parametrize(
    ("path", "cls", "expected"),
    [
        ("animals/birds/little-penguin.png", "penguin", True),
        ("insects/cartoon/snail2.png", "snail", True),
        ("transport/hot_air_balloons.png", "hot air balloon", True),
        ("roadsigns/stopsign.png", "stop sign", True),
        ("clothes/t-shirt.png", "t-shirt", True),
        ("animals/birds/rainbow-lorikeet.png", "rainbow", False),  # a modifier
        ("music/string/guitar_electric.png", "electric", True),
        ("music/string/guitar_electric.png", "guitar", False),
        ("food/pancake.png", "cake", False),  # a word, not a substring
    ],
)
def test_names_class(path: str, cls: str, expected: bool) -> None:
    assert names_class(path, cls) is expected


def test_stamp_labels_take_the_table_and_the_names() -> None:
    stamps = ["a/stop.png", "b/snail2.png", "c/dog.png"]
    labels = stamp_labels(stamps, {"stop sign": ["a/stop.png"]}, ["stop sign", "snail"])
    assert labels == [{"stop sign"}, {"snail"}, set()]


def test_first_relevant_ranks_ties_and_queries_without_relevant() -> None:
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.2, 0.4, 0.4, 0.9], [1.0, 0.0, 0.0, 0.0]])
    relevant = np.array([[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
    # query 0: item 2 ties with item 1 and loses by index -> rank 2; query 2 has none -> N
    assert first_relevant_ranks(scores, relevant).tolist() == [2, 1, 4]


def test_score_row_on_a_hand_made_ranking() -> None:
    g_labels = [{"cat"}, set(), {"dog"}, set()]
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.9, 0.8, 0.1, 0.0]])  # same ranking for both
    row = score_row(scores, ["cat", "dog"], g_labels)
    assert row["map_all"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert row["hit_at_10"] == 1.0 and row["median_first_rank"] == pytest.approx(1.0)
    assert row["p_at_10"] == pytest.approx(0.1)


def test_chance_row_is_near_the_expected_first_rank() -> None:
    g_labels = [{"cat"}] + [set()] * 99
    row = chance_row(200, ["cat"] * 200, g_labels, seeds=5)
    assert 35 < row["median_first_rank"] < 65  # uniform over 0..99
    assert row["hit_at_10"] == pytest.approx(0.1, abs=0.03)


def test_outline_draws_the_silhouette_only(tmp_path: Path) -> None:
    rgba = np.zeros((100, 200, 4), np.uint8)
    rgba[20:80, 50:150] = (200, 30, 30, 255)  # an opaque red 100 x 60 box
    Image.fromarray(rgba).save(tmp_path / "box.png")
    img = np.asarray(outline(tmp_path / "box.png", size=256, margin=0.1).convert("L"))
    ink = img < 128
    rows, cols = np.nonzero(ink)
    # the box is scaled to 204 px wide (80 % of 256), centred, aspect kept (122 px high)
    assert abs((cols.max() - cols.min()) - 204) <= 3
    assert abs((rows.max() - rows.min()) - 122) <= 3
    assert not ink[128, 128]  # hollow: the inside stays white
    assert ink[rows.min() : rows.max() + 1, cols.min()].all()  # a closed left edge


def test_outline_of_a_fully_transparent_image_is_blank(tmp_path: Path) -> None:
    Image.new("RGBA", (30, 30), (0, 0, 0, 0)).save(tmp_path / "empty.png")
    assert np.asarray(outline(tmp_path / "empty.png").convert("L")).min() == 255


def test_fusion_tradeoff_scores_each_weight_and_leaves_the_runs() -> None:
    torch.manual_seed(0)
    model = small_model(fusion_weight=0.5)
    model.scaling.scale_x.fit(torch.randn(50, 12) * 3 + 1)
    model.scaling.scale_y.fit(torch.randn(50, 12) * 2 - 1)
    x, y = torch.randn(6, 12), torch.randn(9, 12)
    rows = weight_tradeoff(model, "fusion_weight", x, y, [0.0, 1.0], lambda zx, zy: zx @ zy.T)
    assert model.head.cfg.fusion_weight == 0.5
    with torch.no_grad():  # 0: r^x vs r^y alone; 1: the scaled features alone
        scaled = [model.scaling.sketch(x), model.scaling.photo(y)]
        alone = [model.iiae.embed_sketch(scaled[0]), model.iiae.embed_photo(scaled[1])]
    for weight, (zx, zy) in {"0": alone, "1": scaled}.items():
        zx, zy = (torch.nn.functional.normalize(z, dim=-1).numpy() for z in (zx, zy))
        np.testing.assert_allclose(rows[weight], zx @ zy.T, atol=1e-5)


def test_category_tradeoff_leaves_out_the_posteriors_at_0_and_leaves_the_share() -> None:
    torch.manual_seed(0)
    model = small_model(fusion_weight=0.5, category_classes=3, category_weight=0.4)
    x, y = torch.randn(6, 12), torch.randn(9, 12)
    rows = weight_tradeoff(model, "category_weight", x, y, [0.0, 0.4], lambda zx, zy: zx @ zy.T)
    assert model.head.cfg.category_weight == 0.4
    without = model.with_head(model.head.with_weights(category_weight=0.0))
    with torch.no_grad():
        full = torch.nn.functional.normalize(model.embed_sketch(x), dim=-1)
        fused = torch.nn.functional.normalize(without.embed_sketch(x), dim=-1)
        fused_y = torch.nn.functional.normalize(without.embed_photo(y), dim=-1)
    assert full.shape[1] == fused.shape[1] + 3
    np.testing.assert_allclose(rows["0"], (fused @ fused_y.T).numpy(), atol=1e-5)
    assert not np.allclose(rows["0.4"], rows["0"])


def test_weight_lists_are_checked() -> None:
    assert weights_arg("0,0.5,1") == [0.0, 0.5, 1.0]
    for bad in ("0,x", "0.5,1.5", "-0.1"):
        with pytest.raises(argparse.ArgumentTypeError):
            weights_arg(bad)


def test_score_row_takes_a_two_class_stamp_as_its_first_class_in_sorted_order() -> None:
    # set order follows the string hashes, which change from run to run; the label must not
    scores = np.array([[0.9, 0.1]])
    for g_labels in ([{"dog", "cat"}, set()], [{"cat", "dog"}, set()]):
        assert score_row(scores, ["cat"], g_labels)["map_all"] == 1.0
