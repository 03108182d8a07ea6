"""The IIAE model and objective against docs/iiae.md: KLs, loss terms, shapes, modes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from index_builder.training.config import TrainConfig
from index_builder.training.features import FeatureSet
from index_builder.training.recipes import RECIPES, recipe
from index_builder.training.run import build_model
from index_builder.training.train import (
    ClassPairSampler,
    PairBatch,
    contrastive_loss,
    fit,
    make_optimizer,
)
from model.iiae import (
    IIAE,
    LOGVAR_MAX,
    Gaussian,
    GaussianHead,
    IIAEConfig,
    IIAEOutput,
    iiae_loss,
    kl_annealing,
    kl_gaussians,
    kl_standard_normal,
)
from model.preprocess import Preprocessing
from model.retrieval import RetrievalModel

# this project's first decoder (two hidden LeakyReLU layers) and PyTorch's initialisation
DEEP = {"decoder_hidden_dims": (128, 512), "decoder_activation": "leaky_relu", "init": "torch"}
SMALL = {
    "latent_dim": 8,
    "hidden_dims": (32, 16),
    "joint_hidden_dim": 32,
    **DEEP,
    "decoder_hidden_dims": (16, 32),
}


# --- (a) closed-form KLs against Monte Carlo ---------------------------------------------


def _log_normal(z: torch.Tensor, g: Gaussian) -> torch.Tensor:
    """log N(z; mean, exp(logvar)) summed over the last dimension, written out by hand."""
    var = torch.exp(g.logvar)
    per_dim = -0.5 * (math.log(2 * math.pi) + g.logvar + (z - g.mean) ** 2 / var)
    return per_dim.sum(dim=-1)


def _mc_kl(q: Gaussian, p: Gaussian, n: int, gen: torch.Generator) -> tuple[np.ndarray, ...]:
    """Monte Carlo E_q[log q - log p] per batch row, and its standard error."""
    eps = torch.randn((n, *q.mean.shape), generator=gen, dtype=torch.float64)
    z = q.mean + eps * torch.exp(0.5 * q.logvar)
    log_ratio = _log_normal(z, q) - _log_normal(z, p)
    return log_ratio.mean(0).numpy(), (log_ratio.std(0) / math.sqrt(n)).numpy()


def _random_gaussian(gen: torch.Generator, batch: int = 4, dim: int = 3) -> Gaussian:
    mean = torch.randn((batch, dim), generator=gen, dtype=torch.float64)
    logvar = 2 * torch.rand((batch, dim), generator=gen, dtype=torch.float64) - 1
    return Gaussian(mean, logvar)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_gaussians_matches_monte_carlo(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    q, p = _random_gaussian(gen), _random_gaussian(gen)
    mc, se = _mc_kl(q, p, 200_000, gen)
    closed = kl_gaussians(q, p).numpy()
    assert closed.shape == (4,)
    np.testing.assert_array_less(np.abs(closed - mc), 5 * se + 1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_standard_normal_matches_monte_carlo(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    q = _random_gaussian(gen)
    prior = Gaussian(torch.zeros_like(q.mean), torch.zeros_like(q.logvar))
    mc, se = _mc_kl(q, prior, 200_000, gen)
    closed = kl_standard_normal(q).numpy()
    np.testing.assert_array_less(np.abs(closed - mc), 5 * se + 1e-6)
    np.testing.assert_allclose(closed, kl_gaussians(q, prior).numpy(), rtol=1e-12)


def test_kl_of_identical_gaussians_is_zero() -> None:
    g = _random_gaussian(torch.Generator().manual_seed(3))
    np.testing.assert_allclose(kl_gaussians(g, g).numpy(), 0.0, atol=1e-12)


# --- (b) each loss term and weight against a hand-computed case --------------------------

# latent_dim 2, batch 2, x of 3 dimensions, y of 2; plain Python numbers
Q_ZX = ([[0.5, -1.0], [0.0, 2.0]], [[0.0, -0.5], [1.0, 0.2]])  # (means, logvars)
Q_ZY = ([[1.0, 0.0], [-0.5, 0.5]], [[-1.0, 0.0], [0.3, -0.3]])
Q_ZS = ([[0.2, 0.4], [-1.0, 1.5]], [[-0.2, 0.1], [0.0, -1.0]])
R_X = ([[0.0, 0.5], [-0.8, 1.0]], [[0.0, 0.0], [0.5, -0.5]])
R_Y = ([[0.3, 0.3], [-1.2, 1.4]], [[-0.4, 0.2], [0.1, -0.8]])
X_HAT, X = [[0.1, 0.2, 0.3], [1.0, -1.0, 0.0]], [[0.0, 0.5, 0.3], [0.5, -1.0, 1.0]]
Y_HAT, Y = [[2.0, 0.0], [0.0, 1.0]], [[1.5, 0.5], [0.0, 0.0]]
LOGITS, LABELS = [[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]], [0, 2]


def _gaussian(pair: tuple[list[list[float]], list[list[float]]]) -> Gaussian:
    return Gaussian(
        torch.tensor(pair[0], dtype=torch.float64), torch.tensor(pair[1], dtype=torch.float64)
    )


def _hand_output(with_logits: bool = True) -> IIAEOutput:
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return IIAEOutput(
        _gaussian(Q_ZX),
        _gaussian(Q_ZY),
        _gaussian(Q_ZS),
        _gaussian(R_X),
        _gaussian(R_Y),
        x_hat=t(X_HAT),
        y_hat=t(Y_HAT),
        x_target=t(X),
        y_target=t(Y),
        logits=t(LOGITS) if with_logits else None,
    )


def _mse(a: list[list[float]], b: list[list[float]]) -> float:
    diffs = [(u - v) ** 2 for ra, rb in zip(a, b, strict=True) for u, v in zip(ra, rb, strict=True)]
    return sum(diffs) / len(diffs)


def _kl_prior(g: tuple[list[list[float]], list[list[float]]]) -> float:
    rows = [
        sum(0.5 * (m * m + math.exp(lv) - 1 - lv) for m, lv in zip(ms, lvs, strict=True))
        for ms, lvs in zip(*g, strict=True)
    ]
    return sum(rows) / len(rows)


def _kl_pair(q: tuple[list[list[float]], ...], p: tuple[list[list[float]], ...]) -> float:
    rows = []
    for mq, lq, mp, lp in zip(q[0], q[1], p[0], p[1], strict=True):
        rows.append(
            sum(
                0.5 * (math.exp(a - b) + (u - v) ** 2 / math.exp(b) - 1 - (a - b))
                for u, a, v, b in zip(mq, lq, mp, lp, strict=True)
            )
        )
    return sum(rows) / len(rows)


def _cross_entropy(logits: list[list[float]], labels: list[int]) -> float:
    losses = [
        math.log(sum(math.exp(v) for v in row)) - row[c]
        for row, c in zip(logits, labels, strict=True)
    ]
    return sum(losses) / len(losses)


def _hand_terms() -> dict[str, float]:
    return {
        "rec_x": _mse(X_HAT, X),
        "rec_y": _mse(Y_HAT, Y),
        "kl_x": _kl_prior(Q_ZX),
        "kl_y": _kl_prior(Q_ZY),
        "kl_s": _kl_prior(Q_ZS),
        "klr_x": _kl_pair(Q_ZS, R_X),
        "klr_y": _kl_pair(Q_ZS, R_Y),
        "cls": _cross_entropy(LOGITS, LABELS),
    }


def _hand_total(
    h: dict[str, float], beta: float, lam: float, w_rec: float, w_cls: float, step: int
) -> float:
    a = 1 - math.exp(-step / 2000)
    return (
        (beta + lam) * w_rec * (h["rec_x"] + h["rec_y"])
        + a * (beta + lam) * (h["kl_x"] + h["kl_y"])
        + a * beta * h["kl_s"]
        + lam * (h["klr_x"] + h["klr_y"])
        + w_cls * h["cls"]
    )


def _module_total(step: int, **weights: float) -> float:
    cfg = IIAEConfig(latent_dim=2, input_dim_x=3, input_dim_y=2, num_classes=3, **weights)
    return float(iiae_loss(_hand_output(), cfg, step, torch.tensor(LABELS))["total"])


def test_loss_terms_match_hand_computation() -> None:
    cfg = IIAEConfig(latent_dim=2, input_dim_x=3, input_dim_y=2, num_classes=3, w_cls=0.7)
    terms = iiae_loss(_hand_output(), cfg, 1000, torch.tensor(LABELS))
    hand = _hand_terms()
    for name, value in hand.items():
        assert float(terms[name]) == pytest.approx(value, rel=1e-12), name
    expected = _hand_total(hand, beta=0.5, lam=1.0, w_rec=10.0, w_cls=0.7, step=1000)
    assert float(terms["total"]) == pytest.approx(expected, rel=1e-12)


def test_default_weights_are_the_papers() -> None:
    cfg = IIAEConfig()
    weights = (cfg.beta, cfg.lam, cfg.w_rec, cfg.w_cls, cfg.anneal_steps, cfg.latent_dim)
    assert weights == (0.5, 1.0, 10.0, 0.0, 2000.0, 64)


@pytest.mark.parametrize(
    ("weight", "value"), [("beta", 0.9), ("lam", 2.5), ("w_rec", 3.0), ("w_cls", 1.7)]
)
@pytest.mark.parametrize("step", [0, 150, 5000])
def test_each_weight_moves_the_total_as_the_formula(weight: str, value: float, step: int) -> None:
    base = {"beta": 0.5, "lam": 1.0, "w_rec": 10.0, "w_cls": 0.3}
    changed = {**base, weight: value}
    hand = _hand_terms()
    moved = _module_total(step, **changed) - _module_total(step, **base)
    expected = _hand_total(hand, **changed, step=step) - _hand_total(hand, **base, step=step)
    assert moved == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert moved != 0


def test_kl_annealing_weights_only_the_prior_kls() -> None:
    hand = _hand_terms()
    at_zero = _module_total(0, w_cls=0.0)
    assert at_zero == pytest.approx(
        1.5 * 10 * (hand["rec_x"] + hand["rec_y"]) + hand["klr_x"] + hand["klr_y"], rel=1e-12
    )
    late = _module_total(10**7, w_cls=0.0)
    prior = 1.5 * (hand["kl_x"] + hand["kl_y"]) + 0.5 * hand["kl_s"]
    assert late - at_zero == pytest.approx(prior, rel=1e-9)


# --- (c) shapes, (d) the log-variance clamp, (e) layer settings ---------------------------


def test_output_shapes_with_different_input_dims() -> None:
    torch.manual_seed(0)
    model = IIAE(IIAEConfig(input_dim_x=512, input_dim_y=1280))
    x, y = torch.randn(5, 512), torch.randn(5, 1280)
    out = model(x, y)
    for g in (out.q_zx, out.q_zy, out.q_zs, out.r_x, out.r_y):
        assert g.mean.shape == g.logvar.shape == (5, 64)
    assert out.x_hat.shape == (5, 512) and out.y_hat.shape == (5, 1280)
    assert out.logits is None
    model.eval()
    for fn, inp in (
        (model.embed_sketch, x),
        (model.exclusive_sketch, x),
        (model.embed_photo, y),
        (model.exclusive_photo, y),
    ):
        assert fn(inp).shape == (5, 64)


def _linears(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_layer_sizes_follow_the_spec() -> None:
    model = IIAE(IIAEConfig(input_dim_x=512, input_dim_y=1280))
    assert _linears(model.enc_x) == _linears(model.shared_x) == [(512, 512), (512, 256), (256, 128)]
    assert (
        _linears(model.enc_y) == _linears(model.shared_y) == [(1280, 512), (512, 256), (256, 128)]
    )
    assert _linears(model.joint) == [(512 + 512, 512), (512, 128)]
    assert _linears(model.dec_x) == [(128, 128), (128, 512)]  # the authors' decoder
    assert _linears(model.dec_y) == [(128, 128), (128, 1280)]
    deep = IIAE(IIAEConfig(input_dim_x=512, input_dim_y=1280, **DEEP))
    assert _linears(deep.dec_x) == [(128, 128), (128, 512), (512, 512)]
    assert _linears(deep.dec_y) == [(128, 128), (128, 512), (512, 1280)]


def test_joint_encoder_reads_the_first_hidden_layers_of_r() -> None:
    torch.manual_seed(0)
    model = IIAE(IIAEConfig(input_dim_x=12, input_dim_y=20, **SMALL)).eval()
    x, y = torch.randn(4, 12), torch.randn(4, 20)
    hx, hy = model.shared_x.first(x), model.shared_y.first(y)
    assert hx.shape == hy.shape == (4, 32)
    expected = model.joint(torch.cat([hx, hy], dim=-1))
    out = model(x, y)
    torch.testing.assert_close(out.q_zs.mean, expected.mean)
    torch.testing.assert_close(out.q_zs.logvar, expected.logvar)


def test_logvar_clamped_at_log_1e4() -> None:
    assert pytest.approx(9.2103, abs=1e-4) == LOGVAR_MAX
    head = GaussianHead(3, 2)
    nn.init.zeros_(head.linear.weight)
    with torch.no_grad():
        head.linear.bias.copy_(torch.tensor([50.0, -50.0, 50.0, -50.0]))
    with torch.no_grad():
        g = head(torch.randn(4, 3))
    assert torch.all(g.mean == torch.tensor([50.0, -50.0]))
    assert torch.all(g.logvar[:, 0] == LOGVAR_MAX) and torch.all(g.logvar[:, 1] == -50.0)
    assert float(torch.exp(g.logvar).max()) == pytest.approx(1e4, rel=1e-5)


def test_logvar_clamped_in_every_head_of_the_model() -> None:
    model = IIAE(IIAEConfig(input_dim_x=6, input_dim_y=6, **SMALL))
    for head in (m for m in model.modules() if isinstance(m, GaussianHead)):
        with torch.no_grad():
            head.linear.bias[SMALL["latent_dim"] :] = 1e3
    with torch.no_grad():
        out = model(torch.randn(4, 6), torch.randn(4, 6))
    for g in (out.q_zx, out.q_zy, out.q_zs, out.r_x, out.r_y):
        assert float(g.logvar.max()) == pytest.approx(LOGVAR_MAX)


def test_batchnorm_momentum_and_leaky_slope() -> None:
    model = IIAE(IIAEConfig(input_dim_x=8, input_dim_y=8, **DEEP))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    relus = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    # 4 encoders x 2 layers, the joint encoder 1, 2 decoders x 2
    assert len(norms) == len(relus) == 4 * 2 + 1 + 2 * 2
    assert all(m.momentum == 0.1 for m in norms)
    assert all(m.negative_slope == 0.2 for m in relus)


def test_hidden_layers_are_linear_batchnorm_leakyrelu() -> None:
    model = IIAE(IIAEConfig(input_dim_x=8, input_dim_y=8, **DEEP))
    for seq in (model.enc_x.first, model.enc_x.rest, model.joint[0], model.dec_y.hidden):
        kinds = [type(m) for m in seq]
        assert kinds == [nn.Linear, nn.BatchNorm1d, nn.LeakyReLU] * (len(kinds) // 3)


# --- (f) seeded determinism, (g) train vs eval mode ---------------------------------------


def _toy_sampler(seed: int, batch: int = 32, d_x: int = 10, d_y: int = 14):
    """Paired toy data: a 3-d shared factor and 2-d exclusive factors, linearly mixed."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(1234)
    a_s, a_x = mix.normal(size=(3, d_x)), mix.normal(size=(2, d_x))
    b_s, b_y = mix.normal(size=(3, d_y)), mix.normal(size=(2, d_y))

    def sample() -> PairBatch:
        s = rng.normal(size=(batch, 3))
        x = s @ a_s + rng.normal(size=(batch, 2)) @ a_x
        y = np.tanh(s @ b_s) + rng.normal(size=(batch, 2)) @ b_y
        labels = (s[:, 0] > 0).astype(np.int64)
        as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        return PairBatch(as_tensor(x), as_tensor(y), torch.from_numpy(labels))

    return sample


