"""The retrieval embedding: what the product compares, built on the IIAE.

The paper embeds a sketch by the mean of r^x(z^s|x) and a photo by the mean of r^y(z^s|y).
This project adds parts, each chosen on validation data after training and each off at
``RetrievalConfig()``'s defaults (the paper):

- fusion: ``[sqrt(1 - a) z, sqrt(a) s]`` of unit-norm parts, ``z`` the IIAE's embedding and
  ``s`` the scaled backbone features (a photo's comparable with a sketch's), at the share
  ``a`` = ``fusion_weight``, optionally projected on ``fusion_dim`` principal axes;
- known categories: ``[sqrt(1 - c) e, sqrt(c) p]`` of unit-norm parts, ``e`` the embedding
  so far and ``p`` the posteriors of a linear classifier of the training categories on the
  scaled features, at the share ``c`` = ``category_weight``. It finds the trained
  categories' pictures for new sketches of them, which the zero-shot embedding alone ranks
  low in a large gallery.

``RetrievalHead`` holds these parts with the chosen weights; it is never changed: a choice
of other weights is a new head (``with_weights``) over the same fitted parts. A new part is
a field of ``RetrievalConfig`` (off by default), its fitted tensors in the head and a step
in ``RetrievalHead.forward``.
"""

from __future__ import annotations

import math
from typing import Self

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from model.iiae import IIAE, IIAEConfig
from model.scaling import InputScaling, ScalingConfig

CATEGORY_LOGIT_SCALE = 16.0  # cosine logits: the category head reads unit-norm features


class RetrievalConfig(BaseModel):
    """The retrieval embedding's parts beyond the paper's and their weights (module
    docstring); the defaults are the paper's: none."""

    model_config = ConfigDict(frozen=True)

    fusion_weight: float = Field(0.0, ge=0.0, le=1.0, description="share a of the features")
    # > 0: the scaled features enter the fusion projected on this many principal axes of the
    # training features (a small index); 0: whole.
    fusion_dim: int = Field(0, ge=0)
    category_classes: int = Field(0, ge=0, description="> 0: the known-category head")
    category_weight: float = Field(0.0, ge=0.0, le=1.0, description="share c of posteriors")

    @model_validator(mode="after")
    def _head_for_weight(self) -> Self:
        if self.category_weight > 0 and self.category_classes == 0:
            raise ValueError("category_weight > 0 needs the category head (category_classes > 0)")
        return self

    @property
    def reads_features(self) -> bool:
        """Whether any part reads the scaled features (so sketch's and photo's must match)."""
        return self.fusion_weight > 0 or self.fusion_dim > 0 or self.category_classes > 0


class CategoryHead(nn.Linear):
    """The known-category head: a linear classifier of the directions of scaled sketch (or
    sketch-like photo) features, by cosine logits at a fixed scale."""

    def forward(self, scaled: Tensor) -> Tensor:
        return super().forward(CATEGORY_LOGIT_SCALE * F.normalize(scaled, dim=-1))


