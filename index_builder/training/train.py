"""Training the IIAE on cached backbone features: class-paired batches, resumable runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from index_builder.training.config import TrainConfig
from index_builder.training.embedding import embed
from index_builder.training.features import FeatureSet
from index_builder.training.metrics import retrieval_metrics
from model.iiae import iiae_loss
from model.retrieval import RetrievalModel


@dataclass
class PairBatch:
    """Paired sketch and photo features with the class index of each pair."""

    x: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor


class ClassPairSampler:
    """Each step: for each (or ``batch_classes`` random) class, random sketch + photo views."""

    def __init__(
        self, sketches: FeatureSet, photos: FeatureSet, classes: list[str], cfg: TrainConfig
    ) -> None:
        self.classes = classes
        self.x, self.y = np.asarray(sketches.features), np.asarray(photos.features)
        index = {c: i for i, c in enumerate(classes)}
        self.x_by_class = _indices_by_class(sketches.labels, index)
        self.y_by_class = _indices_by_class(photos.labels, index)
        self.batch_classes = min(cfg.batch_classes or len(classes), len(classes))
        self.pairs = cfg.pairs_per_class
        self.rng = np.random.default_rng(cfg.seed)

    def steps_per_epoch(self) -> int:
        return max(1, len(self.x) // (self.batch_classes * self.pairs))

    def __call__(self) -> PairBatch:
        n_cls = len(self.classes)
        cls = self.rng.permutation(n_cls)[: self.batch_classes].repeat(self.pairs)
        xi = np.array([self.rng.choice(self.x_by_class[c]) for c in cls])
        yi = np.array([self.rng.choice(self.y_by_class[c]) for c in cls])
        xv = self.rng.integers(0, self.x.shape[1], len(cls))
        yv = self.rng.integers(0, self.y.shape[1], len(cls))
        return PairBatch(
            torch.from_numpy(self.x[xi, xv]),
            torch.from_numpy(self.y[yi, yv]),
            torch.from_numpy(cls.astype(np.int64)),
        )


def _indices_by_class(labels: list[str], index: dict[str, int]) -> list[np.ndarray]:
    buckets: list[list[int]] = [[] for _ in index]
    for i, c in enumerate(labels):
        if c in index:
            buckets[index[c]].append(i)
    return [np.asarray(b) for b in buckets]


def fit(
    model: RetrievalModel,
    sample: Callable[[], PairBatch],
    optimizer: torch.optim.Optimizer,
    steps: int,
    start_step: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    contrastive: float = 0.0,
    temperature: float = 0.1,
) -> None:
    """Minimise the IIAE objective on the scaled features for ``steps - start_step`` steps,
    plus ``contrastive`` x ``contrastive_loss`` where > 0; ``on_step`` sees each."""
    iiae, scaling = model.iiae, model.scaling
    device = next(iiae.parameters()).device
    iiae.train()
    bar = tqdm(
        range(start_step, steps),
        initial=start_step,
        total=steps,
        disable=not progress,
        desc="train",
    )
    for step in bar:
        batch = sample()
        out = iiae(scaling.sketch(batch.x.to(device)), scaling.photo(batch.y.to(device)))
        terms = iiae_loss(out, iiae.cfg, step, batch.labels.to(device))
        if contrastive > 0:
            terms["contrastive"] = contrastive_loss(out.r_x.mean, out.r_y.mean, temperature)
            terms["total"] = terms["total"] + contrastive * terms["contrastive"]
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        values = {k: float(v.detach()) for k, v in terms.items()}
        if step % 25 == 0:
            bar.set_postfix(loss=f"{values['total']:.3f}", klr=f"{values['klr_x']:.2f}")
        if on_step is not None:
            on_step(step + 1, values)
        iiae.train()  # on_step may have switched to eval


def contrastive_loss(rx: torch.Tensor, ry: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between the unit-norm r^x and r^y means of a batch's pairs: row i's
    sketch and photo are the positives, every other row's the negatives (a class-paired
    batch holds each class once at ``pairs_per_class`` 1)."""
    logits = F.normalize(rx, dim=-1) @ F.normalize(ry, dim=-1).T / temperature
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def make_optimizer(model: RetrievalModel, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam over every parameter of the IIAE (the authors': lr 2e-4, betas (0.5, 0.999),
    eps 1e-8)."""
    return torch.optim.Adam(
        model.iiae.parameters(),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=1e-8,
        weight_decay=cfg.weight_decay,
    )


def zero_shot_map(model: RetrievalModel, sketches: FeatureSet, photos: FeatureSet) -> float:
    """mAP@all of sketch -> photo retrieval on these (clean-view) features."""
    zx = embed(model, sketches.clean, "sketch")
    zy = embed(model, photos.clean, "photo")
    return retrieval_metrics(zx, sketches.labels, zy, photos.labels)["map_all"]


# Both ends: 0 is the IIAE's embedding alone, 1 the scaled features alone (no IIAE), so
# validation can say the IIAE is not worth its place.
FUSION_GRID = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


def choose_fusion_weight(
    model: RetrievalModel,
    sketches: FeatureSet,
    photos: FeatureSet,
    grid: tuple[float, ...] = FUSION_GRID,
) -> tuple[RetrievalModel, dict[float, float]]:
    """The model at the fusion weight of best validation mAP@all (the first of equals) and
    each weight's mAP@all. Nothing to choose (``model`` and ``{}``) where sketch and photo
    features differ in size."""
    if not model.scaling.cfg.comparable:
        return model, {}
    candidates = {w: model.with_head(model.head.with_weights(fusion_weight=w)) for w in grid}
    scores = {w: zero_shot_map(m, sketches, photos) for w, m in candidates.items()}
    return candidates[max(scores, key=scores.__getitem__)], scores