def _train(seed: int, steps: int, **cfg: float) -> tuple[list[float], RetrievalModel]:
    torch.manual_seed(seed)
    model = RetrievalModel.plain(IIAE(IIAEConfig(input_dim_x=10, input_dim_y=14, **SMALL, **cfg)))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.999))
    losses: list[float] = []
    fit(
        model,
        _toy_sampler(seed),
        opt,
        steps,
        on_step=lambda _, t: losses.append(t["total"]),
        progress=False,
    )
    return losses, model


def test_seeded_training_is_deterministic() -> None:
    losses_a, model_a = _train(seed=7, steps=5)
    losses_b, model_b = _train(seed=7, steps=5)
    losses_c, _ = _train(seed=8, steps=5)
    assert len(losses_a) == 5 and losses_a == losses_b
    assert losses_a != losses_c
    state_b = model_b.state_dict()
    for name, value in model_a.state_dict().items():
        assert torch.equal(value, state_b[name]), name


def test_eval_mode_is_deterministic_and_uses_means() -> None:
    _, model = _train(seed=0, steps=3)
    model.eval()
    batch = _toy_sampler(1)()
    torch.testing.assert_close(
        model.embed_sketch(batch.x), model.embed_sketch(batch.x), rtol=0, atol=0
    )
    torch.testing.assert_close(
        model.embed_photo(batch.y), model.embed_photo(batch.y), rtol=0, atol=0
    )
    iiae = model.iiae
    out = iiae(batch.x, batch.y)
    torch.testing.assert_close(out.x_hat, iiae.dec_x(out.q_zs.mean, out.q_zx.mean))
    torch.testing.assert_close(out.y_hat, iiae.dec_y(out.q_zs.mean, out.q_zy.mean))
    torch.testing.assert_close(model.embed_sketch(batch.x), out.r_x.mean)
    torch.testing.assert_close(model.embed_photo(batch.y), out.r_y.mean)
    torch.testing.assert_close(iiae.exclusive_sketch(batch.x), out.q_zx.mean)
    torch.testing.assert_close(iiae.exclusive_photo(batch.y), out.q_zy.mean)


