"""Export a trained run's sketch and photo encoders (backbone + IIAE) to ONNX.

Each encoder is image -> backbone -> the run's ``RetrievalModel`` (input scaling, mean of
r^x or r^y, retrieval head) -> L2 normalisation, so ONNX Runtime alone turns an image into
its retrieval embedding.
Each file holds the graph as ONNX Runtime's extended optimisations leave it (constant folding,
Conv + activation and other fusions; ``optimize_graph``), so a session starts on the optimised
graph; the layout transformations of ``ORT_ENABLE_ALL``, which depend on the CPU, are left to
the session (``model.encoder.session_options``). Read the result with ``model.encoder``.
"""

from __future__ import annotations

import secrets
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from pydantic import BaseModel
from torch import Tensor, nn

from model.backbones import Backbone, available_backbones, load_backbone, with_pseudo_sketch
from model.checkpoint import load_model
from model.encoder import (
    DOMAINS,
    FORMAT_VERSION,
    METADATA_FILE,
    Domain,
    EncoderMetadata,
    OnnxFile,
    compute_fingerprint,
    sha256_file,
)
from model.preprocess import IMAGE_SUFFIXES, Preprocessing, load_image
from model.pseudo_sketch import EdgeConfig, encoder_input_array
from model.quantize import Quantization, quantize_encoder
from model.retrieval import RetrievalModel

# Saved into the files: portable between CPUs (ORT_ENABLE_ALL adds layouts of this CPU's
# kernels, which ONNX Runtime's documentation says to keep to the machine that made them).
SAVED_OPTIMIZATION = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
ONNX_FILES: dict[Domain, str] = {"sketch": "sketch_encoder.onnx", "photo": "photo_encoder.onnx"}
# Notices of the TorchScript-based exporter (the one that needs no onnxscript), not faults.
_EXPORT_NOISE = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
    r"Constant folding - Only steps=1",
)


class EmbeddingEncoder(nn.Module):
    """Normalised images (B, 3, S, S) -> unit-norm retrieval embeddings (B, embedding_dim):
    the backbone, then the model's ``embed_sketch`` or ``embed_photo``."""

    def __init__(self, backbone: nn.Module, model: RetrievalModel, domain: Domain) -> None:
        super().__init__()
        self.backbone, self.model, self.domain = backbone, model, domain

    def forward(self, image: Tensor) -> Tensor:
        feats = self.backbone(image)
        embed = self.model.embed_sketch if self.domain == "sketch" else self.model.embed_photo
        return nn.functional.normalize(embed(feats), dim=-1)


def build_encoders(model: RetrievalModel, backbone: Backbone) -> dict[Domain, EmbeddingEncoder]:
    """The sketch (r^x) and photo (r^y) encoders, in eval mode; the photo encoder's backbone
    also sees each photo's pseudo-sketch where the model was trained so."""
    photo = with_pseudo_sketch(backbone) if model.scaling.cfg.pseudo_sketch else backbone
    return {
        "sketch": EmbeddingEncoder(backbone, model, "sketch").eval(),
        "photo": EmbeddingEncoder(photo, model, "photo").eval(),
    }


def run_backbone(run_dir: Path, info: dict, input_dim: int) -> Backbone:
    """The image backbone a run's features came from, checked against the run."""
    name = info.get("feature_backbone", info.get("backbone"))
    if name not in available_backbones():
        raise ValueError(
            f"{run_dir}: trained on {name!r} features, which have no image backbone to export "
            f"(available: {', '.join(available_backbones())}); train on images instead"
        )
    weights = info.get("config", {}).get("backbone_weights")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"{run_dir}: the run's backbone weights {weights} are missing")
    backbone = load_backbone(name, weights)
    trained_on = info.get("backbone_fingerprint")
    if trained_on != backbone.fingerprint:
        raise ValueError(
            f"{run_dir}: trained on features of another {name} network than the one installed "
            f"now (backbone fingerprint {str(trained_on)[:12]}, now {backbone.fingerprint[:12]}: "
            "a fixed backbone, other weights or another library version); train it again"
        )
    if backbone.feature_dim != input_dim:
        raise ValueError(
            f"{run_dir}: {name} gives {backbone.feature_dim}-d features, the IIAE takes {input_dim}"
        )
    if backbone.preprocessing != Preprocessing(**info["preprocessing"]):
        raise ValueError(f"{run_dir}: the run's preprocessing differs from {name}'s")
    return backbone


