"""The Interaction Information Auto-Encoder (Hwang et al., NeurIPS 2020), per docs/iiae.md.

Inputs are backbone feature vectors of a sketch (domain X) and a photo (domain Y).
Retrieval embeds a sketch by the mean of ``r^x`` and a photo by the mean of ``r^y``. The
paper's model and objective only: input scaling is ``model/scaling.py``, the product's
retrieval embedding (fusion, known-category head) ``model/retrieval.py``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

LOGVAR_MAX = math.log(1e4)  # 9.2103...: variance is clamped at <= 1e4


class IIAEConfig(BaseModel):
    """Architecture and objective weights; the defaults are the authors' (docs/iiae.md)."""

    model_config = ConfigDict(frozen=True)

    input_dim_x: int = Field(1280, description="sketch feature size")
    input_dim_y: int = Field(1280, description="photo feature size")
    latent_dim: int = 64
    hidden_dims: tuple[int, int] = (512, 256)
    joint_hidden_dim: int = 512
    decoder_hidden_dims: tuple[int, ...] = (128,)
    decoder_activation: Literal["leaky_relu", "relu"] = "relu"
    init: Literal["torch", "glorot"] = "glorot"  # glorot: Glorot-uniform, 0 bias, BN N(1, .02)
    bn_momentum: float = 0.1  # PyTorch convention; TF's 0.9
    leaky_slope: float = 0.2
    num_classes: int = 0  # > 0 adds the class head on z^s
    input_dropout: float = 0.0  # dropout on the input features (regulariser; 0 in the paper)
    beta: float = 0.5
    lam: float = 1.0
    w_rec: float = 10.0
    w_cls: float = 0.0
    anneal_steps: float = 2000.0  # a(t) = 1 - exp(-t / anneal_steps)


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
    """[z^s, z^exclusive] -> hidden layers (the authors': one of 128) -> d_out, linear out."""

    def __init__(self, d_out: int, cfg: IIAEConfig) -> None:
        super().__init__()
        dims = [2 * cfg.latent_dim, *cfg.decoder_hidden_dims]
        self.hidden = mlp(dims, cfg, cfg.decoder_activation)
        self.out = nn.Linear(cfg.decoder_hidden_dims[-1], d_out)

    def forward(self, z_shared: Tensor, z_exclusive: Tensor) -> Tensor:
        return self.out(self.hidden(torch.cat([z_shared, z_exclusive], dim=-1)))


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
    """The five encoders, two decoders and optional class head of the IIAE, on feature
    vectors as the caller scaled them (the paper: raw)."""

    def __init__(self, cfg: IIAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
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
        if cfg.init == "glorot":
            glorot_init(self)

    def forward(self, x: Tensor, y: Tensor) -> IIAEOutput:
        """Encode a paired batch; samples latents in training mode, takes means in eval."""
        x_enc, y_enc = self.dropout(x), self.dropout(y)
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
            x_target=x,
            y_target=y,
            logits=logits,
        )

    def _draw(self, g: Gaussian) -> Tensor:
        return g.sample() if self.training else g.mean

    def embed_sketch(self, x: Tensor) -> Tensor:
        """A sketch's retrieval embedding in the paper: the mean of r^x(z^s|x)."""
        return self.shared_x(x).mean

    def embed_photo(self, y: Tensor) -> Tensor:
        """A photo's retrieval embedding in the paper: the mean of r^y(z^s|y)."""
        return self.shared_y(y).mean

    def exclusive_sketch(self, x: Tensor) -> Tensor:
        """Mean of q(z^x|x)."""
        return self.enc_x(x).mean

    def exclusive_photo(self, y: Tensor) -> Tensor:
        """Mean of q(z^y|y)."""
        return self.enc_y(y).mean


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
