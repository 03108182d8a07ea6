"""Zero-shot evaluation: sketches of unseen classes query the photos of those classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from index_builder.training.config import BuilderSettings
from index_builder.training.datasets.authors_features import is_authors_features
from index_builder.training.datasets.base import DatasetError
from index_builder.training.datasets.sketchy import Gallery
from index_builder.training.datasets.splits import match_classes, resolve_split
from index_builder.training.embedding import embed
from index_builder.training.features import FeatureSet
from index_builder.training.heldout import split_heldout
from index_builder.training.metrics import l2_normalize, retrieval_metrics, top_k
from index_builder.training.report_figure import save_retrieval_figure
from index_builder.training.sources import (
    AUTHORS_BACKBONE,
    check_one_kind,
    data_classes,
    feature_sets,
    pick_split_dir,
)
from model.checkpoint import load_model
from model.retrieval import RetrievalModel
from model.scaling import Standardize, scaling_name

CONVENTION = (
    "IIAE convention: cosine ranking of the whole gallery; mAP@all = mean over queries of "
    "(1/R) sum of precision at relevant ranks; mAP@K uses 1/K (Yelamarthi); P@K = hits/K"
)


def score(
    zx: np.ndarray, sk: FeatureSet, zy: np.ndarray, ph: FeatureSet, voc: bool = False
) -> dict[str, float]:
    """The retrieval metrics of sketch embeddings against photo embeddings."""
    return retrieval_metrics(zx, sk.labels, zy, ph.labels, voc=voc)


def evaluate_run(
    run_dir: Path,
    data: Path,
    test_classes: str | Path | None = None,
    json_out: Path | None = None,
    figure_out: Path | None = None,
    voc: bool = False,
    settings: BuilderSettings | None = None,
    gallery: Gallery = "extended",
    iiae_alone: bool = False,
    figure_cell_px: int = 160,
    model: RetrievalModel | None = None,
) -> dict:
    """Metrics of a trained run on the unseen classes (the run's own test split by default).

    ``gallery="sake"`` searches Sketchy's own photos too, as SAKE and ZSE-SBIR do.
    ``model``: this model instead of the run's (another retrieval head over it).
    ``iiae_alone``: the r^x / r^y embedding alone (no fusion, no category head).
    ``figure_cell_px``: the side of one picture of ``figure_out``, in pixels.
    """
    loaded, info = load_model(run_dir)
    model = loaded if model is None else model
    if iiae_alone:
        model = model.with_head(model.head.with_weights(fusion_weight=0.0, category_weight=0.0))
    check_inputs(run_dir, info, data)
    if is_authors_features(data):
        if gallery != "extended":
            raise DatasetError(
                f"{data}: the feature files hold one gallery; --gallery "
                f"{gallery} needs Sketchy's images"
            )
        data = pick_split_dir(data, None, test_classes or info.get("test_classes"))
    test = _test_classes(data, test_classes, info)
    sk, ph = run_features(model, info, data, test, settings, gallery)
    dim_x = model.scaling.cfg.input_dim_x
    if sk.features.shape[-1] != dim_x:
        raise DatasetError(
            f"{data}: {sk.backbone} features are {sk.features.shape[-1]}-d; the "
            f"run {run_dir} reads {dim_x}-d"
        )
    zx, zy = embed(model, sk.clean, "sketch"), embed(model, ph.clean, "photo")
    result = {
        "model": f"IIAE ({info.get('feature_backbone', info['backbone'])}) {run_dir}",
        "data": str(data),
        "gallery": gallery,
        "test_classes": test,
        "convention": CONVENTION,
        **score(zx, sk, zy, ph, voc),
    }
    heldout_share = info["config"].get("holdout_sketches", 0.0)
    if heldout_share > 0:
        result["heldout"] = heldout_metrics(model, info, data, test, settings, gallery)
    if figure_out is not None:
        save_query_figure(figure_out, zx, sk, zy, ph, cell_px=figure_cell_px)
        result["figure"] = str(figure_out)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
    return result


def run_features(
    model: RetrievalModel,
    info: dict,
    data: Path,
    classes: list[str],
    settings: BuilderSettings | None,
    gallery: Gallery = "extended",
) -> tuple[FeatureSet, FeatureSet]:
    """(sketch, photo) features of ``classes`` through the run's backbone, as its model reads
    them."""
    return feature_sets(
        data,
        classes,
        info["backbone"],
        info["config"].get("backbone_weights"),
        settings=settings,
        gallery=gallery,
        pseudo_sketch=model.scaling.cfg.pseudo_sketch,
    )


def heldout_metrics(
    model: RetrievalModel,
    info: dict,
    data: Path,
    test: list[str],
    settings: BuilderSettings | None,
    gallery: Gallery = "extended",
) -> dict:
    """The run's held-out sketches of its fitted (trained) categories, which no fit saw,
    against the pictures of every class of the run (fitted, validation and test): how new
    sketches of trained categories fare."""
    fitted = info["train_classes"]
    classes = sorted({*fitted, *info.get("val_classes", []), *test})
    sk, ph = run_features(model, info, data, classes, settings, gallery)
    _, held = split_heldout(sk.subset(set(fitted)), info["config"]["holdout_sketches"])
    zx, zy = embed(model, held.clean, "sketch"), embed(model, ph.clean, "photo")
    return {"queries": "held-out sketches of trained categories", **score(zx, held, zy, ph)}


def check_inputs(run_dir: Path, info: dict, data: Path) -> None:
    """Refuse data of another kind than the run was trained on (feature files vs images)."""
    check_one_kind(data)
    run_on_files = info.get("feature_backbone") == AUTHORS_BACKBONE
    data_is_files = is_authors_features(data)
    if run_on_files and not data_is_files:
        raise DatasetError(
            f"{run_dir} was trained on the IIAE authors' feature files ({AUTHORS_BACKBONE}); "
            f"{data} holds none: pass their folder (SketchyVGG/split<N>) as --data"
        )
    if data_is_files and not run_on_files:
        raise DatasetError(
            f"{run_dir} was trained on images through {info['backbone']}; {data} holds the "
            "authors' feature files, which that model cannot read: pass an image data set"
        )


def _test_classes(data: Path, test_classes: str | Path | None, info: dict) -> list[str]:
    """``test_classes`` or the run's own, in the spelling of ``data``'s class folders."""
    if test_classes is None:
        if not info.get("test_classes"):
            raise ValueError("the run names no test classes: pass --test-classes")
        matched, unknown = match_classes(info["test_classes"], data_classes(data))
        if unknown:
            raise DatasetError(
                f"{data} lacks the run's test class(es) {', '.join(map(repr, unknown))}"
            )
        return sorted(matched)
    return resolve_split(data_classes(data), None, test_classes)[1]


def baseline_embeddings(
    train: tuple[FeatureSet, FeatureSet] | None,
    test: tuple[FeatureSet, FeatureSet],
    whiten: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Backbone features with no training: raw, or z-scored per domain with training stats,
    or with ``whiten`` = (power, shrinkage) rooted and whitened per domain as the recommended
    recipe's inputs (``Standardize``). Photo features twice a sketch's size are [photo;
    pseudo-sketch] halves, taken by their (standardised) mean, as the fused model does."""
    sk, ph = test
    if train is None:
        return l2_normalize(sk.clean), l2_normalize(_sketch_like(ph.clean, sk.clean))
    if whiten is not None:
        free = TrainingFree(train, whiten)
        return free.sketch(sk.clean), free.photo(ph.clean)
    out = []
    for fit_on, feats in ((train[0], sk), (train[1], ph)):
        ref = fit_on.clean
        out.append((feats.clean - ref.mean(0)) / (ref.std(0) + 1e-6))
    return l2_normalize(out[0]), l2_normalize(_sketch_like(out[1], out[0]))


class TrainingFree:
    """The best training-free embedding: backbone features rooted and whitened per domain
    (``whiten`` = (power, shrinkage), as the recommended recipe's inputs) with statistics of
    ``train``'s sketches and photos; a photo of [photo; pseudo-sketch] halves is their mean."""

    def __init__(self, train: tuple[FeatureSet, FeatureSet], whiten: tuple[float, float]):
        self.dim = train[0].clean.shape[1]
        self.scales = []
        for fit_on in train:
            ref = fit_on.clean
            scale = Standardize(ref.shape[1], *whiten, blocks=ref.shape[1] // self.dim)
            with torch.no_grad():
                scale.fit(torch.from_numpy(ref))
            self.scales.append(scale)

    def _scaled(self, domain: int, feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.scales[domain](torch.from_numpy(np.array(feats, dtype=np.float32))).numpy()

    def sketch(self, x: np.ndarray) -> np.ndarray:
        """Unit-norm embeddings of (N, D) sketch features."""
        return l2_normalize(self._scaled(0, x))

    def photo(self, y: np.ndarray) -> np.ndarray:
        """Unit-norm embeddings of (N, D) or (N, 2 D) photo features."""
        scaled = self._scaled(1, y)
        return l2_normalize(_sketch_like(scaled, scaled[:, : self.dim]))


def _sketch_like(photo: np.ndarray, sketch: np.ndarray) -> np.ndarray:
    if photo.shape[1] == 2 * sketch.shape[1]:
        return photo.reshape(len(photo), 2, -1).mean(axis=1)
    return photo


def standardized_baseline_map(
    train: tuple[FeatureSet, FeatureSet], test: tuple[FeatureSet, FeatureSet]
) -> float:
    """mAP@all on ``test`` of backbone features z-scored per domain with ``train``'s stats."""
    zx, zy = baseline_embeddings(train, test)
    return score(zx, test[0], zy, test[1])["map_all"]


def validation_check(
    model_map: float, train: tuple[FeatureSet, FeatureSet], val: tuple[FeatureSet, FeatureSet]
) -> dict:
    """The model's validation mAP@all beside the training-free standardised baseline's.

    The model's figure is of the step chosen on these classes, so it leans optimistic.
    """
    baseline = standardized_baseline_map(train, val)
    return {
        "model_map_all": model_map,
        "baseline_map_all": baseline,
        "model_better": model_map > baseline,
    }


def evaluate_baselines(
    data: Path,
    train_classes: list[str],
    test_classes: list[str],
    backbone: str,
    settings: BuilderSettings | None = None,
    with_pseudo_sketch: bool = False,
    whiten: tuple[float, float] | None = None,
    holdout_sketches: float = 0.0,
) -> dict[str, dict]:
    """Raw and standardised pooled-feature baselines on the test classes, the standardised
    one with each photo's pseudo-sketch beside it (``with_pseudo_sketch``), and with
    ``whiten`` = (power, shrinkage) that one rooted and whitened instead of z-scored. The
    statistics leave the training classes' held-out sketches out (``holdout_sketches``, as a
    run of that share does)."""
    results = {}
    for pseudo in (False, True) if with_pseudo_sketch else (False,):
        test = feature_sets(data, test_classes, backbone, settings=settings, pseudo_sketch=pseudo)
        train_sk, train_ph = feature_sets(
            data, train_classes, backbone, settings=settings, pseudo_sketch=pseudo
        )
        train = split_heldout(train_sk, holdout_sketches)[0], train_ph
        suffix = " + photo pseudo-sketches" if pseudo else ""
        for name, fit_on in (("raw", None), ("standardized", train)):
            zx, zy = baseline_embeddings(fit_on, test)
            results[f"{backbone} {name} features{suffix}"] = score(zx, test[0], zy, test[1])
        if whiten is not None and pseudo == with_pseudo_sketch:  # on the last feature set
            zx, zy = baseline_embeddings(train, test, whiten)
            label = f"{backbone} {scaling_name(*whiten)} features{suffix}"
            results[label] = score(zx, test[0], zy, test[1])
    return results


def save_query_figure(
    out: Path,
    zx: np.ndarray,
    sk: FeatureSet,
    zy: np.ndarray,
    ph: FeatureSet,
    n_queries: int = 6,
    k: int = 8,
    cell_px: int = 160,
) -> None:
    """A picture of a few queries (one per class, spread out) and their top-k photos."""
    classes = sorted(set(sk.labels))
    picks = np.linspace(0, len(classes) - 1, min(n_queries, len(classes))).astype(int)
    queries = [sk.labels.index(classes[i]) for i in picks]
    idx, scores = top_k(zx[queries], zy, min(k, len(ph.labels)))
    save_retrieval_figure(
        out,
        [Path(sk.paths[q]) for q in queries],
        [sk.labels[q] for q in queries],
        [Path(p) for p in ph.paths],
        ph.labels,
        idx,
        scores,
        cell_px,
    )


def format_table(
    rows: dict[str, dict],
    keys: tuple[str, ...] = ("map_all", "p_at_10", "p_at_100", "map_at_200", "p_at_200"),
) -> str:
    """A fixed-width table: one row per model, one column per metric."""
    width = max(len(name) for name in rows) + 2
    lines = ["model".ljust(width) + "".join(k.rjust(11) for k in keys)]
    for name, m in rows.items():
        lines.append(name.ljust(width) + "".join(f"{m.get(k, float('nan')):11.4f}" for k in keys))
    return "\n".join(lines)
