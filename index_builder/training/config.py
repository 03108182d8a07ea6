"""Typed configuration of the builder: a training run's settings (``TrainConfig``, from a named
recipe and flags) and the builder's runtime settings (``BuilderSettings``, from ``SBIR_*``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from model.retrieval import ModelConfig


class TrainConfig(BaseModel):
    """A training run's complete settings. Every default is the IIAE authors' (docs/iiae.md
    section 3: their code, gr8joo/IIAE) or, for what they did not have, off; the backbone
    is this project's (they fed 512-d VGG-16 features: ``backbone="vgg16"``). Named recipes
    (``index_builder/training/recipes.py``) are complete configurations; CLI flags override
    a recipe's values. Not read from the environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recipe: str = Field("paper", description="the named recipe these settings started from")

    backbone: str = Field("efficientnet-lite0", description="feature backbone")
    backbone_weights: str | None = Field(None, description="local weights file of the backbone")
    seed: int = 0
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 0.0
    epochs: float = Field(9.0, description="epochs of (training sketches // batch) steps")
    steps: int | None = Field(None, description="optimisation steps (overrides epochs)")
    batch_classes: int | None = Field(None, description="classes per step (default: all)")
    pairs_per_class: int = Field(1, description="sketch/photo pairs per class per step")
    standardize: bool = Field(
        False, description="scale inputs and reconstruction targets (False: raw, as the authors)"
    )
    input_power: float = Field(
        1.0, description="signed power of the input features (0.5: square root), before scaling"
    )
    whiten_shrinkage: float = Field(
        0.0,
        description="with --standardize: > 0 whitens, shrunk by this x the mean variance; "
        "0 z-scores",
    )
    decoder: Literal["authors", "deep"] = Field(
        "authors", description="authors: 128 ReLU, linear out; deep: 128-512 LeakyReLU"
    )
    init: Literal["glorot", "torch"] = Field(
        "glorot", description="weights: the authors' Glorot / N(1, .02) BN, or PyTorch defaults"
    )
    sketch_views: int = Field(1, description="feature views per sketch (1 = no augmentation)")
    photo_views: int = Field(1, description="feature views per photo (1 = no augmentation)")
    pseudo_sketch: bool = Field(
        False, description="photos are seen as themselves and as pseudo-sketches (edge maps)"
    )
    latent_dim: int = 64
    beta: float = 0.5
    lam: float = 1.0
    w_rec: float = 10.0
    w_cls: float = Field(0.0, description="class head weight (0 = no head, as the authors)")
    anneal_steps: float = 2000.0
    input_dropout: float = 0.0
    val_classes: int = Field(0, description="training classes held out for early stopping")
    fusion_weight: float = Field(
        0.0, description="share of the scaled features in the retrieval embedding"
    )
    fusion_dim: int = Field(
        0, description="principal axes of the scaled features kept for the fusion (0: all)"
    )
    choose_fusion: bool = Field(
        False, description="choose fusion_weight on the validation classes (0, .25, .5, .75)"
    )
    category_head: bool = Field(
        False,
        description="add the known-category head after training, its share chosen on "
        "held-out sketches of training classes and on the validation classes",
    )
    holdout_sketches: float = Field(
        0.0,
        description="share (0 or 1/n) of each training category's sketches never fitted on "
        "(by a hash of the key_id): queries of held-out sketches of trained categories",
    )
    w_contrastive: float = Field(
        0.0, description="weight of InfoNCE between the r^x and r^y means of a batch's pairs"
    )
    contrastive_temperature: float = Field(0.1, gt=0.0, description="InfoNCE temperature")
    eval_every: int = 200
    checkpoint_every: int = 500
    log_every: int = 50

    @field_validator("holdout_sketches")
    @classmethod
    def _share_one_in_n(cls, share: float) -> float:
        from index_builder.training.heldout import heldout_modulus

        heldout_modulus(share)
        return share

    def architecture(self, dim_x: int, dim_y: int, num_classes: int) -> ModelConfig:
        """The shape of the model these settings train on ``dim_x``/``dim_y``-d features of
        ``num_classes`` training classes."""
        from model.iiae import IIAEConfig  # torch: only where a model is built
        from model.retrieval import ModelConfig, RetrievalConfig
        from model.scaling import ScalingConfig

        scaling = ScalingConfig(
            input_dim_x=dim_x,
            input_dim_y=dim_y,
            pseudo_sketch=self.pseudo_sketch,
            power=self.input_power,
            shrinkage=self.whiten_shrinkage,
        )
        comparable = scaling.comparable  # the fusion and category head need it
        if self.category_head and not comparable:
            print(
                f"note: sketch ({dim_x}-d) and photo ({dim_y}-d) features differ in size; "
                "no category head",
                file=sys.stderr,
            )
        iiae = IIAEConfig(
            input_dim_x=dim_x,
            input_dim_y=dim_y,
            latent_dim=self.latent_dim,
            num_classes=num_classes if self.w_cls > 0 else 0,
            input_dropout=self.input_dropout,
            beta=self.beta,
            lam=self.lam,
            w_rec=self.w_rec,
            w_cls=self.w_cls,
            anneal_steps=self.anneal_steps,
            decoder_hidden_dims=(128,) if self.decoder == "authors" else (128, 512),
            decoder_activation="relu" if self.decoder == "authors" else "leaky_relu",
            init=self.init,
        )
        retrieval = RetrievalConfig(
            fusion_weight=self.fusion_weight,
            fusion_dim=min(self.fusion_dim, dim_x) if self.standardize and comparable else 0,
            category_classes=num_classes if self.category_head and comparable else 0,
        )
        return ModelConfig(iiae=iiae, scaling=scaling, retrieval=retrieval)


def ignored_training_variables() -> list[str]:
    """``SBIR_TRAIN_*`` variables set in the environment: earlier versions read them as
    training settings; none is read now."""
    return sorted(name for name in os.environ if name.startswith("SBIR_TRAIN_"))


class BuilderSettings(BaseSettings):
    """The builder's runtime settings (``SBIR_CACHE_DIR``, ``SBIR_WORKERS``,
    ``SBIR_BATCH_SIZE``, ``SBIR_TORCH_THREADS``): where and how fast, not what is trained."""

    model_config = SettingsConfigDict(env_prefix="SBIR_")

    cache_dir: Path = Path.home() / ".cache" / "sketch-search"
    workers: int = Field(2, description="image decoding processes")
    batch_size: int = Field(32, description="images per backbone batch")
    torch_threads: int | None = Field(
        None, description="PyTorch CPU threads (default: all cores; 1 when sharing the CPU)"
    )

    def apply_torch_threads(self) -> None:
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
