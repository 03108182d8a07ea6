"""Which vector store the gallery lives in: one typed settings class (``SBIR_*`` environment
variables) that the builder and the service both read."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class StoreSettings(BaseSettings):
    """The store engine and where it is; see docs/gallery-index.md, "Vector store"."""

    model_config = SettingsConfigDict(env_prefix="SBIR_", protected_namespaces=())

    store: Literal["faiss", "qdrant"] = Field(
        "faiss", description="the vector store: 'faiss' (an index directory) or 'qdrant'"
    )
    qdrant_url: str | None = Field(
        None, description="a Qdrant server or cluster, e.g. http://qdrant:6333"
    )
    qdrant_api_key: SecretStr | None = Field(None, description="the Qdrant server's API key")
    qdrant_path: Path | None = Field(
        None, description="a folder for Qdrant's embedded local mode (one process at a time)"
    )
    qdrant_collection: str = Field(
        "sbir-gallery",
        pattern=r"^[A-Za-z0-9_-]{1,48}$",
        description="the alias naming the served version; versions are <alias>-v000001, ...",
    )
    qdrant_shards: int = Field(1, ge=1, description="shards of each new collection (cluster)")
    qdrant_replicas: int = Field(1, ge=1, description="replicas of each shard (cluster)")

    @model_validator(mode="after")
    def _one_qdrant_location(self) -> StoreSettings:
        if self.store == "qdrant" and (self.qdrant_url is None) == (self.qdrant_path is None):
            raise ValueError(
                "SBIR_STORE=qdrant needs exactly one of SBIR_QDRANT_URL (a server "
                "or cluster) and SBIR_QDRANT_PATH (embedded local mode)"
            )
        return self
