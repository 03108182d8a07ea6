"""The known-category head: a linear classifier of the training categories, fitted after
training, whose posteriors join the retrieval embedding (``RetrievalConfig.category_weight``,
``model/retrieval.py``).

The zero-shot embedding ranks a trained category's pictures low among many others; the
head's posteriors (a sketch's and a picture's, compared by cosine) find them again. Its
share is chosen as in generalised zero-shot retrieval: the harmonic mean of mAP@all on
training-category sketches the head did not see and on the validation categories' sketches,
both against the pictures of both. The cross-fitting is two-fold over sketches and pictures
alike (alternating halves within each class): a half's head never saw the held half's
sketches nor its pictures, as the deployed head never saw a new gallery picture of a trained
category. (Fitted on every picture, the head's posterior of a fitted picture is peaked on its
class whatever the share, so the seen score stayed high at large shares and noise chose them.)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from index_builder.training.embedding import embed
from index_builder.training.features import FeatureSet
from index_builder.training.metrics import retrieval_metrics
from model.retrieval import CategoryHead, RetrievalConfig, RetrievalHead, RetrievalModel

# Both ends: 0 is the embedding alone, 1 the posteriors alone.
CATEGORY_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def fit_category_head(
    model: RetrievalModel,
    sketches: FeatureSet,
    photos: FeatureSet,
    classes: list[str],
    steps: int = 400,
    lr: float = 0.01,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> CategoryHead:
    """A category head fitted (from scratch, full batch) on these sketches and pictures of
    ``classes`` as ``model`` scales them, the two domains weighing equally."""
    scaling, dim = model.scaling, model.head.feature_dim
    device = next(model.parameters()).device
    # weights from the seeded generator below, so the global random stream is left alone
    head = torch.nn.utils.skip_init(CategoryHead, dim, len(classes), device=device)
    index = {c: i for i, c in enumerate(classes)}
    with torch.no_grad():
        x = scaling.sketch(torch.from_numpy(sketches.clean).to(device))
        y = scaling.sketch_like(scaling.photo(torch.from_numpy(photos.clean).to(device)))
        inputs = torch.cat([x, y])
    labels = torch.tensor([index[c] for c in sketches.labels + photos.labels], device=device)
    domains = [torch.full((len(t),), 1.0 / len(t)) for t in (x, y) if len(t)]
    weights = torch.cat(domains).to(device) / len(domains)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(0.01 * torch.randn(head.weight.shape, generator=generator))
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(head(inputs), labels, reduction="none")
        loss = (loss * weights).sum() + weight_decay * head.weight.square().sum()
        loss.backward()
        opt.step()
    head.zero_grad(set_to_none=True)
    return head


def choose_category_weight(
    model: RetrievalModel,
    fit: tuple[FeatureSet, FeatureSet],
    val: tuple[FeatureSet, FeatureSet],
    classes: list[str],
    grid: tuple[float, ...] = CATEGORY_GRID,
) -> tuple[RetrievalModel, dict[float, dict[str, float]]]:
    """The model with the head fitted on all of ``fit`` at the weight of best harmonic mean
    (above), and each weight's seen, unseen and harmonic-mean mAP@all. Where every class has
    a single sketch and none can be held out: that head at weight 0, and ``{}``."""
    (sk_fit, ph_fit), (sk_val, ph_val) = fit, val
    gallery = ph_fit.concat(ph_val)
    scores: dict[float, dict[str, list[float]]] = {c: {"seen": [], "unseen": []} for c in grid}
    for held, kept_sketches, kept_photos in cross_fit_halves(sk_fit, ph_fit):
        head = fit_category_head(model, kept_sketches, kept_photos, classes)
        blocks = (("seen", held), ("unseen", sk_val))
        for c in grid:
            candidate = model.with_head(_with_category_head(model, head, c))
            zy = embed(candidate, gallery.clean, "photo")
            for block, queries in blocks:
                zx = embed(candidate, queries.clean, "sketch")
                mean_ap = retrieval_metrics(zx, queries.labels, zy, gallery.labels)["map_all"]
                scores[c][block].append(mean_ap)
    head = fit_category_head(model, sk_fit, ph_fit, classes)
    if not scores[grid[0]]["seen"]:  # no half could be held out: nothing to choose on
        return model.with_head(_with_category_head(model, head, 0.0)), {}
    table = {c: {b: float(np.mean(v)) for b, v in s.items()} for c, s in scores.items()}
    for row in table.values():
        total = row["seen"] + row["unseen"]
        row["harmonic"] = 2 * row["seen"] * row["unseen"] / total if total > 0 else 0.0
    best = max(table, key=lambda c: table[c]["harmonic"])
    return model.with_head(_with_category_head(model, head, best)), table


def cross_fit_halves(
    sketches: FeatureSet, photos: FeatureSet
) -> list[tuple[FeatureSet, FeatureSet, FeatureSet]]:
    """The two-fold cross-fitting of the share rule: for each half, (its sketches, held out
    to score; the other half's sketches and the other half's pictures, to fit a head on).
    Halves alternate within each class, for sketches and pictures alike; a class's single
    picture is in half 0. Halves with nothing to hold out or fit on are left out."""
    sketch_halves = _alternate_halves(sketches.labels)
    photo_halves = _alternate_halves(photos.labels)
    out = []
    for half in (0, 1):
        held = [i for i, h in enumerate(sketch_halves) if h == half]
        kept = [i for i, h in enumerate(sketch_halves) if h != half]
        if not held or not kept:  # classes of a single sketch: nothing to hold out or fit on
            continue
        kept_photos = [i for i, h in enumerate(photo_halves) if h != half]
        out.append((sketches.rows(held), sketches.rows(kept), photos.rows(kept_photos)))
    return out


def _with_category_head(model: RetrievalModel, head: CategoryHead, weight: float) -> RetrievalHead:
    """``model``'s retrieval head with this category head at this weight."""
    changes = {"category_classes": head.out_features, "category_weight": weight}
    cfg = RetrievalConfig.model_validate({**model.head.cfg.model_dump(), **changes})
    return model.head.with_parts(cfg, category_head=head)


def _alternate_halves(labels: list[str]) -> np.ndarray:
    """0/1 for each row, alternating within its class, so each half has every class."""
    seen: dict[str, int] = {}
    halves = np.zeros(len(labels), dtype=int)
    for i, c in enumerate(labels):
        halves[i] = seen.get(c, 0) % 2
        seen[c] = seen.get(c, 0) + 1
    return halves