def test_training_mode_samples_the_latents() -> None:
    torch.manual_seed(0)
    model = IIAE(IIAEConfig(input_dim_x=10, input_dim_y=14, **SMALL)).train()
    batch = _toy_sampler(2)()
    first, second = model(batch.x, batch.y), model(batch.x, batch.y)
    torch.testing.assert_close(first.q_zs.mean, second.q_zs.mean)  # same posteriors...
    assert not torch.allclose(first.x_hat, second.x_hat)  # ...different samples
    assert not torch.allclose(first.y_hat, second.y_hat)


# --- (h) the class head, (i) training reduces the loss -----------------------------------


def test_class_head_only_with_classes() -> None:
    batch = _toy_sampler(3)()
    plain = IIAE(IIAEConfig(input_dim_x=10, input_dim_y=14, **SMALL))
    assert plain.class_head is None
    out = plain(batch.x, batch.y)
    assert out.logits is None
    assert "cls" not in iiae_loss(out, plain.cfg, 10, batch.labels)

    headed = IIAE(IIAEConfig(input_dim_x=10, input_dim_y=14, num_classes=2, **SMALL))
    assert isinstance(headed.class_head, nn.Linear)
    assert (headed.class_head.in_features, headed.class_head.out_features) == (8, 2)
    assert headed(batch.x, batch.y).logits.shape == (32, 2)


