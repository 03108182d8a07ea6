"""Response bodies of the API (and so of its OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer: a short code and what is wrong."""

    error: str = Field(description="machine-readable code, e.g. 'invalid_k'")
    detail: str = Field(description="what is wrong, for people")


class SearchResult(BaseModel):
    """One photo found."""

    model_config = ConfigDict(populate_by_name=True)

    id: int = Field(description="the photo's id in this index version")
    score: float = Field(description="cosine similarity to the sketch")
    path: str = Field(description="the photo's path relative to the gallery root")
    cls: str | None = Field(None, alias="class", description="the photo's class, when known")
    url: str = Field(description="the photo")
    thumbnail_url: str = Field(description="a small JPEG of the photo")


class Timing(BaseModel):
    """Where the time of a search went, in milliseconds, measured by the server."""

    decode_ms: float = Field(description="decoding the image or rendering the strokes")
    queue_ms: float = Field(description="waiting for the micro-batch to start")
    encode_ms: float = Field(description="encoding the micro-batch")
    search_ms: float = Field(description="searching the index for the micro-batch")
    batch_size: int = Field(description="sketches in the micro-batch")


class SearchResponse(BaseModel):
    """The top photos for a sketch, best first."""

    results: list[SearchResult]
    took_ms: float = Field(description="time in the server, parsing included")
    index_version: str
    timing: Timing


class SimilarResponse(BaseModel):
    """The photos nearest to a gallery photo, best first."""

    results: list[SearchResult]
    took_ms: float = Field(description="time in the server")
    index_version: str


class ReloadFailure(BaseModel):
    """The last reload that failed (the version served stays)."""

    version: str | None = Field(description="the index version it tried, when known")
    reason: str = Field(description="why, in a line")


class IndexStats(BaseModel):
    """The index being served."""

    version: str
    count: int
    created: str
    loaded_at: str
    index: dict[str, Any] = Field(description="index kind, factory, nprobe, recall (FAISS)")
    store: str = Field(description="the vector store: 'faiss' or 'qdrant'")
    device: str = Field(description="where it searches: 'cpu' or 'gpu' (FAISS), 'qdrant'")
    model: dict[str, Any] = Field(description="fingerprint, backbone, ONNX Runtime providers")
    classes: dict[str, int] = Field(description="photos per class")
    last_reload_error: ReloadFailure | None = None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    """Whether the service can search, and if not, why."""

    status: str = Field(description="'ready' or 'not ready'")
    detail: str | None = None
    index_version: str | None = None
    model_fingerprint: str | None = None


class ReloadResponse(BaseModel):
    """What a reload did."""

    changed: bool = Field(description="whether another index version is served now")
    index_version: str
    previous_version: str | None
