"""Exported sketch and photo encoders run by ONNX Runtime (no PyTorch needed).

A model directory, written by ``python -m index_builder export-onnx``, holds
``sketch_encoder.onnx``, ``photo_encoder.onnx`` and ``metadata.json``. Each encoder maps a
batch of normalised images (B, C, S, S) float32, input ``image``, to L2-normalised
embeddings (B, D) float32, output ``embedding``. Images become inputs through
``model.pseudo_sketch.encoder_input_array``, the function training used: C is 3, or 6 for a
photo encoder that reads each photo with its pseudo-sketch (``photo_edges``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from PIL import Image
from pydantic import BaseModel, PrivateAttr, ValidationError, field_validator

from model.preprocess import Preprocessing
from model.pseudo_sketch import EdgeConfig, edge_key, encoder_input_array

Domain = Literal["sketch", "photo"]
DOMAINS: tuple[Domain, Domain] = ("sketch", "photo")
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 3  # 2: the backbone's fingerprint is part of the model's; 3: photo_edges


class EncoderIntegrityError(ValueError):
    """A model directory's files are missing or differ from what its metadata records."""


class OnnxFile(BaseModel):
    """One exported encoder: its file name in the model directory and its sha256."""

    file: str
    sha256: str


class EncoderMetadata(BaseModel):
    """What ``metadata.json`` records about an exported pair of encoders."""

    format_version: int = FORMAT_VERSION
    backbone: str
    backbone_weights: str | None = None
    backbone_fingerprint: str  # ``Backbone.fingerprint``: weights and computation
    preprocessing: Preprocessing
    photo_edges: EdgeConfig | None = None  # the photo encoder also reads pseudo-sketches
    embedding_dim: int
    input_name: str = "image"
    output_name: str = "embedding"
    opset: int
    # the ONNX Runtime optimisation saved into the files (None: the exporter's plain graph)
    graph_optimization: str | None = None
    quantization: str | None = None  # ``model.quantize``: None for float encoders
    train_classes: list[str]
    val_classes: list[str] = []
    test_classes: list[str] = []
    config: dict[str, Any]  # the run's training configuration
    # the run's model: its IIAE, input scaling and retrieval head (model/retrieval.py's
    # ModelConfig); exports made before the three were apart hold all in ``iiae``
    iiae: dict[str, Any]
    scaling: dict[str, Any] = {}
    retrieval: dict[str, Any] = {}
    source_run: str
    files: dict[Domain, OnnxFile]
    fingerprint: str
    _model_dir: Path | None = PrivateAttr(default=None)

    @field_validator("files")
    @classmethod
    def _both_domains(cls, files: dict[Domain, OnnxFile]) -> dict[Domain, OnnxFile]:
        missing = [d for d in DOMAINS if d not in files]
        if missing:
            raise ValueError(f"no {' or '.join(missing)} encoder listed")
        return files

    @property
    def input_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def model_dir(self) -> Path | None:
        """The directory this metadata was read from (None if built in memory)."""
        return self._model_dir

    @classmethod
    def load(cls, model_dir: str | Path) -> EncoderMetadata:
        """Read ``<model_dir>/metadata.json``; errors name the path."""
        model_dir = Path(model_dir)
        path = model_dir / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{model_dir}: not a model directory (no {METADATA_FILE}); "
                "export one with `python -m index_builder export-onnx`"
            )
        try:
            meta = cls.model_validate(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValidationError) as err:
            raise ValueError(f"{path}: invalid encoder metadata ({err})") from err
        if meta.format_version != FORMAT_VERSION:
            raise ValueError(
                f"{path}: format version {meta.format_version}, this code reads {FORMAT_VERSION}"
            )
        meta._model_dir = model_dir
        return meta

    def onnx_path(self, domain: Domain) -> Path:
        if self._model_dir is None:
            raise ValueError("metadata not read from a model directory; use EncoderMetadata.load")
        return self._model_dir / self.files[domain].file

    def verify_checksums(self) -> None:
        """Raise EncoderIntegrityError if an ONNX file is missing or tampered with, or if the
        fingerprint does not match the recorded checksums and preprocessing."""
        for domain in DOMAINS:
            path = self.onnx_path(domain)
            if not path.is_file():
                raise EncoderIntegrityError(f"{path}: the {domain} encoder file is missing")
            actual = sha256_file(path)
            if actual != self.files[domain].sha256:
                raise EncoderIntegrityError(
                    f"{path}: sha256 {actual} differs from {self.files[domain].sha256} in "
                    f"{METADATA_FILE}; the file was modified or corrupted, export again"
                )
        expected = compute_fingerprint(
            {d: self.files[d].sha256 for d in DOMAINS},
            self.preprocessing,
            self.backbone_fingerprint,
            self.photo_edges,
            self.quantization,
        )
        if expected != self.fingerprint:
            raise EncoderIntegrityError(
                f"{self.onnx_path('sketch').parent / METADATA_FILE}: fingerprint does not match "
                "the recorded checksums and preprocessing; the metadata was edited"
            )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def compute_fingerprint(
    checksums: dict[str, str],
    prep: Preprocessing,
    backbone_fingerprint: str,
    photo_edges: EdgeConfig | None = None,
    quantization: str | None = None,
) -> str:
    """sha256 over both encoders' checksums, the preprocessing, the backbone's fingerprint,
    the pseudo-sketch drawing (outside the graph) and the quantisation (named, though the
    checksums change with it too): what an index stores to tell whether its embeddings came
    from these encoders."""
    payload = {
        "onnx_sha256": {d: checksums[d] for d in DOMAINS},
        "preprocessing": prep.model_dump(),
        "backbone_fingerprint": backbone_fingerprint,
    }
    if photo_edges is not None:
        payload["photo_edges"] = edge_key(photo_edges)
    if quantization is not None:
        payload["quantization"] = quantization
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU."""
    available = ort.get_available_providers()
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or ["CPUExecutionProvider"]


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """Full graph optimisation; ``intra_op_threads`` threads per run (default: all cores)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    return opts