def test_cross_entropy_enters_with_w_cls() -> None:
    torch.manual_seed(0)
    model = IIAE(IIAEConfig(input_dim_x=10, input_dim_y=14, num_classes=2, **SMALL)).eval()
    batch = _toy_sampler(4)()
    out = model(batch.x, batch.y)
    off = iiae_loss(out, model.cfg, 100, batch.labels)
    on = iiae_loss(out, model.cfg.model_copy(update={"w_cls": 2.5}), 100, batch.labels)
    expected_ce = torch.nn.functional.cross_entropy(out.logits, batch.labels)
    torch.testing.assert_close(on["cls"], expected_ce)
    torch.testing.assert_close(on["total"] - off["total"], 2.5 * expected_ce)


def test_fit_reduces_the_loss_on_a_toy_problem() -> None:
    losses, _ = _train(seed=0, steps=300)
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert np.all(np.isfinite(losses))
    assert last < 0.5 * first, (first, last)


# --- (h) recipes by name; the paper recipe as the authors' code -----------------------------


def test_the_defaults_are_the_paper_recipe_and_the_default_recipe_is_recommended() -> None:
    paper = TrainConfig()
    assert paper == RECIPES["paper"].model_copy(update={"recipe": "paper"}) == recipe("paper")
    assert (paper.standardize, paper.decoder, paper.init) == (False, "authors", "glorot")
    assert (paper.w_cls, paper.val_classes, paper.steps, paper.epochs) == (0.0, 0, None, 9.0)
    assert (paper.lr, paper.beta1, paper.beta2, paper.weight_decay) == (2e-4, 0.5, 0.999, 0.0)
    assert (paper.beta, paper.lam, paper.w_rec, paper.anneal_steps) == (0.5, 1.0, 10.0, 2000.0)
    assert (paper.batch_classes, paper.pairs_per_class, paper.latent_dim) == (None, 1, 64)
    assert (paper.choose_fusion, paper.fusion_weight, paper.category_head) == (False, 0.0, False)
    assert (paper.pseudo_sketch, paper.input_power, paper.whiten_shrinkage) == (False, 1.0, 0.0)
    rec = recipe()
    assert rec.recipe == "recommended"
    assert (rec.w_cls, rec.steps, rec.val_classes, rec.eval_every) == (1.0, 3000, 20, 200)
    assert (rec.batch_classes, rec.choose_fusion, rec.fusion_weight) == (64, True, 0.0)
    assert (rec.standardize, rec.decoder, rec.init) == (True, "deep", "torch")
    assert (rec.pseudo_sketch, rec.input_power, rec.whiten_shrinkage) == (True, 0.5, 30.0)


