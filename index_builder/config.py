"""Typed configuration of the builder; every field is overridable by env (SBIR_...) and CLI."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from model.iiae import IIAEConfig


class TrainConfig(BaseSettings):
    """The authors' ZS-SBIR recipe by default (docs/iiae.md section 3)."""

    model_config = SettingsConfigDict(env_prefix="SBIR_TRAIN_")

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
    standardize: bool = Field(True, description="z-score features with training statistics")
    sketch_views: int = Field(1, description="feature views per sketch (1 = no augmentation)")
    photo_views: int = Field(1, description="feature views per photo (1 = no augmentation)")
    latent_dim: int = 64
    beta: float = 0.5
    lam: float = 1.0
    w_rec: float = 10.0
    w_cls: float = Field(0.0, description="class head weight (0 = no head, as the authors)")
    anneal_steps: float = 2000.0
    input_dropout: float = 0.0
    fusion_weight: float = Field(
        0.0, description="share of the standardised features in the retrieval embedding"
    )
    choose_fusion: bool = Field(
        False, description="choose fusion_weight on the validation classes (0, .25, .5, .75)"
    )
    val_classes: int = Field(0, description="training classes held out for early stopping")
    eval_every: int = 200
    checkpoint_every: int = 500
    log_every: int = 50

    def iiae_config(self, dim_x: int, dim_y: int, num_classes: int) -> IIAEConfig:
        from model.iiae import IIAEConfig  # torch: only where a model is built

        return IIAEConfig(
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
            fusion_weight=self.fusion_weight,
        )


class BuilderSettings(BaseSettings):
    """Where the builder keeps its caches."""

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
