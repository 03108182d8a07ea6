"""Backbone feature extraction into a resumable on-disk cache.

A cache directory holds ``features.npy`` (N, views, D) float32, ``manifest.json`` (paths,
labels, backbone id and fingerprint, preprocessing, augmentation) and ``progress.json`` (rows
done). It is keyed by the file list, the extraction spec and the backbone's fingerprint (its
weights and its output on a probe image, ``Backbone.fingerprint``), so re-running is free, an
interrupted extraction continues where it stopped, and features of another network (a fixed
bug, other weights under the same name, a library that computes differently) are never reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from index_builder.training.augment import AugmentConfig, augment
from index_builder.training.datasets.base import DatasetError, Sample
from model.backbones import Backbone, load_backbone, with_pseudo_sketch
from model.preprocess import ImageError, Preprocessing, load_image
from model.pseudo_sketch import EdgeConfig, encoder_input_array

CACHE_VERSION = 2


class FeatureSpec(BaseModel):
    """What to extract: backbone, domain (for augmentation) and number of views."""

    backbone: str = "efficientnet-lite0"
    backbone_weights: str | None = None
    domain: str = "photo"  # "sketch" or "photo"
    views: int = 1  # view 0 is the clean image; views 1.. are augmented
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0


@dataclass
class FeatureSet:
    """Features (N, views, D) with the labels and paths of their images."""

    features: np.ndarray
    labels: list[str]
    paths: list[str]
    backbone: str
    preprocessing: Preprocessing
    backbone_fingerprint: str | None = None  # None: precomputed features of no known network

    @property
    def clean(self) -> np.ndarray:
        """The un-augmented view, (N, D)."""
        return np.asarray(self.features[:, 0])

    def subset(self, classes: set[str]) -> FeatureSet:
        """The rows of these classes."""
        return self.rows([i for i, c in enumerate(self.labels) if c in classes])

    def rows(self, idx: list[int]) -> FeatureSet:
        """These rows, in this order."""
        return FeatureSet(
            np.asarray(self.features[idx]),
            [self.labels[i] for i in idx],
            [self.paths[i] for i in idx],
            self.backbone,
            self.preprocessing,
            self.backbone_fingerprint,
        )

    def concat(self, other: FeatureSet) -> FeatureSet:
        """This set's rows, then ``other``'s (features of the same network)."""
        return FeatureSet(
            np.concatenate([np.asarray(self.features), np.asarray(other.features)]),
            self.labels + other.labels,
            self.paths + other.paths,
            self.backbone,
            self.preprocessing,
            self.backbone_fingerprint,
        )


class _ImageViews(Dataset):
    """Decodes, augments and preprocesses (image, view) pairs in DataLoader workers."""

    def __init__(
        self,
        samples: list[Sample],
        spec: FeatureSpec,
        prep: Preprocessing,
        start: int,
        edges: EdgeConfig | None = None,
    ) -> None:
        self.samples, self.spec, self.prep, self.start = samples, spec, prep, start
        self.edges = edges  # photos read with their pseudo-sketches

    def __len__(self) -> int:
        return len(self.samples) - self.start

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | str]:
        row = self.start + i
        path = self.samples[row].path
        try:
            img = load_image(path)
        except ImageError as err:
            return row, str(err)
        views = [img] + [
            augment(
                img,
                self.spec.domain,
                hash((self.spec.seed, row, v)) & 0x7FFFFFFF,
                self.spec.augment,
            )
            for v in range(1, self.spec.views)
        ]
        return row, np.stack([encoder_input_array(v, self.prep, self.edges) for v in views])


def _collate(batch: list[tuple[int, np.ndarray | str]]) -> list[tuple[int, np.ndarray | str]]:
    return batch


def cache_key(samples: list[Sample], spec: FeatureSpec, backbone_fingerprint: str) -> str:
    """Hash of the spec, the backbone's fingerprint and every file's absolute path, size and
    modification time."""
    h = hashlib.sha256(f"v{CACHE_VERSION}\0{backbone_fingerprint}".encode())
    h.update(spec.model_dump_json().encode())
    for s in samples:
        st = os.stat(s.path)
        h.update(f"{Path(s.path).resolve()}\0{s.label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


@functools.lru_cache(maxsize=4)
def cached_backbone(name: str, weights: str | None, pseudo_sketch: bool = False) -> Backbone:
    """One loaded backbone per process and (name, weights): fingerprinting it costs a forward.
    ``pseudo_sketch``: the backbone seeing each photo also as its pseudo-sketch (2 x D)."""
    backbone = load_backbone(name, weights)
    return with_pseudo_sketch(backbone) if pseudo_sketch else backbone


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def extract_features(
    samples: list[Sample],
    spec: FeatureSpec,
    cache_root: Path,
    batch_size: int = 32,
    workers: int = 2,
    backbone: Backbone | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Extract (or load from the cache) the backbone features of ``samples``.

    Raises DatasetError naming the file when an image cannot be decoded.
    """
    if not samples:
        raise DatasetError("no images to extract features from")
    backbone = backbone or cached_backbone(spec.backbone, spec.backbone_weights)
    out = cache_root / cache_key(samples, spec, backbone.fingerprint)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("complete"):
        return load_feature_cache(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "version": CACHE_VERSION,
        "complete": False,
        "backbone": backbone.name,
        "backbone_fingerprint": backbone.fingerprint,
        "feature_dim": backbone.feature_dim,
        "preprocessing": backbone.preprocessing.model_dump(),
        "spec": spec.model_dump(),
        "paths": [str(s.path) for s in samples],
        "labels": [s.label for s in samples],
    }
    _write_json(manifest_path, manifest)
    shape = (len(samples), spec.views, backbone.feature_dim)
    feats_path, progress_path = out / "features.npy", out / "progress.json"
    done = json.loads(progress_path.read_text())["rows"] if progress_path.exists() else 0
    if done and feats_path.exists():
        feats = np.lib.format.open_memmap(feats_path, mode="r+")
    else:
        done = 0
        feats = np.lib.format.open_memmap(feats_path, mode="w+", dtype=np.float32, shape=shape)
    _run_backbone(
        samples, spec, backbone, feats, done, progress_path, batch_size, workers, progress
    )
    feats.flush()
    del feats
    manifest["complete"] = True
    _write_json(manifest_path, manifest)
    return load_feature_cache(out)