def test_overrides_beat_the_recipe_and_the_environment_is_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert recipe("paper", w_cls=2.0).w_cls == 2.0
    assert recipe("paper", w_cls=2.0).recipe == "paper"
    monkeypatch.setenv("SBIR_TRAIN_RECIPE", "paper")
    monkeypatch.setenv("SBIR_TRAIN_W_CLS", "3")
    assert recipe().w_cls == 1.0 and TrainConfig().w_cls == 0.0
    with pytest.raises(ValueError, match="lr"):
        recipe("paper", lr="fast")
    with pytest.raises(ValueError, match="w_clss"):
        recipe("paper", w_clss=1.0)  # a typo is refused, not ignored
    with pytest.raises(ValueError, match="frozen"):
        recipe().w_cls = 0.0  # type: ignore[misc]


def test_unknown_recipe_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown recipe 'papr'.*paper, recommended"):
        recipe("papr")


def _paper_model(d_x: int = 300, d_y: int = 200) -> IIAE:
    torch.manual_seed(0)
    return IIAE(TrainConfig().architecture(d_x, d_y, 0).iiae)


def test_paper_decoder_is_one_hidden_relu_layer_with_linear_out() -> None:
    model = _paper_model(512, 300)
    assert _linears(model.dec_x) == [(128, 128), (128, 512)]
    assert _linears(model.dec_y) == [(128, 128), (128, 300)]
    assert [type(m) for m in model.dec_x.hidden] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert isinstance(model.dec_x.out, nn.Linear)  # no activation after it
    model.eval()
    z = torch.randn(3, 64)
    h = model.dec_x.hidden[0](torch.cat([z, -z], dim=-1))
    expected = model.dec_x.out(torch.relu(model.dec_x.hidden[1](h)))
    torch.testing.assert_close(model.dec_x(z, -z), expected)
    # the encoders are unchanged: LeakyReLU 0.2
    assert [type(m) for m in model.enc_x.first] == [nn.Linear, nn.BatchNorm1d, nn.LeakyReLU]