def load_run_encoders(run_dir: Path) -> tuple[dict[Domain, EmbeddingEncoder], dict, Backbone]:
    """A run's two PyTorch encoders, its run info and its backbone."""
    model, info = load_model(run_dir)
    backbone = run_backbone(run_dir, info, model.scaling.cfg.input_dim_x)
    encoders = build_encoders(model, backbone)
    photo_trained_on = info.get("photo_backbone_fingerprint")
    photo_now = encoders["photo"].backbone.fingerprint
    if photo_trained_on is not None and photo_trained_on != photo_now:
        raise ValueError(
            f"{run_dir}: its photo features came from another photo network than the one "
            f"built now (fingerprint {photo_trained_on[:12]}, now {photo_now[:12]}: changed "
            "pseudo-sketch settings or code); train it again"
        )
    return encoders, info, backbone


def export_module(
    module: nn.Module,
    path: Path,
    image_size: int,
    embedding_dim: int,
    opset: int,
    channels: int = 3,
    item_shape: tuple[int, ...] | None = None,
) -> None:
    """ONNX file of ``module``: input ``image`` (B, C, S, S) (or (B, *item_shape)), output
    ``embedding`` (B, D), B dynamic."""
    example = torch.zeros(2, *(item_shape or (channels, image_size, image_size)))
    with warnings.catch_warnings(), torch.no_grad():
        for message in _EXPORT_NOISE:
            warnings.filterwarnings("ignore", message=message)
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=["embedding"],
                dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
            )
        except torch.onnx.OnnxExporterError as err:  # its message holds the whole graph
            first = str(err).strip().splitlines()[0]
            message = f"{path.name}: ONNX export at opset {opset} failed: {first}"
            raise RuntimeError(message) from err
    graph = onnx.load(str(path))
    # the tracer leaves the embedding size symbolic; record it
    dim = graph.graph.output[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = embedding_dim
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))


