"""Typed service settings, read from ``SBIR_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from gallery_store.settings import StoreSettings

STATIC_DIR = Path(__file__).resolve().parent / "static"


class ServiceSettings(StoreSettings):
    """Everything the service reads from its environment; see the settings table of docs/service.md.
    The store settings (``SBIR_STORE``, ``SBIR_QDRANT_*``) are the builder's too."""

    model_config = SettingsConfigDict(env_prefix="SBIR_", protected_namespaces=())

    model_dir: Path = Field(Path("models/current"), description="exported ONNX encoders")
    index_dir: Path = Field(
        Path("index"), description="gallery index directory (CURRENT) of the FAISS store"
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    default_k: int = Field(10, ge=1, description="results when a search gives no k")
    max_offset: int = Field(
        1000, ge=0, description="the largest offset a search may page to (it costs offset + k)"
    )
    max_k: int = Field(100, ge=1, description="the largest k a search may ask for")
    max_upload_bytes: int = Field(10 << 20, ge=1024, description="largest request body")
    max_pixels: int = Field(
        4_194_304, ge=1, description="largest sketch width x height (2048 x 2048)"
    )
    max_jpeg_scans: int = Field(
        64, ge=1, description="most scans in a JPEG sketch (real ones have about 10)"
    )
    max_strokes: int = Field(1_000, ge=1, description="most strokes in one drawing")
    max_points: int = Field(
        20_000, ge=1, description="most points in one drawing (rendering costs ~25 us each)"
    )
    admin_token: SecretStr | None = Field(None, description="bearer token of /v1/admin/*")
    max_batch: int = Field(8, ge=1, description="largest micro-batch (1: no batching)")
    batch_wait_ms: float = Field(2.0, ge=0, description="longest wait to fill a micro-batch")
    decode_workers: int = Field(
        default_factory=lambda: min(4, os.cpu_count() or 1),
        ge=1,
        description="threads decoding and rendering sketches and thumbnails",
    )
    decode_queue: int = Field(
        128, ge=0, description="sketches that may wait for a decode thread; more get a 503"
    )
    decode_wait_s: float = Field(
        3.0, gt=0, description="longest wait for a decode thread; then a 503"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body not all arrived by then gets a 408"
    )
    max_connections: int = Field(
        1000, ge=1, description="open connections at most; a new one past it gets a 503"
    )
    max_client_connections: int = Field(
        100,
        ge=1,
        description="open connections from one address; more get a 429 (behind a proxy, "
        "at least as many as it opens)",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request head not all arrived by then: the connection closes"
    )
    keep_alive_s: float = Field(5.0, gt=0, description="an idle keep-alive connection's life")
    public_base_url: str = Field(
        "", description="prefix of result URLs, e.g. https://example.org (default: relative)"
    )
    ort_threads: int | None = Field(None, ge=1, description="ONNX Runtime threads (all cores)")
    faiss_threads: int | None = Field(None, ge=1, description="FAISS threads (all cores)")
    faiss_gpu: bool = Field(True, description="search on the GPU when FAISS sees one")
    thumbnail_size: int = Field(256, ge=16, le=2048, description="thumbnail bounding box")
    thumbnail_dir: Path = Field(
        Path.home() / ".cache" / "sketch-search" / "thumbnails",
        description="where thumbnails are cached (by content hash)",
    )
    watch_interval_s: float = Field(
        2.0, ge=0, description="poll the served version (CURRENT, Qdrant's alias) this often"
    )
    static_dir: Path = Field(STATIC_DIR, description="the drawing page and its assets")

    @model_validator(mode="after")
    def _k_bounds(self) -> ServiceSettings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) exceeds max_k ({self.max_k})")
        return self
