"""Training recipes by name: each is a set of TrainConfig field values over its defaults.

``train --recipe NAME`` (or ``SBIR_TRAIN_RECIPE``) picks one; explicit flags and environment
variables override the recipe's values. Changing a recipe is a one-line edit here.
"""

from __future__ import annotations

DEFAULT_RECIPE = "recommended"

RECIPES: dict[str, dict[str, object]] = {
    # gr8joo/IIAE exactly: raw features in and as reconstruction targets, their decoder
    # ([z^s, z^excl] -> 128 -> BatchNorm -> ReLU -> d_in), Glorot-uniform weights, zero
    # biases, BatchNorm scale ~ N(1, 0.02); no class head, no early stopping, 9 epochs.
    "paper": {
        "standardize": False,
        "decoder": "authors",
        "init": "glorot",
        "w_cls": 0.0,
        "val_classes": 0,
    },
    # What generalises best on the real thin data here (BENCHMARKS.md section 1): photos read
    # with their pseudo-sketches (edge maps, model/pseudo_sketch.py), the class head, early
    # stopping on held-out training classes, 64 classes a step, inputs square-rooted and
    # whitened (shrinkage 30), the retrieval embedding fused with the whole whitened
    # features at the weight the validation classes pick, and the known-category head's
    # posteriors at the share held-out sketches of training and validation classes pick.
    "recommended": {
        "pseudo_sketch": True,
        "input_power": 0.5,
        "whiten_shrinkage": 30.0,
        "fusion_dim": 0,
        "w_cls": 1.0,
        "steps": 3000,
        "val_classes": 20,
        "eval_every": 200,
        "batch_classes": 64,
        "choose_fusion": True,
        "category_head": True,
    },
}


def recipe_values(name: str) -> dict[str, object]:
    """The field values of recipe ``name``; ValueError naming the known recipes."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return {**RECIPES[name], "recipe": name}


def input_scaling(name: str = DEFAULT_RECIPE) -> tuple[float, float]:
    """(input_power, whiten_shrinkage) of recipe ``name``, for training-free comparisons."""
    values = recipe_values(name)
    return float(values.get("input_power", 1.0)), float(values.get("whiten_shrinkage", 0.0))