class OnnxEncoder:
    """One domain's exported encoder. Safe to call from several threads at once (it holds
    no mutable state; ONNX Runtime sessions allow concurrent ``run``)."""

    def __init__(
        self,
        model_dir: str | Path,
        domain: Domain,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        verify: bool = True,
    ) -> None:
        if domain not in DOMAINS:
            raise ValueError(f"domain must be 'sketch' or 'photo', not {domain!r}")
        self.domain = domain
        self.metadata = EncoderMetadata.load(model_dir)
        if verify:
            self.metadata.verify_checksums()
        self._session = ort.InferenceSession(
            str(self.metadata.onnx_path(domain)),
            sess_options=session_options(intra_op_threads),
            providers=providers or default_providers(),
        )
        self.providers: list[str] = self._session.get_providers()
        self.edges = self.metadata.photo_edges if domain == "photo" else None
        self.input_channels = 3 if self.edges is None else 6

    @property
    def fingerprint(self) -> str:
        return self.metadata.fingerprint

    @property
    def embedding_dim(self) -> int:
        return self.metadata.embedding_dim

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, S, S) encoder inputs (``input_array``) -> (B, D) float32 unit-norm
        embeddings."""
        size, c = self.metadata.input_size, self.input_channels
        if batch.ndim != 4 or batch.shape[1:] != (c, size, size):
            raise ValueError(f"expected a (B, {c}, {size}, {size}) batch, got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        feed = {self.metadata.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        (out,) = self._session.run([self.metadata.output_name], feed)
        return np.asarray(out, dtype=np.float32)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """RGB images -> (B, D) embeddings, preprocessed exactly as in training."""
        parts = [
            self.embed_arrays(self.to_batch(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), np.float32)

    def input_array(self, img: Image.Image) -> np.ndarray:
        """One RGB image as this encoder's (C, S, S) float32 input."""
        return encoder_input_array(img, self.metadata.preprocessing, self.edges)

    def to_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images -> the (B, C, S, S) float32 input batch (``input_array`` on each)."""
        return np.stack([self.input_array(img) for img in images])
