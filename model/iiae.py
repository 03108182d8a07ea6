"""The Interaction Information Auto-Encoder (Hwang et al., NeurIPS 2020), per docs/iiae.md.

Inputs are backbone feature vectors of a sketch (domain X) and a photo (domain Y).
Retrieval embeds a sketch by the mean of ``r^x`` and a photo by the mean of ``r^y``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

LOGVAR_MAX = math.log(1e4)  # 9.2103...: variance is clamped at <= 1e4
# principal axes on which Standardize whitens exactly: the model file grows by 2 MB, not 20
WHITEN_RANK = 128
CATEGORY_LOGIT_SCALE = 16.0  # cosine logits: the category head reads unit-norm features


class IIAEConfig(BaseModel):
    """Architecture and objective weights.

    The defaults are this project's first model (runs saved before a field existed load with
    its default); the authors' code differs in ``decoder_hidden_dims=(128,)``,
    ``decoder_activation="relu"`` and ``init="glorot"`` (the ``paper`` recipe).
    """

    input_dim_x: int = Field(1280, description="sketch feature size")
    input_dim_y: int = Field(1280, description="photo feature size")
    latent_dim: int = 64
    hidden_dims: tuple[int, int] = (512, 256)
    joint_hidden_dim: int = 512
    decoder_hidden_dims: tuple[int, ...] = (128, 512)
    decoder_activation: Literal["leaky_relu", "relu"] = "leaky_relu"
    init: Literal["torch", "glorot"] = "torch"  # glorot: Glorot-uniform, 0 bias, BN N(1, .02)
    bn_momentum: float = 0.1  # PyTorch convention; TF's 0.9
    leaky_slope: float = 0.2
    num_classes: int = 0  # > 0 adds the class head on z^s
    input_dropout: float = 0.0  # dropout on the input features (regulariser; 0 in the paper)
    beta: float = 0.5
    lam: float = 1.0
    w_rec: float = 10.0
    w_cls: float = 0.0
    anneal_steps: float = 2000.0  # a(t) = 1 - exp(-t / anneal_steps)
    # Share a of the standardised backbone features in the retrieval embedding,
    # [sqrt(1 - a) r, sqrt(a) s] of unit-norm parts: 0 is the paper's (r^x / r^y alone).
    fusion_weight: float = Field(0.0, ge=0.0, le=1.0)
    # > 0: the standardised features enter the fusion projected on this many principal axes
    # of the training features (a small index); 0: whole.
    fusion_dim: int = Field(0, ge=0)
    # The photo features are [the photo's; its pseudo-sketch's] (model/pseudo_sketch.py):
    # r^y reads both, and the fusion's photo part is the mean of the two standardised halves.
    pseudo_sketch: bool = False
    # How inputs are standardised (``Standardize``): a signed power, then the per-dimension
    # z-score (shrinkage 0) or a shrunk whitening kept on this many principal axes.
    input_power: float = Field(1.0, gt=0.0)
    whiten_shrinkage: float = Field(0.0, ge=0.0)
    whiten_rank: int = Field(WHITEN_RANK, ge=1)
    # > 0: the known-category head, a linear classifier of this many training categories on
    # the scaled features (a sketch's, or a photo's sketch-like ones), fitted after training.
    category_classes: int = Field(0, ge=0)
    # Share c of the cosine given to the category posteriors: [sqrt(1 - c) e, sqrt(c) p] of
    # unit-norm parts, e the embedding above. It finds the trained categories' pictures for
    # new sketches of them, which the zero-shot embedding alone ranks low in a large gallery.
    category_weight: float = Field(0.0, ge=0.0, le=1.0)

    @property
    def sketch_like_dim_y(self) -> int:
        """Size of the photo-side features the fusion compares with a sketch's."""
        return self.input_dim_y // 2 if self.pseudo_sketch else self.input_dim_y

    @property
    def fusable(self) -> bool:
        """Whether sketch and photo features are of one size, as the fusion compares them."""
        return self.input_dim_x == self.sketch_like_dim_y

    @property
    def embedding_dim(self) -> int:
        """Size of the retrieval embedding (the fused one adds the standardised features, the
        category part one posterior per known category)."""
        size = self.latent_dim
        if self.fusion_weight > 0:
            size += self.fusion_dim or self.input_dim_x
        if self.category_weight > 0:
            size += self.category_classes
        return size


