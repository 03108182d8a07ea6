"""MNIST-CDCB cross-domain retrieval (paper Table 2) with the bench's recipe."""

from __future__ import annotations

import numpy as np
import pytest

from bench.mnist_cdcb import (
    TARGET_EXCLUSIVE,
    TARGET_SHARED,
    colour_pairs,
    pool_pixels,
    precision_at_1,
    run_mnist_cdcb,
    stratified_split,
)


def test_pairs_share_the_digit_and_not_the_colours() -> None:
    digits = np.zeros((2, 784))
    digits[:, 100:110] = 1.0
    x, y = colour_pairs(digits, np.random.default_rng(0))
    x, y = x.reshape(2, 784, 3), y.reshape(2, 784, 3)
    assert np.all(x[:, :100] == 0) and np.all(y[:, 100:110] == 1)  # black / white parts
    assert not np.allclose(x[0, 100], x[1, 100])  # digit colours differ per pair
    assert not np.allclose(y[0, 0], y[1, 0])  # background colours differ per pair
    assert x.min() >= 0 and y.max() <= 1


def test_pool_pixels_averages_blocks_per_channel() -> None:
    images = np.arange(2 * 28 * 28 * 3, dtype=np.float64).reshape(2, -1)
    pooled = pool_pixels(images, 2)
    assert pooled.shape == (2, 14 * 14 * 3)
    grid = images.reshape(2, 28, 28, 3)
    np.testing.assert_allclose(
        pooled.reshape(2, 14, 14, 3)[1, 3, 5], grid[1, 6:8, 10:12].mean((0, 1))
    )
    assert pool_pixels(images, 1) is images


def test_stratified_split_is_disjoint_and_balanced() -> None:
    labels = np.repeat(np.arange(10), 50)
    train, test = stratified_split(labels, 100, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 500
    assert np.all(np.bincount(labels[test]) == 10)


def test_precision_at_1_uses_cosine() -> None:
    query = np.array([[1.0, 0.0], [0.0, 2.0]])
    gallery = np.array([[10.0, 1.0], [0.1, 1.0], [1.0, 1.2]])
    assert precision_at_1(query, np.array([0, 1]), gallery, np.array([0, 1, 0])) == 1.0
    assert precision_at_1(query, np.array([1, 0]), gallery, np.array([0, 1, 0])) == 0.0


@pytest.mark.slow
def test_mnist_cdcb_reaches_the_targets() -> None:
    result = run_mnist_cdcb()  # the bench's default recipe: 600 steps, about 30 s on one core
    assert result["shared_cd_to_cb"] >= TARGET_SHARED, result
    assert result["shared_cb_to_cd"] >= TARGET_SHARED, result
    assert result["exclusive_cd_to_cb"] <= TARGET_EXCLUSIVE, result
    assert result["exclusive_cb_to_cd"] <= TARGET_EXCLUSIVE, result
