"""Training recipes by name, each a complete ``TrainConfig``.

``train --recipe NAME`` picks one (default ``recommended``); explicit flags override its
values, and ``run.json`` records the complete result. ``TrainConfig()`` is the ``paper``
recipe: its defaults are the authors' settings.
"""

from __future__ import annotations

from index_builder.training.config import TrainConfig

DEFAULT_RECIPE = "recommended"

RECIPES: dict[str, TrainConfig] = {
    # gr8joo/IIAE exactly: raw features in and as reconstruction targets, their decoder
    # ([z^s, z^excl] -> 128 -> BatchNorm -> ReLU -> d_in), Glorot-uniform weights, zero
    # biases, BatchNorm scale ~ N(1, 0.02); no class head, no early stopping, 9 epochs.
    "paper": TrainConfig(recipe="paper"),
    # What generalises best on the real thin data here (BENCHMARKS.md section 1; the parts
    # are tabled in docs/training.md).
    "recommended": TrainConfig(
        recipe="recommended",
        pseudo_sketch=True,
        standardize=True,
        input_power=0.5,
        whiten_shrinkage=30.0,
        decoder="deep",
        init="torch",
        w_cls=1.0,
        steps=3000,
        val_classes=20,
        batch_classes=64,
        choose_fusion=True,
        category_head=True,
        holdout_sketches=0.2,
    ),
}


def recipe(name: str = DEFAULT_RECIPE, **overrides: object) -> TrainConfig:
    """Recipe ``name`` with ``overrides`` (checked as the fields are); ValueError naming the
    known recipes for an unknown name."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return TrainConfig.model_validate({**RECIPES[name].model_dump(), **overrides})


def input_scaling(name: str = DEFAULT_RECIPE) -> tuple[float, float]:
    """(input_power, whiten_shrinkage) of recipe ``name``, for training-free comparisons."""
    cfg = recipe(name)
    return cfg.input_power, cfg.whiten_shrinkage
