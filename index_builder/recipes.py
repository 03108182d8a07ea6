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
    # stopping on held-out training classes, 64 classes a step, and the retrieval embedding
    # fused with the standardised features at the weight the validation classes pick.
    "recommended": {
        "pseudo_sketch": True,
        "w_cls": 1.0,
        "steps": 3000,
        "val_classes": 20,
        "eval_every": 200,
        "batch_classes": 64,
        "choose_fusion": True,
    },
}


def recipe_values(name: str) -> dict[str, object]:
    """The field values of recipe ``name``; ValueError naming the known recipes."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return {**RECIPES[name], "recipe": name}
