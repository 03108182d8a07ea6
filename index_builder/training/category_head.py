"""The known-category head: a linear classifier of the training categories, fitted after
training, whose posteriors join the retrieval embedding (``IIAEConfig.category_weight``).

The zero-shot embedding ranks a trained category's pictures low among many others; the
head's posteriors (a sketch's and a picture's, compared by cosine) find them again. Its
share is chosen as in generalised zero-shot retrieval: the harmonic mean of mAP@all on
training-category sketches the head did not see (two-fold cross-fitting) and on the
validation categories' sketches, both against the pictures of both.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from index_builder.training.embedding import embed
from index_builder.training.features import FeatureSet
from index_builder.training.metrics import retrieval_metrics
from model.iiae import IIAE

CATEGORY_GRID = tuple(round(0.1 * i, 1) for i in range(10))  # 1 would drop the embedding


def fit_category_head(
    model: IIAE,
    sketches: FeatureSet,
    photos: FeatureSet,
    classes: list[str],
    steps: int = 400,
    lr: float = 0.01,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> None:
    """Fit ``model.category_head`` (from scratch, full batch) on these sketches and pictures
    of ``classes``, the two domains weighing equally; the rest of the model is untouched."""
    head = model.category_head
    device = head.weight.device
    index = {c: i for i, c in enumerate(classes)}
    with torch.no_grad():
        x = model.scale_x(torch.from_numpy(sketches.clean).to(device))
        y = model.sketch_like(model.scale_y(torch.from_numpy(photos.clean).to(device)))
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
        loss = F.cross_entropy(model.category_logits(inputs), labels, reduction="none")
        loss = (loss * weights).sum() + weight_decay * head.weight.square().sum()
        loss.backward()
        opt.step()
    head.zero_grad(set_to_none=True)


def choose_category_weight(
    model: IIAE,
    fit: tuple[FeatureSet, FeatureSet],
    val: tuple[FeatureSet, FeatureSet],
    classes: list[str],
    grid: tuple[float, ...] = CATEGORY_GRID,
) -> dict[float, dict[str, float]]:
    """Seen, unseen and harmonic-mean mAP@all of each category weight (above); leaves
    ``model`` with the head fitted on all of ``fit`` at the best weight (at 0, and ``{}``,
    where every class has a single sketch and none can be held out)."""
    (sk_fit, ph_fit), (sk_val, ph_val) = fit, val
    gallery = ph_fit.concat(ph_val)
    halves = _alternate_halves(sk_fit.labels)
    scores: dict[float, dict[str, list[float]]] = {c: {"seen": [], "unseen": []} for c in grid}
    for half in (0, 1):
        held = [i for i, h in enumerate(halves) if h == half]
        kept = [i for i, h in enumerate(halves) if h != half]
        if not held or not kept:  # classes of a single sketch: nothing to hold out or fit on
            continue
        fit_category_head(model, sk_fit.rows(kept), ph_fit, classes)
        blocks = (("seen", sk_fit.rows(held)), ("unseen", sk_val))
        for c in grid:
            model.cfg.category_weight = c
            zy = embed(model, gallery.clean, "photo")
            for block, queries in blocks:
                zx = embed(model, queries.clean, "sketch")
                mean_ap = retrieval_metrics(zx, queries.labels, zy, gallery.labels)["map_all"]
                scores[c][block].append(mean_ap)
    fit_category_head(model, sk_fit, ph_fit, classes)
    if not scores[grid[0]]["seen"]:  # no half could be held out: nothing to choose on
        model.cfg.category_weight = 0.0
        return {}
    table = {c: {b: float(np.mean(v)) for b, v in s.items()} for c, s in scores.items()}
    for row in table.values():
        total = row["seen"] + row["unseen"]
        row["harmonic"] = 2 * row["seen"] * row["unseen"] / total if total > 0 else 0.0
    model.cfg.category_weight = max(table, key=lambda c: table[c]["harmonic"])
    return table


def _alternate_halves(labels: list[str]) -> np.ndarray:
    """0/1 for each row, alternating within its class, so each half has every class."""
    seen: dict[str, int] = {}
    halves = np.zeros(len(labels), dtype=int)
    for i, c in enumerate(labels):
        halves[i] = seen.get(c, 0) % 2
        seen[c] = seen.get(c, 0) + 1
    return halves
