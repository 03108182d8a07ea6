"""Typed configuration of the builder; every field is overridable by env (SBIR_...) and CLI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from index_builder.training.recipes import DEFAULT_RECIPE, RECIPES, recipe_values

if TYPE_CHECKING:
    from model.iiae import IIAEConfig


class _RecipeSource(PydanticBaseSettingsSource):
    """The named recipe's values, below explicit arguments and environment variables."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        init: PydanticBaseSettingsSource,
        env: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self.init, self.env = init, env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ answers for every field at once

    def __call__(self) -> dict[str, Any]:
        given = self.init.init_kwargs if isinstance(self.init, InitSettingsSource) else {}
        name = given.get("recipe") or self.env().get("recipe") or DEFAULT_RECIPE
        return recipe_values(str(name))


class TrainConfig(BaseSettings):
    """Training settings: field defaults are the authors' hyperparameters (docs/iiae.md
    section 3); a named recipe (``index_builder/training/recipes.py``) sets values over them, and
    explicit arguments or ``SBIR_TRAIN_*`` variables override the recipe."""

    model_config = SettingsConfigDict(env_prefix="SBIR_TRAIN_")

    recipe: str = Field(
        DEFAULT_RECIPE, description=f"named recipe: {', '.join(RECIPES)}; flags override it"
    )

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
        True, description="z-score inputs and reconstruction targets (False: raw, as the authors)"
    )
    decoder: Literal["deep", "authors"] = Field(
        "deep", description="deep: 128-512 LeakyReLU; authors: 128 ReLU, linear out"
    )
    init: Literal["torch", "glorot"] = Field(
        "torch", description="weights: PyTorch defaults, or the authors' Glorot / N(1, .02) BN"
    )
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
    fusion_dim: int = Field(
        128, description="principal axes of the standardised features kept for the fusion"
    )
    choose_fusion: bool = Field(
        False, description="choose fusion_weight on the validation classes (0, .25, .5, .75)"
    )
    category_head: bool = Field(
        False,
        description="add the known-category head after training, its share chosen on "
        "held-out sketches of training classes and on the validation classes",
    )
    pseudo_sketch: bool = Field(
        False, description="photos are seen as themselves and as pseudo-sketches (edge maps)"
    )
    input_power: float = Field(
        1.0, description="signed power of the input features before standardising (0.5: root)"
    )
    whiten_shrinkage: float = Field(
        0.0, description="> 0: whiten the inputs, shrunk by this x the mean variance; 0: z-score"
    )
    val_classes: int = Field(0, description="training classes held out for early stopping")
    eval_every: int = 200
    checkpoint_every: int = 500
    log_every: int = 50

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        recipe = _RecipeSource(settings_cls, init_settings, env_settings)
        return init_settings, env_settings, dotenv_settings, file_secret_settings, recipe

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, name: str) -> str:
        recipe_values(name)  # raises naming the known recipes
        return name

    def iiae_config(self, dim_x: int, dim_y: int, num_classes: int) -> IIAEConfig:
        from model.iiae import IIAEConfig  # torch: only where a model is built

        sizes = {"input_dim_x": dim_x, "input_dim_y": dim_y, "pseudo_sketch": self.pseudo_sketch}
        fusable = IIAEConfig(**sizes).fusable  # the fusion and category head need it
        if self.category_head and not fusable:
            print(
                f"note: sketch ({dim_x}-d) and photo ({dim_y}-d) features differ in size; "
                "no category head",
                file=sys.stderr,
            )
        return IIAEConfig(
            **sizes,
            latent_dim=self.latent_dim,
            num_classes=num_classes if self.w_cls > 0 else 0,
            category_classes=num_classes if self.category_head and fusable else 0,
            input_dropout=self.input_dropout,
            beta=self.beta,
            lam=self.lam,
            w_rec=self.w_rec,
            w_cls=self.w_cls,
            anneal_steps=self.anneal_steps,
            fusion_weight=self.fusion_weight,
            fusion_dim=min(self.fusion_dim, dim_x) if self.standardize and fusable else 0,
            input_power=self.input_power,
            whiten_shrinkage=self.whiten_shrinkage,
            decoder_hidden_dims=(128,) if self.decoder == "authors" else (128, 512),
            decoder_activation="relu" if self.decoder == "authors" else "leaky_relu",
            init=self.init,
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
