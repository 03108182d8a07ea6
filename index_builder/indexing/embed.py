"""Embed gallery photos with the exported photo encoder: one lane a core, batched inference.

Each of ``workers`` threads (lanes) takes the next batch, reads, checks and decodes its files
into input arrays, then runs the encoder on them (Pillow, hashlib and ONNX Runtime release the
GIL). While one lane decodes, another encodes, so every core stays busy without a thread
pool waiting on another; the encoder runs ``lane_threads`` intra-op threads (one where there
is a lane a core): ONNX Runtime's own thread pool, run beside decoding threads on the same
cores, spends its time spinning and waiting for descheduled threads (BENCHMARKS.md section 5).
At most ``workers`` batches of input arrays are in memory at once.

Each file is read once and decoded from those bytes, after checking that they are the bytes
the scan hashed. A file that cannot be decoded, or whose bytes no longer match, is skipped and
reported, never fatal; read errors and changed files are marked ``retry`` (the next rebuild
tries them again), decode failures are not (the same bytes fail the same way).

Memory: a file larger than ``MAX_FILE_BYTES`` is refused before its bytes are read; the
header of the rest is checked before any pixel is decoded (``model.preprocess``: pixels,
JPEG scans, the container's structure). JPEGs (up to ``MAX_PIXELS``) are
decoded in draft mode, by libjpeg's DCT scaling, to no less than the encoder's input size, so
a 100 MP JPEG costs ~11 MB; other formats are decoded whole, so their limit is lower
(``MAX_DECODE_PIXELS``). Measured peaks (``bench/gallery_decode_memory.py``): at most ~8 bytes
a pixel (RGBA, 16-bit grey), with the file's bytes ``PER_IMAGE_PEAK_BYTES`` bounds one decode;
the default worker count keeps workers x that within ``MEMORY_BUDGET_BYTES``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from gallery_store.photos import MAX_PIXELS
from index_builder.indexing.scan import PhotoFile, Skipped
from model.encoder import OnnxEncoder
from model.preprocess import DecodeLimits, ImageError, Preprocessing, decode_image_bytes
from model.pseudo_sketch import EdgeConfig, encoder_input_array

MAX_DECODE_PIXELS = 32_000_000  # larger images of other formats are refused (decoded whole)
MAX_FILE_BYTES = 128 * 2**20  # larger files are refused before they are read
MAX_JPEG_SCANS = 100  # progressive JPEGs have about a dozen; thousands cost seconds each
BYTES_PER_PIXEL = 16  # measured <= 8 (RGBA, 16-bit grey); twice that for the odd modes
PER_IMAGE_PEAK_BYTES = MAX_FILE_BYTES + BYTES_PER_PIXEL * MAX_DECODE_PIXELS  # ~640 MB
MEMORY_BUDGET_BYTES = 4 * 2**30  # the default workers decode within this


def default_workers() -> int:
    """Lanes (each a decoding thread): one a core, at most 8, and no more than the memory
    budget allows."""
    return max(1, min(8, os.cpu_count() or 1, MEMORY_BUDGET_BYTES // PER_IMAGE_PEAK_BYTES))


def lane_threads(workers: int) -> int:
    """ONNX Runtime intra-op threads for an encoder run by ``workers`` lanes: the cores
    shared among them (one each where there is a lane a core)."""
    return max(1, (os.cpu_count() or 1) // workers)


CHANGED = "the file changed while the index was being built"


@dataclass
class Embedded:
    """Embeddings of the photos that decoded (rows follow ``done``), and the skipped ones."""

    vectors: np.ndarray
    done: list[PhotoFile] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    """Why a photo is unusable; ``retry`` when the cause may pass (a read error)."""

    error: str
    retry: bool = False


@dataclass(frozen=True)
class Decoded:
    """One photo as an encoder input, with its (width, height)."""

    array: np.ndarray
    size: tuple[int, int]


def decode_photo(
    path: Path,
    sha256: str,
    prep: Preprocessing,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    max_decode_pixels: int = MAX_DECODE_PIXELS,
    edges: EdgeConfig | None = None,
    size: int | None = None,
) -> Decoded | Failure:
    """Read one photo once, check that those bytes are the ones scanned (``sha256``, and
    ``size`` when known), and preprocess them (with the pseudo-sketch where ``edges`` says,
    as ``OnnxEncoder.input_array``); a Failure when it is unusable. A failure is about the
    scanned bytes, so it is remembered, unless they could not be read or had changed
    (``retry``)."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return Failure(CHANGED, retry=True)
            if info.st_size > max_bytes:  # refused unread; the same size is the same failure
                same = info.st_size == size if size is not None else _digest(handle) == sha256
                too_big = f"{info.st_size} bytes; at most {max_bytes} are accepted"
                return Failure(too_big if same else CHANGED, retry=not same)
            data = handle.read(max_bytes + 1)
    except OSError as err:
        return Failure(f"cannot read the file ({err.strerror or err})", retry=True)
    if len(data) > max_bytes or hashlib.sha256(data).hexdigest() != sha256:
        return Failure(CHANGED, retry=True)
    limits = DecodeLimits(max_pixels, MAX_JPEG_SCANS, prep.image_size, max_decode_pixels)
    try:
        img, shown = decode_image_bytes(data, limits, "<photo>")
    except ImageError as err:
        return Failure(str(err).removeprefix("<photo>: "))
    return Decoded(encoder_input_array(img, prep, edges), shown)  # the photo's size, not a draft's