def test_paper_initialisation_is_glorot_zero_bias_bn_near_one() -> None:
    model = _paper_model()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            w = m.weight.detach()
            assert float(w.abs().max()) <= bound
            assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)
            assert torch.all(m.bias == 0)
    gammas = torch.cat(
        [m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    )
    assert float(gammas.mean()) == pytest.approx(1.0, abs=0.005)
    assert float(gammas.std()) == pytest.approx(0.02, rel=0.1)
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    torch_default = IIAE(recipe().architecture(300, 200, 0).iiae)
    assert any(
        float(m.bias.detach().abs().max()) > 0
        for m in torch_default.modules()
        if isinstance(m, nn.Linear)
    )


def _feature_set(values: np.ndarray, labels: list[str]) -> FeatureSet:
    prep = Preprocessing(image_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return FeatureSet(values[:, None, :].astype(np.float32), labels, labels, "toy", prep)


def test_paper_inputs_and_targets_are_the_raw_features() -> None:
    sk = _feature_set(np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]]), ["a", "a", "b"])
    ph = _feature_set(np.array([[2.0, -4.0], [4.0, 8.0], [0.0, 2.0]]), ["a", "b", "b"])
    x, y = torch.tensor([[1.0, 10.0]]).repeat(2, 1), torch.tensor([[2.0, -4.0]]).repeat(2, 1)
    paper = build_model(TrainConfig(), sk, ph, ["a", "b"])
    assert torch.equal(paper.scaling.sketch(x), x) and torch.equal(paper.scaling.photo(y), y)
    # the z-score (the recommended recipe's rooted whitening: test_standardize.py)
    zscored = recipe(input_power=1.0, whiten_shrinkage=0.0, pseudo_sketch=False)
    scaled = build_model(zscored, sk, ph, ["a", "b"]).scaling.sketch(x)  # mean (3, 20), std (2, 10)
    torch.testing.assert_close(scaled, torch.tensor([[-1.0, -1.0]]).repeat(2, 1))