class RetrievalHead(nn.Module):
    """The IIAE's embedding ``z`` and the scaled features -> the retrieval embedding (not
    normalised). Fitted parts not given are placeholders of their shape, to be loaded from a
    run or fitted."""

    def __init__(
        self,
        cfg: RetrievalConfig,
        latent_dim: int,
        feature_dim: int,
        fusion_basis: Tensor | None = None,
        category_head: CategoryHead | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.latent_dim, self.feature_dim = cfg, latent_dim, feature_dim
        if cfg.fusion_dim > 0:  # the principal axes; until fitted the first coordinates
            if fusion_basis is None:
                fusion_basis = torch.eye(feature_dim)[:, : cfg.fusion_dim]
            self.register_buffer("fusion_basis", fusion_basis)
        if cfg.category_classes > 0 and category_head is None:
            category_head = CategoryHead(feature_dim, cfg.category_classes)
        self.category_head = category_head if cfg.category_classes > 0 else None
        head = self.category_head
        if head is not None and (head.in_features, head.out_features) != (
            feature_dim,
            cfg.category_classes,
        ):
            raise ValueError(
                f"a category head of {head.out_features} classes on {head.in_features}-d "
                f"features; this one reads {feature_dim}-d of {cfg.category_classes}"
            )

    def with_weights(self, **weights: float) -> RetrievalHead:
        """A head over the same fitted parts with other ``fusion_weight`` /
        ``category_weight``."""
        unknown = set(weights) - {"fusion_weight", "category_weight"}
        if unknown:
            raise ValueError(f"not a weight of the retrieval head: {', '.join(sorted(unknown))}")
        return self.with_parts(RetrievalConfig(**{**self.cfg.model_dump(), **weights}))

    def with_parts(
        self, cfg: RetrievalConfig, category_head: CategoryHead | None = None
    ) -> RetrievalHead:
        """A head of configuration ``cfg`` over this one's fitted parts (and
        ``category_head`` instead of this one's, where given)."""
        return RetrievalHead(
            cfg,
            self.latent_dim,
            self.feature_dim,
            getattr(self, "fusion_basis", None) if cfg.fusion_dim == self.cfg.fusion_dim else None,
            self.category_head if category_head is None else category_head,
        )

    @property
    def embedding_dim(self) -> int:
        """Size of the retrieval embedding."""
        size = self.latent_dim
        if self.cfg.fusion_weight > 0:
            size += self.cfg.fusion_dim or self.feature_dim
        if self.cfg.category_weight > 0:
            size += self.cfg.category_classes
        return size

    def forward(self, z: Tensor, scaled: Tensor) -> Tensor:
        embedding = self._fused(z, scaled)
        c = self.cfg.category_weight
        if c <= 0:
            return embedding
        posterior = F.softmax(self.category_head(scaled), dim=-1)
        # Unit-norm parts, so that ``c`` alone sets their balance in the cosine.
        parts = (
            math.sqrt(1 - c) * F.normalize(embedding, dim=-1),
            math.sqrt(c) * F.normalize(posterior, dim=-1),
        )
        return torch.cat(parts, dim=-1)

    def _fused(self, z: Tensor, scaled: Tensor) -> Tensor:
        a = self.cfg.fusion_weight
        if a <= 0:
            return z
        if self.cfg.fusion_dim > 0:
            scaled = scaled @ self.fusion_basis
        # Unit-norm parts, so that ``a`` alone sets their balance in the cosine.
        parts = (
            math.sqrt(1 - a) * F.normalize(z, dim=-1),
            math.sqrt(a) * F.normalize(scaled, dim=-1),
        )
        return torch.cat(parts, dim=-1)


def fusion_basis(scaling: InputScaling, x: Tensor, y: Tensor, dim: int) -> Tensor:
    """The ``dim`` principal axes (columns) of both domains' scaled training features (raw
    ``x``, ``y``); zero columns beyond the samples' rank."""
    both = torch.cat([scaling.sketch(x), scaling.sketch_like(scaling.photo(y))])
    _, _, v = torch.linalg.svd(both - both.mean(dim=0), full_matrices=False)
    axes = v[:dim].T  # fewer when there are fewer samples than axes
    basis = torch.zeros(both.shape[1], dim)
    basis[:, : axes.shape[1]] = axes
    return basis


class ModelConfig(BaseModel):
    """Everything that shapes a trained model: what ``run.json`` records."""

    model_config = ConfigDict(frozen=True)

    iiae: IIAEConfig
    scaling: ScalingConfig
    retrieval: RetrievalConfig = RetrievalConfig()


class RetrievalModel(nn.Module):
    """Sketch and photo backbone features -> retrieval embeddings: the input scaling, the
    IIAE's r^x / r^y and the retrieval head. What a run saves and ONNX export encodes."""

    def __init__(self, scaling: InputScaling, iiae: IIAE, head: RetrievalHead) -> None:
        super().__init__()
        s, i = scaling.cfg, iiae.cfg
        if (s.input_dim_x, s.input_dim_y) != (i.input_dim_x, i.input_dim_y):
            raise ValueError(
                f"the scaling reads {s.input_dim_x}/{s.input_dim_y}-d features, "
                f"the IIAE {i.input_dim_x}/{i.input_dim_y}-d"
            )
        if head.cfg.reads_features and not s.comparable:
            raise ValueError("fusion and category head need sketch and photo features of one size")
        if (head.latent_dim, head.feature_dim) != (i.latent_dim, s.input_dim_x):
            raise ValueError("the retrieval head was built for another IIAE or features")
        self.scaling, self.iiae, self.head = scaling, iiae, head

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> RetrievalModel:
        """A model of this shape, its parameters and statistics to be loaded."""
        head = RetrievalHead(cfg.retrieval, cfg.iiae.latent_dim, cfg.scaling.input_dim_x)
        return cls(InputScaling(cfg.scaling), IIAE(cfg.iiae), head)

    @classmethod
    def plain(cls, iiae: IIAE, scaling: InputScaling | None = None) -> RetrievalModel:
        """The paper's retrieval by ``iiae``: r^x / r^y means of the inputs as ``scaling``
        scales them (raw where None), no other part."""
        cfg = iiae.cfg
        dims = {"input_dim_x": cfg.input_dim_x, "input_dim_y": cfg.input_dim_y}
        scaling = scaling or InputScaling(ScalingConfig(**dims))
        return cls(scaling, iiae, RetrievalHead(RetrievalConfig(), cfg.latent_dim, cfg.input_dim_x))

    @property
    def config(self) -> ModelConfig:
        return ModelConfig(iiae=self.iiae.cfg, scaling=self.scaling.cfg, retrieval=self.head.cfg)

    @property
    def embedding_dim(self) -> int:
        return self.head.embedding_dim

    def with_head(self, head: RetrievalHead) -> RetrievalModel:
        """This model (the same scaling and IIAE) with another retrieval head."""
        return RetrievalModel(self.scaling, self.iiae, head)

    def embed_sketch(self, x: Tensor) -> Tensor:
        """A sketch's retrieval embedding (not normalised)."""
        scaled = self.scaling.sketch(x)
        return self.head(self.iiae.embed_sketch(scaled), scaled)

    def embed_photo(self, y: Tensor) -> Tensor:
        """A photo's retrieval embedding (not normalised)."""
        scaled = self.scaling.photo(y)
        return self.head(self.iiae.embed_photo(scaled), self.scaling.sketch_like(scaled))

    def file_state(self) -> dict[str, Tensor]:
        """The tensors of a run file, in one flat namespace of the parts' own names (the
        names the first runs' files have)."""
        parts = (self.iiae, self.scaling, self.head)
        return {k: v for part in parts for k, v in part.state_dict().items()}

    def load_file_state(self, state: dict[str, Tensor]) -> None:
        """Load ``file_state``'s tensors; every one must be known and none missing."""
        for part in (self.iiae, self.scaling, self.head):
            own = part.state_dict().keys()
            part.load_state_dict({k: v for k, v in state.items() if k in own})
        unknown = state.keys() - self.file_state().keys()
        if unknown:
            raise ValueError(f"unknown tensors in the model file: {', '.join(sorted(unknown))}")