@dataclass
class Gaussian:
    """A diagonal Gaussian by its mean and log-variance."""

    mean: Tensor
    logvar: Tensor

    def sample(self) -> Tensor:
        return self.mean + torch.randn_like(self.mean) * torch.exp(0.5 * self.logvar)


def kl_gaussians(q: Gaussian, p: Gaussian) -> Tensor:
    """KL(q || p) of diagonal Gaussians, summed over dimensions: shape (batch,)."""
    var_ratio = torch.exp(q.logvar - p.logvar)
    mean_term = (q.mean - p.mean).pow(2) * torch.exp(-p.logvar)
    return 0.5 * (var_ratio + mean_term - 1.0 - (q.logvar - p.logvar)).sum(dim=-1)


def kl_standard_normal(q: Gaussian) -> Tensor:
    """KL(q || N(0, I)), summed over dimensions: shape (batch,)."""
    return 0.5 * (q.mean.pow(2) + torch.exp(q.logvar) - 1.0 - q.logvar).sum(dim=-1)


def kl_annealing(step: int | Tensor, anneal_steps: float) -> float:
    """a(t) = 1 - exp(-t / anneal_steps)."""
    return 1.0 - math.exp(-float(step) / anneal_steps)


def mlp(dims: list[int], cfg: IIAEConfig, activation: str = "leaky_relu") -> nn.Sequential:
    """Linear -> BatchNorm -> activation for each consecutive pair of ``dims``."""
    layers: list[nn.Module] = []
    for d_in, d_out in itertools.pairwise(dims):
        act = nn.ReLU() if activation == "relu" else nn.LeakyReLU(cfg.leaky_slope)
        layers += [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out, momentum=cfg.bn_momentum), act]
    return nn.Sequential(*layers)