def _run_backbone(
    samples: list[Sample],
    spec: FeatureSpec,
    backbone: Backbone,
    feats: np.ndarray,
    done: int,
    progress_path: Path,
    batch_size: int,
    workers: int,
    progress: bool,
) -> None:
    device = default_device()
    net = backbone.to(device).eval().to(memory_format=torch.channels_last)
    loader = DataLoader(
        _ImageViews(samples, spec, backbone.preprocessing, done, backbone.edges),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    bar = tqdm(
        total=len(samples),
        initial=done,
        disable=not progress,
        desc=f"{spec.domain} features ({backbone.name}, {spec.views} views)",
    )
    with torch.inference_mode():
        for batch in loader:
            errors = [msg for _, msg in batch if isinstance(msg, str)]
            if errors:
                raise DatasetError(errors[0])
            rows = [r for r, _ in batch]
            arrays = np.concatenate([a for _, a in batch])  # (B * views, 3, S, S)
            x = torch.from_numpy(arrays).to(device).contiguous(memory_format=torch.channels_last)
            f = net(x).float().cpu().numpy().reshape(len(rows), spec.views, -1)
            feats[rows[0] : rows[-1] + 1] = f
            feats.flush()
            _write_json(progress_path, {"rows": rows[-1] + 1})
            bar.update(len(rows))
    bar.close()


def load_feature_cache(folder: Path) -> FeatureSet:
    """Open a complete cache directory (features memory-mapped)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    if not manifest.get("complete"):
        raise DatasetError(f"{folder}: feature cache is incomplete; re-run the extraction")
    return FeatureSet(
        np.load(folder / "features.npy", mmap_mode="r"),
        manifest["labels"],
        manifest["paths"],
        manifest["backbone"],
        Preprocessing(**manifest["preprocessing"]),
        manifest["backbone_fingerprint"],
    )


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)
