"""Input scaling: backbone features brought to one scale before the IIAE reads them.

Not part of the paper (its inputs are the raw features, ``ScalingConfig()``): this project's
recipes square-root and whiten them (``BENCHMARKS.md`` section 1). The same scaled features
are the IIAE's reconstruction targets and the fusion's part of the retrieval embedding
(``model/retrieval.py``).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

# principal axes on which Standardize whitens exactly: the model file grows by 2 MB, not 20
WHITEN_RANK = 128


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


class ScalingConfig(BaseModel):
    """How a run scales its inputs. At the defaults, and until fitted, the inputs stay raw
    as in the paper."""

    model_config = ConfigDict(frozen=True)

    input_dim_x: int = Field(1280, description="sketch feature size")
    input_dim_y: int = Field(1280, description="photo feature size")
    # The photo features are [the photo's; its pseudo-sketch's] (model/pseudo_sketch.py):
    # each half is scaled on its own, and the photo's features comparable with a sketch's
    # are the mean of the two scaled halves.
    pseudo_sketch: bool = False
    power: float = Field(1.0, gt=0.0, description="signed power before standardising")
    shrinkage: float = Field(0.0, ge=0.0, description="> 0: shrunk whitening; 0: z-score")
    rank: int = Field(WHITEN_RANK, ge=1, description="principal axes whitened exactly")

    @property
    def sketch_like_dim_y(self) -> int:
        """Size of the photo-side features comparable with a sketch's."""
        return self.input_dim_y // 2 if self.pseudo_sketch else self.input_dim_y

    @property
    def comparable(self) -> bool:
        """Whether sketch and photo features are of one size, as the fusion and the category
        head compare them."""
        return self.input_dim_x == self.sketch_like_dim_y

    @property
    def name(self) -> str:
        return scaling_name(self.power, self.shrinkage)


class InputScaling(nn.Module):
    """The sketch side's and the photo side's ``Standardize`` of one run."""

    def __init__(self, cfg: ScalingConfig) -> None:
        super().__init__()
        if cfg.pseudo_sketch and cfg.input_dim_y % 2:
            raise ValueError("photo features with a pseudo-sketch half need an even size")
        self.cfg = cfg
        scaling = (cfg.power, cfg.shrinkage, cfg.rank)
        self.scale_x = Standardize(cfg.input_dim_x, *scaling)
        self.scale_y = Standardize(cfg.input_dim_y, *scaling, blocks=2 if cfg.pseudo_sketch else 1)

    @classmethod
    def fitted_on(cls, cfg: ScalingConfig, x: Tensor, y: Tensor) -> InputScaling:
        """Scaling with statistics of these training features (raw, all views)."""
        scaling = cls(cfg)
        scaling.scale_x.fit(x)
        scaling.scale_y.fit(y)
        return scaling

    def sketch(self, x: Tensor) -> Tensor:
        return self.scale_x(x)

    def photo(self, y: Tensor) -> Tensor:
        return self.scale_y(y)

    def sketch_like(self, scaled_y: Tensor) -> Tensor:
        """The scaled photo features comparable with a sketch's: the mean of the photo's and
        its pseudo-sketch's halves where there are both."""
        if not self.cfg.pseudo_sketch:
            return scaled_y
        return scaled_y.unflatten(-1, (2, -1)).mean(dim=-2)