def optimize_graph(path: Path, level: ort.GraphOptimizationLevel = SAVED_OPTIMIZATION) -> None:
    """Replace the ONNX file at ``path`` by the graph ONNX Runtime's optimisations at ``level``
    make of it on the CPU provider (what a session would otherwise redo at every start)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    tmp = path.with_suffix(".optimized.onnx")
    opts.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    tmp.replace(path)


class Int8Photo(BaseModel):
    """Quantise the photo encoder (the builder's cost) to int8 (``model.quantize``), calibrated
    on the first ``per_class`` photos of each of the run's training classes under ``data``
    (a folder layout: ``<data>/photo/<class>/``). The sketch encoder stays float."""

    quantization: Quantization = "int8-static"
    data: Path | None = None
    per_class: int = 2
    max_photos: int = 256

    def describe(self, n_photos: int) -> str:
        if self.quantization == "int8-dynamic":
            return "int8-dynamic photo encoder"
        return f"int8-static photo encoder, calibrated on {n_photos} training photos"


def export_onnx(
    run_dir: Path, out_dir: Path, opset: int = 17, int8: Int8Photo | None = None
) -> EncoderMetadata:
    """Write ``sketch_encoder.onnx``, ``photo_encoder.onnx`` and ``metadata.json`` of a run
    into ``out_dir``, atomically: on failure ``out_dir`` is left as it was."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_target(out_dir)
    encoders, info, backbone = load_run_encoders(run_dir)
    model = encoders["sketch"].model
    embedding_dim = model.embedding_dim
    edges = encoders["photo"].backbone.edges
    calibration = [] if int8 is None else calibration_photos(int8, info, backbone, edges)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling_dir(out_dir, ".tmp")
    try:
        for domain in DOMAINS:
            path = tmp / ONNX_FILES[domain]
            export_module(
                encoders[domain],
                path,
                backbone.preprocessing.image_size,
                embedding_dim,
                opset,
                encoders[domain].backbone.input_channels,
            )
            if domain == "photo" and int8 is not None:
                batches = [
                    np.stack(calibration[i : i + 16]) for i in range(0, len(calibration), 16)
                ]
                quantize_encoder(path, int8.quantization, batches)
            optimize_graph(path)
        quantization = None if int8 is None else int8.describe(len(calibration))
        meta = _metadata(tmp, run_dir, info, model, backbone, opset, edges, quantization)
        (tmp / METADATA_FILE).write_text(meta.model_dump_json(indent=2) + "\n")
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return EncoderMetadata.load(out_dir)


def calibration_photos(
    int8: Int8Photo, info: dict, backbone: Backbone, edges: EdgeConfig | None
) -> list[np.ndarray]:
    """Photo-encoder inputs of training-class photos (never a test class's)."""
    if int8.quantization == "int8-dynamic":
        return []
    if int8.data is None:
        raise ValueError("int8-static needs calibration photos: give the data root (--calibration)")
    paths = []
    for cls in info.get("train_classes", []):
        folder = Path(int8.data) / "photo" / cls
        found = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += found[: int8.per_class]
    if not paths:
        raise ValueError(f"{int8.data}: no photos of the run's training classes under photo/")
    prep = backbone.preprocessing
    return [encoder_input_array(load_image(p), prep, edges) for p in paths[: int8.max_photos]]


def _metadata(
    folder: Path,
    run_dir: Path,
    info: dict,
    model: RetrievalModel,
    backbone: Backbone,
    opset: int,
    photo_edges: EdgeConfig | None,
    quantization: str | None = None,
) -> EncoderMetadata:
    files = {
        d: OnnxFile(file=ONNX_FILES[d], sha256=sha256_file(folder / ONNX_FILES[d])) for d in DOMAINS
    }
    prep = backbone.preprocessing
    return EncoderMetadata(
        format_version=FORMAT_VERSION,
        backbone=backbone.name,
        backbone_weights=info.get("config", {}).get("backbone_weights"),
        backbone_fingerprint=backbone.fingerprint,
        preprocessing=prep,
        photo_edges=photo_edges,
        embedding_dim=model.embedding_dim,
        opset=opset,
        quantization=quantization,
        graph_optimization=f"{SAVED_OPTIMIZATION.name} (onnxruntime {ort.__version__})",
        train_classes=info.get("train_classes", []),
        val_classes=info.get("val_classes", []),
        test_classes=info.get("test_classes", []),
        config=info.get("config", {}),
        **model.config.model_dump(),
        source_run=str(run_dir),
        files=files,
        fingerprint=compute_fingerprint(
            {d: f.sha256 for d, f in files.items()},
            prep,
            backbone.fingerprint,
            photo_edges,
            quantization,
        ),
    )


def _check_target(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier export or an empty folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / METADATA_FILE).is_file():
        raise ValueError(f"{out_dir}: not empty and not a model directory; choose another --out")


def _new_sibling_dir(out_dir: Path, suffix: str) -> Path:
    """A new empty folder beside ``out_dir``. Made by mkdir, so its mode follows the umask:
    tempfile.mkdtemp's 0700 would hide the export from a service running as another user."""
    path = out_dir.parent / f".{out_dir.name}.{secrets.token_hex(8)}{suffix}"
    path.mkdir()
    return path


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished export into place, replacing an earlier one."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    old = _new_sibling_dir(out_dir, ".old")
    out_dir.rename(old / out_dir.name)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
