"""Nothing of the test classes, nor the held-out sketches of training classes, reaches training
or the baselines' statistics.

Training (the recommended recipe: validation classes, fusion and category head chosen on
them) runs through the CLI on stand-in images twice, the test classes' images changed in
between: the model file must come out byte for byte the same, while a change to one
training image changes it (so the comparison can fail). The training-free baselines must
scale with the training classes' statistics: changing training images changes the scaled
baselines' figures (not the raw one's), which could not happen if they were fitted on the
test classes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from standins import make_folder_layout, write_images

from index_builder.cli import main
from index_builder.training.config import BuilderSettings, TrainConfig
from index_builder.training.evaluate import baseline_embeddings, evaluate_baselines, evaluate_run
from index_builder.training.features import FeatureSet
from index_builder.training.heldout import is_heldout
from index_builder.training.metrics import l2_normalize
from index_builder.training.recipes import recipe
from model.preprocess import Preprocessing

pytestmark = pytest.mark.usefixtures("feature_cache")

CLASSES = ["anchor", "boat", "cloud", "drum", "eagle", "flag", "goat", "harp"]
TEST = ["cloud", "goat"]
TRAIN = [c for c in CLASSES if c not in TEST]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_folder_layout(tmp_path / "data", CLASSES, 4, 2)


def redraw(data: Path, classes: list[str], seed: int) -> None:
    """Other images of ``classes`` (same file names, other drawings), one more of each and
    one fewer sketch."""
    for cls in classes:
        ci = CLASSES.index(cls)
        for kind, ext, n in (("sketch", "png", 4), ("photo", "jpg", 2)):
            names = [f"{kind}_{i:03d}.{ext}" for i in range(n + 1)]
            write_images(data / kind / cls, names, ci, kind, seed)
        (data / "sketch" / cls / "sketch_000.png").unlink()


def train(data: Path, test_file: Path, out: Path) -> bytes:
    args = ["train", "--data", str(data), "--test-classes", str(test_file), "--out", str(out)]
    args += ["--steps", "30", "--val-classes", "2", "--eval-every", "10", "--log-every", "10"]
    assert main(args) == 0
    return (out / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_changing_test_class_images_leaves_the_model_byte_identical(
    data: Path, tmp_path: Path
) -> None:
    test_file = tmp_path / "test.txt"
    test_file.write_text("\n".join(TEST) + "\n")
    first = train(data, test_file, tmp_path / "first")
    redraw(data, TEST, seed=1)
    assert train(data, test_file, tmp_path / "second") == first
    # the control: one training sketch changed changes the model (sketch_001: not held out)
    sketch = data / "sketch" / TRAIN[0] / "sketch_001.png"
    shutil.copy(data / "sketch" / TRAIN[1] / "sketch_001.png", sketch)
    assert train(data, test_file, tmp_path / "third") != first


@pytest.mark.slow
def test_held_out_sketches_of_training_classes_never_reach_training(
    data: Path, tmp_path: Path
) -> None:
    """The recommended recipe holds a share of each training class's sketches out (by their
    key_id): redrawing those leaves the model byte for byte the same, and ``evaluate``
    scores them as held-out sketches of trained categories."""
    share = recipe("recommended").holdout_sketches
    held = [p for p in sorted((data / "sketch" / TRAIN[0]).iterdir()) if is_heldout(p.stem, share)]
    kept = [p for p in sorted((data / "sketch" / TRAIN[0]).iterdir()) if p not in held]
    assert held and kept, "the stand-ins must have both"
    test_file = tmp_path / "test.txt"
    test_file.write_text("\n".join(TEST) + "\n")
    first = train(data, test_file, tmp_path / "first")
    for cls in TRAIN:  # every held-out sketch of every training class redrawn
        for path in (data / "sketch" / cls).iterdir():
            if is_heldout(path.stem, share):
                shutil.copy(data / "sketch" / TEST[0] / "sketch_001.png", path)
    assert train(data, test_file, tmp_path / "second") == first
    info = json.loads((tmp_path / "second" / "run.json").read_text())
    assert info["holdout_sketches"] == share and info["heldout_sketch_count"] > 0
    result = evaluate_run(tmp_path / "second", data)
    fitted = len(info["train_classes"])
    assert result["heldout"]["n_queries"] == fitted * len(held)
    shutil.copy(data / "sketch" / TEST[0] / "sketch_001.png", kept[0])  # the control
    assert train(data, test_file, tmp_path / "third") != first


def test_the_held_out_share_is_one_in_n() -> None:
    assert TrainConfig(holdout_sketches=0.25).holdout_sketches == 0.25
    for bad in (0.3, 1.0, -0.2):
        with pytest.raises(ValueError, match="1/n"):
            TrainConfig(holdout_sketches=bad)
    assert recipe("paper").holdout_sketches == 0.0


@pytest.mark.slow
def test_the_baselines_are_fitted_on_the_training_classes(data: Path) -> None:
    settings = BuilderSettings()

    def rows() -> dict[str, dict]:
        found = evaluate_baselines(
            data, TRAIN, TEST, "efficientnet-lite0", settings, whiten=(0.5, 30.0)
        )
        return {name.split(" ", 1)[1]: row for name, row in found.items()}

    before = rows()
    redraw(data, TRAIN, seed=1)
    after = rows()
    assert set(before) == {
        "raw features",
        "standardized features",
        "power 0.5, whitened, shrinkage 30 features",
    }
    assert after["raw features"] == before["raw features"]  # the test images are the same
    for scaled in ("standardized features", "power 0.5, whitened, shrinkage 30 features"):
        assert after[scaled]["map_all"] != before[scaled]["map_all"], scaled


def _feature_set(values: np.ndarray, labels: list[str]) -> FeatureSet:
    prep = Preprocessing(image_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return FeatureSet(values[:, None, :].astype(np.float32), labels, labels, "toy", prep)


def test_the_z_scored_baseline_uses_the_training_statistics_per_domain() -> None:
    rng = np.random.default_rng(0)
    train_sk, train_ph = rng.normal(3, 2, (40, 5)), rng.normal(-1, 5, (30, 5))
    test_sk, test_ph = rng.normal(0, 1, (10, 5)), rng.normal(0, 1, (8, 5))
    labels = lambda n: [f"c{i % 2}" for i in range(n)]  # noqa: E731
    train = _feature_set(train_sk, labels(40)), _feature_set(train_ph, labels(30))
    test = _feature_set(test_sk, labels(10)), _feature_set(test_ph, labels(8))
    zx, zy = baseline_embeddings(train, test)
    by_hand = [
        l2_normalize((t.astype(np.float32) - f.mean(0)) / (f.std(0) + 1e-6))
        for t, f in ((test_sk, train_sk.astype(np.float32)), (test_ph, train_ph.astype(np.float32)))
    ]
    np.testing.assert_allclose(zx, by_hand[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zy, by_hand[1], rtol=1e-5, atol=1e-6)
    on_test = baseline_embeddings(test, test)  # what a leak would give: other vectors
    assert not np.allclose(on_test[0], zx, atol=1e-3)