def _digest(handle: BinaryIO) -> str:
    handle.seek(0)
    return hashlib.file_digest(handle, "sha256").hexdigest()


def check_batching(batch_size: int, workers: int) -> None:
    """ValueError unless both are at least 1 (every embedding engine takes them)."""
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch size and workers must be at least 1 (got {batch_size}, {workers})")


def embed_photos(
    encoder: OnnxEncoder,
    root: Path,
    photos: Sequence[PhotoFile],
    batch_size: int = 32,
    workers: int = 4,
    progress: bool = False,
) -> Embedded:
    """Embed ``photos`` (paths relative to ``root``) on ``workers`` lanes; unusable ones go to
    ``skipped``. Give ``encoder`` ``lane_threads(workers)`` intra-op threads (``rebuild``
    does); the vectors do not depend on it."""
    check_batching(batch_size, workers)
    prep = encoder.metadata.preprocessing
    # fewer photos than lanes x batch_size: smaller batches, so that every lane (core) works
    size = max(1, min(batch_size, -(-len(photos) // workers)))
    batches = [photos[i : i + size] for i in range(0, len(photos), size)]
    out = Embedded(np.zeros((0, encoder.embedding_dim), np.float32))

    def lane(batch: Sequence[PhotoFile]) -> tuple[list[Failure | tuple[int, int]], np.ndarray]:
        """One batch decoded and encoded: each photo's Failure or size, and the vectors of the
        decoded ones. The input arrays go here, so a finished batch waiting for an earlier
        one holds only its vectors."""
        results = [
            decode_photo(root / p.path, p.sha256, prep, edges=encoder.edges, size=p.size)
            for p in batch
        ]
        arrays = [r.array for r in results if isinstance(r, Decoded)]
        vectors = encoder.embed_arrays(np.stack(arrays)) if arrays else out.vectors
        return [r.size if isinstance(r, Decoded) else r for r in results], vectors

    parts = [out.vectors]
    bar = tqdm(total=len(photos), desc="embed photos", unit="photo", disable=not progress)
    with ThreadPoolExecutor(workers) as pool, bar:
        # ``map`` submits every batch (paths only) at once; ``workers`` run at a time, in order
        for batch, (results, vectors) in zip(batches, pool.map(lane, batches), strict=True):
            for photo, result in zip(batch, results, strict=True):
                if isinstance(result, Failure):
                    out.skipped.append(
                        Skipped(photo.path, photo.sha256, result.error, result.retry)
                    )
                    continue
                out.done.append(photo)
                out.sizes.append(result)
            parts.append(vectors)
            bar.update(len(batch))
    out.vectors = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    return out
