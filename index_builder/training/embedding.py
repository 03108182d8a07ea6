"""Retrieval embeddings of cached backbone features by a trained model (evaluation, choices)."""

from __future__ import annotations

import numpy as np
import torch

from index_builder.training.metrics import l2_normalize
from model.retrieval import RetrievalModel


@torch.no_grad()
def embed(model: RetrievalModel, feats: np.ndarray, domain: str, batch: int = 4096) -> np.ndarray:
    """Retrieval embeddings (``embed_sketch`` / ``embed_photo``) of (N, D) features, unit-norm."""
    model.eval()
    device = next(model.parameters()).device
    fn = model.embed_sketch if domain == "sketch" else model.embed_photo
    parts = [
        fn(torch.from_numpy(np.array(feats[i : i + batch], dtype=np.float32)).to(device)).cpu()
        for i in range(0, len(feats), batch)
    ]
    return l2_normalize(torch.cat(parts).numpy()).astype(np.float32)
