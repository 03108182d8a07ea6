"""The embedding engines of ``build-index`` and ``rebuild``, chosen in one place.

``local``: ``embed.embed_photos`` (lanes decoding and encoding batches in this process).
``ray``: ``ray_embed.embed_photos_ray`` (Ray Data actors, on a cluster or a local Ray). Both
take the same arguments and return the same ``Embedded``, so the builder, the CLI and the
benchmark call whichever ``embedder`` returns without knowing which it is.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, get_args

from index_builder.indexing.embed import Embedded, embed_photos
from index_builder.indexing.scan import PhotoFile
from model.encoder import OnnxEncoder

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = get_args(Engine)


class EmbedFn(Protocol):
    """``embed_photos``'s signature: what every engine provides."""

    def __call__(
        self,
        encoder: OnnxEncoder,
        root: Path,
        photos: Sequence[PhotoFile],
        batch_size: int = ...,
        workers: int = ...,
        progress: bool = ...,
    ) -> Embedded: ...


def check_engine(engine: str, ray_address: str | None = None) -> None:
    """ValueError for an unknown engine, or a Ray address given to the local engine."""
    if engine not in ENGINES:
        raise ValueError(f"unknown embedding engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if ray_address and engine != "ray":
        raise ValueError(f"--ray-address {ray_address} is for --engine ray, not {engine}")


def embedder(engine: str, ray_address: str | None = None) -> EmbedFn:
    """The embedding function of ``engine``; for ``ray``, checked first that Ray is installed
    and that ``ray_address`` (if any) answers, so a build fails before its scan, not after."""
    check_engine(engine, ray_address)
    if engine == "local":
        return embed_photos
    from index_builder.indexing.ray_embed import check_reachable, embed_photos_ray, import_ray

    import_ray()
    if ray_address:
        check_reachable(ray_address)
    return functools.partial(embed_photos_ray, address=ray_address)