def test_class_paired_sampler_takes_one_pair_of_every_class_per_step() -> None:
    counts = {"a": 3, "b": 5, "c": 7}
    labels = [c for c, n in counts.items() for _ in range(n)]
    # feature value = 100 * class index + row, so each drawn row names its class
    codes = np.array([100 * "abc".index(c) + i for i, c in enumerate(labels)], dtype=float)
    sk = _feature_set(np.stack([codes, codes], 1), labels)
    ph_labels = ["a", "a", "b", "c", "c"]
    ph_codes = np.array([100 * "abc".index(c) for c in ph_labels], dtype=float)
    ph = _feature_set(np.stack([ph_codes, ph_codes], 1), ph_labels)
    sampler = ClassPairSampler(sk, ph, ["a", "b", "c"], TrainConfig())
    assert sampler.steps_per_epoch() == 15 // 3  # training sketches // batch (one per class)
    for _ in range(20):
        batch = sampler()
        assert sorted(batch.labels.tolist()) == [0, 1, 2]
        assert torch.equal(batch.x[:, 0] // 100, batch.labels.float())
        assert torch.equal(batch.y[:, 0] // 100, batch.labels.float())


def test_optimiser_is_the_authors_adam() -> None:
    model = RetrievalModel.plain(_paper_model(20, 20))
    opt = make_optimizer(model, TrainConfig())
    assert isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        2e-4,
        (0.5, 0.999),
        1e-8,
        0.0,
    )
    assert len(group["params"]) == len(list(model.iiae.parameters()))
    assert len(list(model.parameters())) == len(list(model.iiae.parameters()))


def test_annealing_sees_the_updates_done_before_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the authors' global_step: 0 on the first update, t after t updates (and on resume)."""
    import index_builder.training.train as train_module

    seen: list[int] = []

    def recording_loss(out, cfg, step, labels=None):
        seen.append(step)
        return iiae_loss(out, cfg, step, labels)

    monkeypatch.setattr(train_module, "iiae_loss", recording_loss)
    model = RetrievalModel.plain(_paper_model(10, 14))
    opt = make_optimizer(model, TrainConfig())
    fit(model, _toy_sampler(0), opt, 3, progress=False)
    fit(model, _toy_sampler(0), opt, 5, start_step=3, progress=False)
    assert seen == [0, 1, 2, 3, 4]
    assert kl_annealing(0, 2000.0) == 0.0


def test_runs_saved_before_the_new_fields_load_as_before(tmp_path: Path) -> None:
    """A run.json of one flat "iiae" record (the committed demo's layout), written before the
    decoder, init and fusion fields existed (the first demo model's), loads as the model it
    was: deep LeakyReLU decoder, no fusion."""
    import json

    from model.checkpoint import load_model, save_model

    save_model(RetrievalModel.plain(IIAE(IIAEConfig(**DEEP))), tmp_path, {})
    info = json.loads((tmp_path / "run.json").read_text())
    flat = {**info.pop("iiae"), **info.pop("retrieval"), "pseudo_sketch": False}
    old_fields = ("decoder_activation", "init", "fusion_weight", "fusion_dim")
    info["iiae"] = {k: v for k, v in flat.items() if k not in old_fields}
    del info["scaling"]
    (tmp_path / "run.json").write_text(json.dumps(info))
    model, _ = load_model(tmp_path)
    assert _linears(model.iiae.dec_x)[1:] == [(128, 512), (512, 1280)]
    assert any(isinstance(m, nn.LeakyReLU) for m in model.iiae.dec_x.modules())
    assert model.head.cfg.fusion_weight == 0 and model.embedding_dim == 64


def test_the_committed_demo_model_loads_as_its_run_json_says() -> None:
    """models/demo: run.json's scaling, IIAE and head records are the loaded model's, the
    recommended recipe's (held-out sketches out, sealed test classes), and every tensor of
    its file is read."""
    from safetensors.torch import load_file

    from bench.protocol import SEALED_SPLIT
    from index_builder.training.datasets.splits import read_class_list
    from model.checkpoint import load_model

    demo = Path(__file__).parent.parent / "models" / "demo"
    model, info = load_model(demo)
    assert model.scaling.cfg.model_dump() == info["scaling"]
    assert model.iiae.cfg.model_dump(mode="json") == info["iiae"]
    assert model.head.cfg.model_dump() == info["retrieval"]
    assert model.scaling.cfg.pseudo_sketch and model.scaling.cfg.power == 0.5
    assert model.scaling.cfg.shrinkage == 30.0
    assert info["config"]["holdout_sketches"] == 0.2 and info["heldout_sketch_count"] > 0
    assert info["test_classes"] == read_class_list(SEALED_SPLIT)
    n_fitted = len(info["train_classes"])
    assert model.embedding_dim == 64 + 1280 + n_fitted == 64 + 1280 + 144
    assert model.iiae.cfg.decoder_hidden_dims == (128, 512)
    on_disk = load_file(str(demo / "model.safetensors"))
    state = model.file_state()
    assert state.keys() == on_disk.keys()
    assert all(torch.equal(state[k], on_disk[k]) for k in on_disk)


def test_paper_model_round_trips_through_a_run_dir(tmp_path: Path) -> None:
    from model.checkpoint import load_model, save_model

    model = RetrievalModel.plain(_paper_model(12, 12)).eval()
    save_model(model, tmp_path, {"recipe": "paper"})
    loaded, info = load_model(tmp_path)
    assert info["recipe"] == "paper" and loaded.config == model.config
    x, z = torch.randn(4, 12), torch.randn(4, 64)
    torch.testing.assert_close(loaded.embed_sketch(x), model.embed_sketch(x))
    torch.testing.assert_close(loaded.iiae.dec_x(z, z), model.iiae.dec_x(z, z))


def test_the_contrastive_term_rewards_matched_pairs() -> None:
    """InfoNCE of the r^x / r^y means: a scalar, near 0 where each sketch lies on its own
    photo and far from the others, log(batch) at random, large where pairs are crossed."""
    torch.manual_seed(0)
    anchors = nn.functional.normalize(torch.randn(16, 8), dim=-1) * 3
    matched = contrastive_loss(anchors, anchors + 0.01 * torch.randn(16, 8), 0.1)
    crossed = contrastive_loss(anchors, anchors.roll(1, dims=0), 0.1)
    at_random = contrastive_loss(torch.randn(512, 8), torch.randn(512, 8), 1e6)
    assert matched.shape == () and 0 <= matched < 0.05
    assert crossed > 5.0
    assert at_random == pytest.approx(math.log(512), rel=1e-3)


def test_the_contrastive_weight_joins_the_objective() -> None:
    """fit adds w x InfoNCE to the total it minimises (its term is logged), none at w 0."""
    totals: dict[float, list[dict[str, float]]] = {}
    for w in (0.0, 2.0):
        model = RetrievalModel.plain(_paper_model(10, 14))
        torch.manual_seed(0)
        opt = make_optimizer(model, TrainConfig())
        seen: list[dict[str, float]] = []
        fit(
            model,
            _toy_sampler(0),
            opt,
            2,
            on_step=lambda s, t, seen=seen: seen.append(t),
            progress=False,
            contrastive=w,
        )
        totals[w] = seen
    assert "contrastive" not in totals[0.0][0] and totals[2.0][0]["contrastive"] > 0
    first = totals[2.0][0]
    others = first["total"] - 2.0 * first["contrastive"]
    assert others == pytest.approx(totals[0.0][0]["total"], rel=1e-5)
