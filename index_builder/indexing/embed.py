"""Embed gallery photos with the exported photo encoder: parallel decoding, batched inference.

Worker threads read, check and decode files into input arrays (Pillow and hashlib release the
GIL) while the encoder runs the previous batch; up to ``PREFETCH`` batches are decoded ahead.
A file that cannot be decoded, or whose bytes no longer match the hash it was scanned with,
is skipped and reported, never fatal; read errors and changed files are marked ``retry`` (the
next rebuild tries them again), decode failures are not (the same bytes fail the same way).

Memory: a file's header is read first; a file declaring too many pixels, or larger than
``MAX_FILE_BYTES``, is refused before its bytes are read. JPEGs (up to ``MAX_PIXELS``) are
decoded in draft mode, by libjpeg's DCT scaling, to no less than the encoder's input size, so
a 100 MP JPEG costs ~11 MB; other formats are decoded whole, so their limit is lower
(``MAX_DECODE_PIXELS``). Measured peaks (``bench/gallery_decode_memory.py``): at most ~8 bytes
a pixel (RGBA, 16-bit grey), with the file's bytes ``PER_IMAGE_PEAK_BYTES`` bounds one decode;
the default worker count keeps workers x that within ``MEMORY_BUDGET_BYTES``.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gallery_store.photos import MAX_PIXELS
from index_builder.indexing.scan import PhotoFile, Skipped
from model.encoder import OnnxEncoder
from model.preprocess import JPEG_FORMATS, ImageError, Preprocessing, load_image
from model.pseudo_sketch import EdgeConfig, encoder_input_array

MAX_DECODE_PIXELS = 32_000_000  # larger images of other formats are refused (decoded whole)
MAX_FILE_BYTES = 128 * 2**20  # larger files are refused before they are read
MAX_JPEG_SCANS = 100  # progressive JPEGs have about a dozen; thousands cost seconds each
BYTES_PER_PIXEL = 16  # measured <= 8 (RGBA, 16-bit grey); twice that for the odd modes
PER_IMAGE_PEAK_BYTES = MAX_FILE_BYTES + BYTES_PER_PIXEL * MAX_DECODE_PIXELS  # ~640 MB
MEMORY_BUDGET_BYTES = 4 * 2**30  # the default workers decode within this


def default_workers() -> int:
    """Decoding threads: one a core, at most 8, and no more than the memory budget allows."""
    return max(1, min(8, os.cpu_count() or 1, MEMORY_BUDGET_BYTES // PER_IMAGE_PEAK_BYTES))


PREFETCH = 2
ORIENTATION = 0x0112  # the EXIF tag
_BYTES_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")  # Pillow names the buffer


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
) -> Decoded | Failure:
    """Read, check and preprocess one photo (with its pseudo-sketch where ``edges`` says, as
    ``OnnxEncoder.input_array``); a Failure when it is unusable."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            limits = (max_pixels, max_decode_pixels, max_bytes)
            size = _check_header(handle, info, *limits)
            if isinstance(size, Failure):
                return size
            handle.seek(0)
            data = handle.read()
    except OSError as err:
        return Failure(f"cannot read the file ({err.strerror or err})", retry=True)
    if hashlib.sha256(data).hexdigest() != sha256:
        return Failure("the file changed while the index was being built", retry=True)
    try:
        img = load_image(
            data, max_pixels, max_jpeg_scans=MAX_JPEG_SCANS, draft_size=prep.image_size
        )
    except ImageError as err:
        return Failure(_BYTES_REPR.sub("the file", str(err).removeprefix("<upload>: ")))
    return Decoded(encoder_input_array(img, prep, edges), size)  # the photo's size, not the draft's


def _check_header(
    handle: object,
    info: os.stat_result,
    max_pixels: int,
    max_decode_pixels: int,
    max_bytes: int,
) -> Failure | tuple[int, int]:
    """A Failure for a file that is not regular, too large, or declares too many pixels in
    its header (JPEGs up to ``max_pixels``, others ``max_decode_pixels``); else the photo's
    (width, height) as shown (EXIF orientation applied)."""
    if not stat.S_ISREG(info.st_mode):
        return Failure("not a regular file")
    try:
        with Image.open(handle) as img:  # reads the header only
            (width, height), fmt = img.size, img.format
            turned = img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
    except Image.DecompressionBombError as err:
        return Failure(f"a decompression bomb ({err})")
    except (OSError, SyntaxError, ValueError) as err:
        if type(err) is OSError and err.errno is not None:
            raise  # a read error, not a format error
        return Failure(f"not a readable image ({err})")
    limit = max_pixels if fmt in JPEG_FORMATS else min(max_pixels, max_decode_pixels)
    if width * height > limit:
        kind = "for a JPEG" if fmt in JPEG_FORMATS else f"for {fmt or 'this format'}"
        return Failure(f"{width}x{height} pixels; at most {limit} are accepted {kind}")
    if info.st_size > max_bytes:
        return Failure(f"{info.st_size} bytes; at most {max_bytes} are accepted")
    return (height, width) if turned else (width, height)


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
    """Embed ``photos`` (paths relative to ``root``); unusable ones go to ``skipped``."""
    check_batching(batch_size, workers)
    prep = encoder.metadata.preprocessing
    out = Embedded(np.zeros((0, encoder.embedding_dim), np.float32))
    parts = [out.vectors]
    bar = tqdm(total=len(photos), desc="embed photos", unit="photo", disable=not progress)
    with ThreadPoolExecutor(workers) as pool, bar:
        decoded = _decoded_batches(pool, root, photos, batch_size, prep, encoder.edges)
        for batch, results in decoded:
            arrays = []
            for photo, result in zip(batch, results, strict=True):
                if isinstance(result, Failure):
                    out.skipped.append(
                        Skipped(photo.path, photo.sha256, result.error, result.retry)
                    )
                    continue
                arrays.append(result.array)
                out.done.append(photo)
                out.sizes.append(result.size)
            if arrays:
                parts.append(encoder.embed_arrays(np.stack(arrays)))
            bar.update(len(batch))
    out.vectors = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    return out


def _decoded_batches(
    pool: ThreadPoolExecutor,
    root: Path,
    photos: Sequence[PhotoFile],
    batch_size: int,
    prep: Preprocessing,
    edges: EdgeConfig | None,
) -> Iterator[tuple[Sequence[PhotoFile], list[Decoded | Failure]]]:
    """Batches of photos with their decode results, decoding ``PREFETCH`` batches ahead."""
    pending: deque[tuple[Sequence[PhotoFile], list[Future]]] = deque()
    starts = iter(range(0, len(photos), batch_size))

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            batch = photos[start : start + batch_size]
            futures = [
                pool.submit(decode_photo, root / p.path, p.sha256, prep, edges=edges) for p in batch
            ]
            pending.append((batch, futures))

    for _ in range(PREFETCH + 1):
        submit()
    while pending:
        batch, futures = pending.popleft()
        submit()
        yield batch, [f.result() for f in futures]