def glorot_init(module: nn.Module) -> None:
    """The authors' initialisation (TF ``dense`` and their ``batchnorm``): Glorot-uniform
    weights and zero biases; BatchNorm scale ~ N(1, 0.02), shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class GaussianHead(nn.Module):
    """A linear layer to (mean, clamped log-variance)."""

    def __init__(self, d_in: int, latent_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, 2 * latent_dim)

    def forward(self, h: Tensor) -> Gaussian:
        mean, logvar = self.linear(h).chunk(2, dim=-1)
        return Gaussian(mean, logvar.clamp(max=LOGVAR_MAX))


class Encoder(nn.Module):
    """d_in -> 512 -> 256 -> Gaussian; exposes its first hidden layer for the joint encoder."""

    def __init__(self, d_in: int, cfg: IIAEConfig) -> None:
        super().__init__()
        h1, h2 = cfg.hidden_dims
        self.first = mlp([d_in, h1], cfg)
        self.rest = mlp([h1, h2], cfg)
        self.head = GaussianHead(h2, cfg.latent_dim)

    def forward_with_hidden(self, x: Tensor) -> tuple[Gaussian, Tensor]:
        h = self.first(x)
        return self.head(self.rest(h)), h

    def forward(self, x: Tensor) -> Gaussian:
        return self.forward_with_hidden(x)[0]


class Decoder(nn.Module):
    """[z^s, z^exclusive] -> hidden layers (default 128 -> 512) -> d_out, linear output."""

    def __init__(self, d_out: int, cfg: IIAEConfig) -> None:
        super().__init__()
        dims = [2 * cfg.latent_dim, *cfg.decoder_hidden_dims]
        self.hidden = mlp(dims, cfg, cfg.decoder_activation)
        self.out = nn.Linear(cfg.decoder_hidden_dims[-1], d_out)

    def forward(self, z_shared: Tensor, z_exclusive: Tensor) -> Tensor:
        return self.out(self.hidden(torch.cat([z_shared, z_exclusive], dim=-1)))


def scaling_name(power: float, shrinkage: float) -> str:
    """How ``Standardize(power=power, shrinkage=shrinkage)`` scales, as reports name it:
    "power 1, z-score", "power 0.5, whitened, shrinkage 30"."""
    return f"power {power:g}, " + (f"whitened, shrinkage {shrinkage:g}" if shrinkage else "z-score")


class Standardize(nn.Module):
    """Inputs brought to one scale with stored statistics; identity until fitted.

    First a signed power ``sign(x) |x|^power`` (``power`` 0.5: the square root that evens
    out the heavy tail of pooled ReLU features), then either the per-dimension z-score
    (``shrinkage`` 0) or, with ``shrinkage`` > 0, centring and a shrunk whitening
    ``(C + s I)^(-1/2)`` with ``s`` = ``shrinkage`` x the mean variance, kept exactly on
    the ``rank`` largest principal axes (beyond them it is the constant ``s^(-1/2)``) and
    scaled to unit mean variance. ``blocks`` > 1 fits equal slices of the features (a photo's
    and its pseudo-sketch's) each on their own.
    """

    def __init__(
        self,
        dim: int,
        power: float = 1.0,
        shrinkage: float = 0.0,
        rank: int = WHITEN_RANK,
        blocks: int = 1,
    ) -> None:
        super().__init__()
        if dim % blocks:
            raise ValueError(f"{dim} features do not split into {blocks} blocks")
        self.power, self.shrinkage, self.blocks = power, shrinkage, blocks
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if shrinkage > 0:  # the whitening's correction on the principal axes, per block
            rank = min(rank, dim // blocks)
            self.register_buffer("axes", torch.zeros(blocks, dim // blocks, rank))
            self.register_buffer("gain", torch.zeros(blocks, 1, rank))

    def _power(self, x: Tensor) -> Tensor:
        return x if self.power == 1 else torch.sign(x) * x.abs().pow(self.power)

    def fit(self, features: Tensor, eps: float = 1e-6) -> None:
        x = self._power(features)
        self.mean.copy_(x.mean(dim=0))
        if self.shrinkage <= 0:
            self.std.copy_(x.std(dim=0).clamp_min(eps))
            return
        for b, centred in enumerate((x - self.mean).double().chunk(self.blocks, dim=1)):
            cov = centred.T @ centred / len(centred)
            var, axes = torch.linalg.eigh(cov)  # ascending
            rank = self.axes.shape[-1]
            var, axes = var.flip(0)[:rank].clamp_min(0), axes.flip(1)[:, :rank]
            s = self.shrinkage * cov.diagonal().mean()
            gain = (var + s).rsqrt() - s.rsqrt()
            white = centred * s.rsqrt() + (centred @ axes) * gain @ axes.T
            norm = white.var(dim=0).mean().rsqrt()  # unit mean variance
            d = centred.shape[1]
            self.std[b * d : (b + 1) * d] = (s.sqrt() / norm).float()
            self.axes[b] = axes.float()
            self.gain[b, 0] = (gain * norm).float()

    def forward(self, x: Tensor) -> Tensor:
        centred = self._power(x) - self.mean
        out = centred / self.std
        if self.shrinkage <= 0:
            return out
        blocks = centred.unflatten(-1, (self.blocks, -1)).transpose(0, 1)  # (blocks, B, d)
        correction = (blocks @ self.axes) * self.gain @ self.axes.transpose(1, 2)
        return out + correction.transpose(0, 1).flatten(-2)


@dataclass
class IIAEOutput:
    """Everything one training forward pass produces."""

    q_zx: Gaussian
    q_zy: Gaussian
    q_zs: Gaussian
    r_x: Gaussian
    r_y: Gaussian
    x_hat: Tensor
    y_hat: Tensor
    x_target: Tensor
    y_target: Tensor
    logits: Tensor | None


class IIAE(nn.Module):
    """The five encoders, two decoders and optional class head of the IIAE."""

    def __init__(self, cfg: IIAEConfig) -> None:
        super().__init__()
        if cfg.pseudo_sketch and cfg.input_dim_y % 2:
            raise ValueError("photo features with a pseudo-sketch half need an even size")
        fusing = cfg.fusion_weight > 0 or cfg.fusion_dim > 0 or cfg.category_classes > 0
        if fusing and not cfg.fusable:
            raise ValueError("fusion and category head need sketch and photo features of one size")
        if cfg.category_weight > 0 and cfg.category_classes == 0:
            raise ValueError("category_weight > 0 needs the category head (category_classes > 0)")
        self.cfg = cfg
        if cfg.fusion_dim > 0:  # the principal axes, until fitted the first coordinates
            self.register_buffer("fusion_basis", torch.eye(cfg.input_dim_x)[:, : cfg.fusion_dim])
        scaling = (cfg.input_power, cfg.whiten_shrinkage, cfg.whiten_rank)
        self.scale_x = Standardize(cfg.input_dim_x, *scaling)
        self.scale_y = Standardize(cfg.input_dim_y, *scaling, blocks=2 if cfg.pseudo_sketch else 1)
        self.dropout = nn.Dropout(cfg.input_dropout)
        self.enc_x = Encoder(cfg.input_dim_x, cfg)  # q(z^x|x)
        self.enc_y = Encoder(cfg.input_dim_y, cfg)  # q(z^y|y)
        self.shared_x = Encoder(cfg.input_dim_x, cfg)  # r^x(z^s|x)
        self.shared_y = Encoder(cfg.input_dim_y, cfg)  # r^y(z^s|y)
        h1 = cfg.hidden_dims[0]
        self.joint = nn.Sequential(
            mlp([2 * h1, cfg.joint_hidden_dim], cfg),
            GaussianHead(cfg.joint_hidden_dim, cfg.latent_dim),
        )  # q(z^s|x,y)
        self.dec_x = Decoder(cfg.input_dim_x, cfg)  # p(x|z^x,z^s)
        self.dec_y = Decoder(cfg.input_dim_y, cfg)  # p(y|z^y,z^s)
        self.class_head = (
            nn.Linear(cfg.latent_dim, cfg.num_classes) if cfg.num_classes > 0 else None
        )
        self.category_head = (
            nn.Linear(cfg.input_dim_x, cfg.category_classes) if cfg.category_classes > 0 else None
        )
        if cfg.init == "glorot":
            glorot_init(self)

    def forward(self, x: Tensor, y: Tensor) -> IIAEOutput:
        """Encode a paired batch; samples latents in training mode, takes means in eval."""
        x_in, y_in = self.scale_x(x), self.scale_y(y)
        x_enc, y_enc = self.dropout(x_in), self.dropout(y_in)
        q_zx, q_zy = self.enc_x(x_enc), self.enc_y(y_enc)
        r_x, hx = self.shared_x.forward_with_hidden(x_enc)
        r_y, hy = self.shared_y.forward_with_hidden(y_enc)
        q_zs = self.joint(torch.cat([hx, hy], dim=-1))
        zx, zy, zs = (self._draw(g) for g in (q_zx, q_zy, q_zs))
        logits = self.class_head(zs) if self.class_head is not None else None
        return IIAEOutput(
            q_zx,
            q_zy,
            q_zs,
            r_x,
            r_y,
            x_hat=self.dec_x(zs, zx),
            y_hat=self.dec_y(zs, zy),
            x_target=x_in,
            y_target=y_in,
            logits=logits,
        )

    def _draw(self, g: Gaussian) -> Tensor:
        return g.sample() if self.training else g.mean

    def embed_sketch(self, x: Tensor) -> Tensor:
        """The sketch's retrieval embedding (not normalised): mean of r^x(z^s|x), fused with
        the standardised features when ``fusion_weight`` > 0 and with the category posteriors
        when ``category_weight`` > 0."""
        scaled = self.scale_x(x)
        return self._retrieval(self.shared_x(scaled).mean, scaled)

    def embed_photo(self, y: Tensor) -> Tensor:
        """The photo's retrieval embedding (not normalised): mean of r^y(z^s|y), fused with
        the standardised features when ``fusion_weight`` > 0 and with the category posteriors
        when ``category_weight`` > 0."""
        scaled = self.scale_y(y)
        return self._retrieval(self.shared_y(scaled).mean, self.sketch_like(scaled))

    def sketch_like(self, scaled_y: Tensor) -> Tensor:
        """The standardised photo features comparable with a sketch's: the mean of the photo's
        and its pseudo-sketch's halves where there are both."""
        if not self.cfg.pseudo_sketch:
            return scaled_y
        return scaled_y.unflatten(-1, (2, -1)).mean(dim=-2)

    def fit_fusion_basis(self, x: Tensor, y: Tensor) -> None:
        """Principal axes of both domains' standardised training features (raw ``x``, ``y``)."""
        both = torch.cat([self.scale_x(x), self.sketch_like(self.scale_y(y))])
        _, _, v = torch.linalg.svd(both - both.mean(dim=0), full_matrices=False)
        axes = v[: self.cfg.fusion_dim].T  # fewer when there are fewer samples than axes
        self.fusion_basis.zero_()
        self.fusion_basis[:, : axes.shape[1]] = axes

    def category_logits(self, scaled: Tensor) -> Tensor:
        """The category head's logits for scaled sketch (or sketch-like photo) features: a
        linear classifier of their directions (cosine logits at a fixed scale)."""
        return self.category_head(CATEGORY_LOGIT_SCALE * F.normalize(scaled, dim=-1))

    def _retrieval(self, z: Tensor, scaled: Tensor) -> Tensor:
        embedding = self._fused(z, scaled)
        c = self.cfg.category_weight
        if c <= 0:
            return embedding
        posterior = F.softmax(self.category_logits(scaled), dim=-1)
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

    def exclusive_sketch(self, x: Tensor) -> Tensor:
        """Mean of q(z^x|x)."""
        return self.enc_x(self.scale_x(x)).mean

    def exclusive_photo(self, y: Tensor) -> Tensor:
        """Mean of q(z^y|y)."""
        return self.enc_y(self.scale_y(y)).mean


def iiae_loss(
    out: IIAEOutput, cfg: IIAEConfig, step: int, labels: Tensor | None = None
) -> dict[str, Tensor]:
    """The minimised objective of docs/iiae.md section 2, with each term for logging.

    MSE is averaged over batch and dimensions; KLs are summed over dimensions and
    averaged over the batch.
    """
    a_t = kl_annealing(step, cfg.anneal_steps)
    bl = cfg.beta + cfg.lam
    terms = {
        "rec_x": F.mse_loss(out.x_hat, out.x_target),
        "rec_y": F.mse_loss(out.y_hat, out.y_target),
        "kl_x": kl_standard_normal(out.q_zx).mean(),
        "kl_y": kl_standard_normal(out.q_zy).mean(),
        "kl_s": kl_standard_normal(out.q_zs).mean(),
        "klr_x": kl_gaussians(out.q_zs, out.r_x).mean(),
        "klr_y": kl_gaussians(out.q_zs, out.r_y).mean(),
    }
    total = (
        bl * cfg.w_rec * (terms["rec_x"] + terms["rec_y"])
        + a_t * bl * (terms["kl_x"] + terms["kl_y"])
        + a_t * cfg.beta * terms["kl_s"]
        + cfg.lam * (terms["klr_x"] + terms["klr_y"])
    )
    if out.logits is not None and labels is not None:
        terms["cls"] = F.cross_entropy(out.logits, labels)
        total = total + cfg.w_cls * terms["cls"]
    terms["total"] = total
    return terms
