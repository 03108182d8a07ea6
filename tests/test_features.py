"""Feature extraction into the on-disk cache: views, cache hits, resuming, bad images, augment."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageChops
from standins import draw_photo, draw_sketch, make_folder_layout

from index_builder.training.augment import AugmentConfig, augment
from index_builder.training.datasets.base import DatasetError, Sample
from index_builder.training.datasets.folder import load_folder
from index_builder.training.features import FeatureSet, FeatureSpec, cache_key, extract_features
from model.backbones import Backbone, load_backbone

CLASSES = ["cup", "swan"]
BATCH = 2  # the resume test cuts the extraction at a batch boundary


class CountingBackbone:
    """Counts the images the real backbone sees (a forward hook, removed on exit)."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone, self.images = backbone, 0

    def __enter__(self) -> CountingBackbone:
        def count(_module, inputs, _output) -> None:
            self.images += inputs[0].shape[0]

        self.handle = self.backbone.register_forward_hook(count)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


@dataclass
class Extracted:
    samples: list[Sample]
    cache: Path
    clean: FeatureSet  # views=1
    views: FeatureSet  # views=2
    clean_spec: FeatureSpec
    views_spec: FeatureSpec


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return load_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    """Four generated sketches, two of each class."""
    root = make_folder_layout(tmp_path_factory.mktemp("data"), CLASSES, 2, 1)
    return load_folder(root).sketches


@pytest.fixture(scope="module")
def extracted(
    tmp_path_factory: pytest.TempPathFactory, samples: list[Sample], backbone: Backbone
) -> Extracted:
    """Two extractions of four sketches: the clean view only, and clean + one augmented."""
    cache = tmp_path_factory.mktemp("cache")
    clean_spec = FeatureSpec(domain="sketch", views=1)
    views_spec = FeatureSpec(domain="sketch", views=2, seed=3)
    run = dict(batch_size=BATCH, workers=0, backbone=backbone, progress=False)
    clean = extract_features(samples, clean_spec, cache, **run)
    views = extract_features(samples, views_spec, cache, **run)
    return Extracted(samples, cache, clean, views, clean_spec, views_spec)


@pytest.mark.slow
def test_features_have_one_row_per_image_and_view(extracted: Extracted) -> None:
    n = len(extracted.samples)
    assert n == 4
    assert extracted.clean.features.shape == (n, 1, 1280)
    assert extracted.views.features.shape == (n, 2, 1280)
    assert extracted.views.features.dtype == np.float32
    assert np.isfinite(extracted.views.features).all()
    assert extracted.views.labels == [s.label for s in extracted.samples]
    assert extracted.views.paths == [str(s.path) for s in extracted.samples]
    assert extracted.views.backbone == "efficientnet-lite0"
    assert extracted.views.preprocessing.image_size == 224


@pytest.mark.slow
def test_view_zero_is_the_unaugmented_image(extracted: Extracted) -> None:
    views = np.asarray(extracted.views.features)
    np.testing.assert_allclose(views[:, 0], extracted.clean.clean, rtol=1e-4, atol=1e-4)
    # the augmented view really is another image
    gap = np.abs(views[:, 1] - views[:, 0]).max(axis=1)
    assert (gap > 1e-2).all()


