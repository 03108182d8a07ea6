"""A training run: data root + class split -> features -> IIAE -> RUN_DIR, resumable."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from index_builder.training.category_head import choose_category_weight
from index_builder.training.config import BuilderSettings, TrainConfig
from index_builder.training.datasets.authors_features import is_authors_features
from index_builder.training.datasets.base import DatasetError
from index_builder.training.evaluate import validation_check
from index_builder.training.features import FeatureSet, default_device
from index_builder.training.heldout import split_heldout
from index_builder.training.sources import data_split, feature_sets
from index_builder.training.train import (
    ClassPairSampler,
    choose_fusion_weight,
    fit,
    make_optimizer,
    zero_shot_map,
)
from model.checkpoint import save_model
from model.iiae import IIAE
from model.retrieval import RetrievalHead, RetrievalModel, fusion_basis
from model.scaling import InputScaling


def pick_validation(train: list[str], n_val: int, seed: int) -> tuple[list[str], list[str]]:
    """Hold ``n_val`` training classes out (seeded) for early stopping: (fit, validation).

    At most a quarter of the training classes are held out (none when fewer than 4), so a
    recipe's count works on small data sets too; a reduced count is reported.
    """
    n = min(n_val, len(train) // 4)
    if n < n_val:
        print(
            f"note: {n_val} validation classes asked for; {len(train)} training classes "
            f"allow {n} (at most a quarter)",
            file=sys.stderr,
        )
    if n <= 0:
        return train, []
    order = np.random.default_rng(seed).permutation(len(train))
    val = sorted(train[i] for i in order[:n])
    return [c for c in train if c not in val], val


def build_model(
    cfg: TrainConfig, sk: FeatureSet, ph: FeatureSet, classes: list[str]
) -> RetrievalModel:
    """A fresh model for these features: the IIAE untrained, the input scaling (and the
    fusion's principal axes) fitted on them (all views) where ``cfg.standardize``."""
    torch.manual_seed(cfg.seed)
    d_x, d_y = sk.features.shape[-1], ph.features.shape[-1]
    shape = cfg.architecture(d_x, d_y, len(classes))
    iiae = IIAE(shape.iiae)
    # The category head is fitted after training; built here, its default initialisation
    # draws from the seeded stream just after the IIAE's, as every run so far has.
    head = RetrievalHead(shape.retrieval, shape.iiae.latent_dim, d_x)
    if not cfg.standardize:
        return RetrievalModel(InputScaling(shape.scaling), iiae, head)
    x = torch.from_numpy(np.array(sk.features, dtype=np.float32).reshape(-1, d_x))
    y = torch.from_numpy(np.array(ph.features, dtype=np.float32).reshape(-1, d_y))
    scaling = InputScaling.fitted_on(shape.scaling, x, y)
    if shape.retrieval.fusion_dim > 0:
        basis = fusion_basis(scaling, x, y, shape.retrieval.fusion_dim)
        head = RetrievalHead(head.cfg, head.latent_dim, d_x, basis, head.category_head)
    return RetrievalModel(scaling, iiae, head)


class _Checkpointer:
    """Logs, checkpoints and keeps the best model on the validation classes."""

    def __init__(
        self, run_dir: Path, cfg: TrainConfig, model: RetrievalModel, opt, sampler, val
    ) -> None:
        self.run_dir, self.cfg, self.model, self.opt, self.sampler = (
            run_dir,
            cfg,
            model,
            opt,
            sampler,
        )
        self.val = val  # (sketch FeatureSet, photo FeatureSet) or None
        self.best_map, self.best_step, self.best_state = -1.0, 0, None
        self.history: list[dict] = []

    def __call__(self, step: int, terms: dict[str, float]) -> None:
        if step % self.cfg.log_every == 0:
            with open(self.run_dir / "log.jsonl", "a") as log:
                log.write(json.dumps({"step": step, **terms}) + "\n")
        if self.val is not None and step % self.cfg.eval_every == 0:
            val_map = zero_shot_map(self.model, *self.val)
            self.history.append({"step": step, "val_map_all": val_map})
            if val_map > self.best_map:
                self.best_map, self.best_step = val_map, step
                self.best_state = copy.deepcopy(self.model.state_dict())
        if step % self.cfg.checkpoint_every == 0:
            self.save(step)

    def save(self, step: int) -> None:
        state = {
            "step": step,
            "config": self.cfg.model_dump(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "sampler_rng": self.sampler.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "best": (self.best_map, self.best_step, self.best_state),
            "history": self.history,
        }
        tmp = self.run_dir / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.run_dir / "checkpoint.pt")

    def restore(self) -> int:
        path = self.run_dir / "checkpoint.pt"
        if not path.exists():
            return 0
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["config"] != self.cfg.model_dump():
            raise ValueError(f"{path}: written with another configuration; use a new --out")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.best_map, self.best_step, self.best_state = state["best"]
        self.history = state["history"]
        return state["step"]


def train_run(
    data: Path,
    run_dir: Path,
    cfg: TrainConfig,
    train_classes: str | Path | None = None,
    test_classes: str | Path | None = None,
    settings: BuilderSettings | None = None,
    progress: bool = True,
) -> dict:
    """Train on ``data`` (its training classes) into ``run_dir``; re-running resumes."""
    data, train, test = data_split(data, train_classes, test_classes)
    if cfg.pseudo_sketch and is_authors_features(data):
        print(
            f"note: {data} holds features, not photos to draw pseudo-sketches of; training "
            "on the photo features alone",
            file=sys.stderr,
        )
        cfg = cfg.model_copy(update={"pseudo_sketch": False})
    fit_classes, val_classes = pick_validation(train, cfg.val_classes, cfg.seed)
    # Augmented views are a fixed pool (feature seed 0), shared by every training seed.
    sk, ph = feature_sets(
        data,
        train,
        cfg.backbone,
        cfg.backbone_weights,
        cfg.sketch_views,
        cfg.photo_views,
        settings,
        pseudo_sketch=cfg.pseudo_sketch,
    )
    # Held-out sketches leave here, before any fit (scaling, IIAE, early stopping, fusion,
    # category head) can see them.
    sk, heldout = split_heldout(sk, cfg.holdout_sketches)
    if emptied := sorted(set(train) - set(sk.labels)):
        raise DatasetError(
            f"{data}: holding out a share {cfg.holdout_sketches} of the sketches leaves none of "
            f"{', '.join(map(repr, emptied))}; pass --holdout-sketches 0 or add sketches"
        )
    sk_fit, ph_fit = sk.subset(set(fit_classes)), ph.subset(set(fit_classes))
    val = (sk.subset(set(val_classes)), ph.subset(set(val_classes))) if val_classes else None
    device = default_device()
    model = build_model(cfg, sk_fit, ph_fit, fit_classes).to(device)
    opt = make_optimizer(model, cfg)
    sampler = ClassPairSampler(sk_fit, ph_fit, fit_classes, cfg)
    steps = cfg.steps or int(cfg.epochs * sampler.steps_per_epoch())
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _Checkpointer(run_dir, cfg, model, opt, sampler, val)
    fit(
        model,
        sampler,
        opt,
        steps,
        ckpt.restore(),
        ckpt,
        progress,
        cfg.w_contrastive,
        cfg.contrastive_temperature,
    )
    ckpt.save(steps)
    if ckpt.best_state is not None:
        model.load_state_dict(ckpt.best_state)
    fusion, category = {}, {}
    if val and cfg.choose_fusion:
        model, fusion = choose_fusion_weight(model, *val)
    if model.head.category_head is not None:
        if val:
            model, category = choose_category_weight(model, (sk_fit, ph_fit), val, fit_classes)
        else:
            print(
                "note: no validation classes to choose the category head's share; "
                "left out of the embedding",
                file=sys.stderr,
            )
    info = {
        "recipe": cfg.recipe,
        "backbone": cfg.backbone,
        "feature_backbone": sk.backbone,
        "backbone_fingerprint": sk.backbone_fingerprint,
        "photo_backbone_fingerprint": ph.backbone_fingerprint,
        "preprocessing": sk.preprocessing.model_dump(),
        "data": str(data),
        "train_classes": fit_classes,
        "val_classes": val_classes,
        "test_classes": test,
        "holdout_sketches": cfg.holdout_sketches,
        "heldout_sketch_count": len(heldout.labels),
        "steps": steps,
        "selected_step": ckpt.best_step if val else steps,
        "val_history": ckpt.history,
        "fusion_val_map_all": {str(k): v for k, v in fusion.items()},
        "category_val_map_all": {str(k): v for k, v in category.items()},
        "validation": (
            validation_check(zero_shot_map(model, *val), (sk_fit, ph_fit), val) if val else None
        ),
        "config": cfg.model_dump(),
    }
    save_model(model, run_dir, info)
    return info