@pytest.mark.slow
def test_a_second_run_is_a_cache_hit(extracted: Extracted, backbone: Backbone) -> None:
    folder = extracted.cache / cache_key(
        extracted.samples, extracted.clean_spec, backbone.fingerprint
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["paths"] == [str(s.path) for s in extracted.samples]
    assert manifest["spec"]["views"] == 1
    assert json.loads((folder / "progress.json").read_text()) == {"rows": 4}
    before = (folder / "features.npy").stat().st_mtime_ns

    with CountingBackbone(backbone) as counter:
        again = extract_features(
            extracted.samples,
            extracted.clean_spec,
            extracted.cache,
            workers=0,
            backbone=backbone,
            progress=False,
        )
    assert counter.images == 0
    assert (folder / "features.npy").stat().st_mtime_ns == before
    np.testing.assert_array_equal(again.features, extracted.clean.features)
    # two specs, two cache folders
    assert sorted(p.name for p in extracted.cache.iterdir()) == sorted(
        cache_key(extracted.samples, spec, backbone.fingerprint)
        for spec in (extracted.clean_spec, extracted.views_spec)
    )


def test_cache_key_follows_the_spec_the_network_and_the_files(
    samples: list[Sample], tmp_path: Path
) -> None:
    spec = FeatureSpec(domain="sketch")
    key = cache_key(samples, spec, "net-a")
    assert cache_key(samples, spec, "net-a") == key
    assert cache_key(samples, spec, "net-b") != key
    assert cache_key(samples, spec.model_copy(update={"seed": 1}), "net-a") != key
    assert cache_key(samples, spec.model_copy(update={"backbone": "vgg16"}), "net-a") != key
    assert cache_key(samples[:-1], spec, "net-a") != key
    # a rewritten image (new size or time) is another file
    copy = tmp_path / "copy.png"
    shutil.copy2(samples[0].path, copy)
    moved = [Sample(copy, samples[0].label), *samples[1:]]
    key_copy = cache_key(moved, spec, "net-a")
    draw_sketch(5, np.random.default_rng(1)).save(copy)
    assert cache_key(moved, spec, "net-a") != key_copy


def _swish_backbone() -> Backbone:
    """EfficientNet-Lite0 with the activation bug of the first release (Swish for ReLU6)."""
    broken = load_backbone("efficientnet-lite0")
    broken.net.net.set_swish(memory_efficient=False)
    return broken


@pytest.mark.slow
def test_features_of_the_swish_bug_are_not_reused(
    samples: list[Sample], backbone: Backbone, tmp_path: Path
) -> None:
    spec = FeatureSpec(domain="sketch")
    run = dict(batch_size=BATCH, workers=0, progress=False)
    stale = extract_features(samples, spec, tmp_path, backbone=_swish_backbone(), **run)
    assert backbone.fingerprint  # its probe forward is not an extraction
    with CountingBackbone(backbone) as counter:
        fixed = extract_features(samples, spec, tmp_path, backbone=backbone, **run)
    assert counter.images == len(samples)  # extracted again, not read from the stale cache
    assert np.abs(np.asarray(fixed.features) - np.asarray(stale.features)).max() > 0.1
    assert fixed.backbone_fingerprint == backbone.fingerprint != stale.backbone_fingerprint


@pytest.mark.slow
def test_other_weights_under_the_same_file_name_are_not_reused(
    samples: list[Sample], tmp_path: Path
) -> None:
    import torch

    from model.backbones.efficientnet_lite import load_efficientnet

    weights = tmp_path / "lite0.pth"
    state = load_efficientnet("efficientnet-lite0", None).state_dict()
    torch.save(state, weights)
    spec = FeatureSpec(domain="sketch", backbone_weights=str(weights))
    run = dict(batch_size=BATCH, workers=0, progress=False)
    first = extract_features(samples, spec, tmp_path / "cache", **run)
    state["_conv_head.weight"] = state["_conv_head.weight"] * 0.5
    torch.save(state, weights)  # same path, other weights
    retrained = load_backbone("efficientnet-lite0", str(weights))
    assert retrained.fingerprint  # its probe forward is not an extraction
    with CountingBackbone(retrained) as counter:
        second = extract_features(samples, spec, tmp_path / "cache", backbone=retrained, **run)
    assert counter.images == len(samples)
    assert first.backbone_fingerprint != second.backbone_fingerprint


@pytest.mark.slow
def test_an_interrupted_extraction_resumes(
    extracted: Extracted, backbone: Backbone, tmp_path: Path
) -> None:
    key = cache_key(extracted.samples, extracted.clean_spec, backbone.fingerprint)
    cache = tmp_path / "cache"
    folder = cache / key
    shutil.copytree(extracted.cache / key, folder)
    # the state an interruption after the first batch leaves behind
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    (folder / "progress.json").write_text(json.dumps({"rows": BATCH}))
    feats = np.load(folder / "features.npy", mmap_mode="r+")
    feats[BATCH:] = 0.0
    feats.flush()
    del feats

    with CountingBackbone(backbone) as counter:
        resumed = extract_features(
            extracted.samples,
            extracted.clean_spec,
            cache,
            batch_size=BATCH,
            workers=0,
            backbone=backbone,
            progress=False,
        )
    assert counter.images == len(extracted.samples) - BATCH  # only the rows not done
    np.testing.assert_allclose(resumed.features, extracted.clean.features, rtol=1e-5, atol=1e-6)
    assert json.loads((folder / "manifest.json").read_text())["complete"] is True
    assert json.loads((folder / "progress.json").read_text()) == {"rows": 4}


def test_a_corrupt_image_is_named(
    samples: list[Sample], backbone: Backbone, tmp_path: Path
) -> None:
    bad = tmp_path / "swan" / "broken_sketch.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but the rest is not a PNG")
    with_bad = [samples[0], Sample(bad, "swan")]
    with pytest.raises(DatasetError, match="not a readable image") as err:
        # workers=2: the error crosses from a DataLoader worker
        extract_features(
            with_bad,
            FeatureSpec(domain="sketch"),
            tmp_path / "cache",
            BATCH,
            workers=2,
            backbone=backbone,
            progress=False,
        )
    assert str(bad) in str(err.value)


def test_extracting_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no images"):
        extract_features([], FeatureSpec(), tmp_path)


@pytest.mark.parametrize("domain", ["sketch", "photo"])
def test_augment_is_reproducible_by_seed(domain: str) -> None:
    draw = draw_sketch if domain == "sketch" else draw_photo
    img = draw(3, np.random.default_rng(0)).resize((160, 160))
    cfg = AugmentConfig()

    def pixels(seed: int) -> bytes:
        out = augment(img, domain, seed, cfg)
        assert out.mode == "RGB"
        return out.tobytes() + repr(out.size).encode()

    assert pixels(7) == pixels(7)
    distinct = {pixels(seed) for seed in range(6)}
    assert len(distinct) == 6
    assert img.tobytes() not in distinct


def test_augment_keeps_the_input_unchanged() -> None:
    img = draw_photo(1, np.random.default_rng(0))
    before = img.copy()
    augment(img, "photo", 0, AugmentConfig())
    assert ImageChops.difference(img, before).getbbox() is None
