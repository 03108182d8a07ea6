"""What an image file makes the decoder walk before its pixels, bounded from its bytes.

Pillow reads an image's container in Python: PNG chunks, JPEG markers (and the fill and stray
bytes between them, one byte at a time), GIF blocks, TIFF directories, the PNM header and its
comments. A small file can hold millions of these: 10 MB of empty PNG chunks or of JPEG fill
bytes cost Pillow seconds, on the thread and the GIL every request shares. ``check_structure``
walks the same structure first, in C-speed slices of the bytes, and refuses a file past
``StructureLimits`` with an ``ImageStructureError`` naming the limit, before Pillow sees it.
Costs after the walk (the pixels) are bounded by the pixel and JPEG-scan limits of the caller.

The format is recognised by content (``sniff_format``), never by a file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (magic bytes at offset 0, Pillow's format name); RIFF/WEBP, ISO-BMFF and PNM are below.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),  # a bare codestream
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"8BPS", "PSD"),
)
_BMFF_BRANDS = {  # ISO-BMFF 'ftyp' major brands of still images
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"heic": "HEIF",
    b"heix": "HEIF",
    b"heim": "HEIF",
    b"heis": "HEIF",
    b"hevc": "HEIF",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
}
_PNM = re.compile(rb"P[1-6Ff]\s+[#0-9]")  # a magic, then a comment or the width
_BMP_HEADERS = frozenset({12, 16, 40, 52, 56, 64, 108, 124})  # DIB header sizes
HEAD_BYTES = 32  # enough of a file for sniff_format


def sniff_format(head: bytes) -> str | None:
    """The image format of a file from its first ``HEAD_BYTES`` bytes (Pillow's format names,
    plus 'JPEG XL' and 'PSD'), or None when they are no image format known here."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return _BMFF_BRANDS.get(head[8:12])
    if _PNM.match(head):
        return "PPM"
    if head[:2] == b"BM":  # two letters a text may start with: the header must fit too
        return "BMP" if int.from_bytes(head[14:18], "little") in _BMP_HEADERS else None
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


class ImageStructureError(ValueError):
    """The container holds more structure than the limits allow (``model.preprocess``
    re-raises it as an ImageTooLargeError naming the image)."""


@dataclass(frozen=True)
class StructureLimits:
    """How much container structure a file may hold.

    ``segments``: PNG chunks, JPEG markers before the first scan, GIF blocks before the first
    frame, RIFF chunks, TIFF directory entries, TIFF strips or tiles; one more is allowed
    every ``bytes_per_segment`` bytes of file, so large real files (8 KiB PNG data chunks)
    pass. Pillow walks each in Python, a few microseconds apiece: the default bound costs
    under 50 ms for a 10 MiB file. ``padding``: JPEG fill (0xFF) and stray bytes between
    markers, which Pillow reads one at a time. ``jpeg_exif_bytes``: the EXIF of a JPEG, which
    Pillow parses while opening it (repeated EXIF segments are concatenated). ``compressed_text``:
    PNG zTXt, compressed iTXt and iCCP chunks, each inflated up to 1 MiB by Pillow.
    ``header_bytes``: the PNM header with its comments, and GIF comments. ``python_coded_bytes``:
    pixel data Pillow decodes in Python, about 1 microsecond a byte (run-length BMPs, plain-text
    PNMs); other formats' pixels are decoded in C.
    """

    segments: int = 4096
    bytes_per_segment: int = 4096
    padding: int = 4096
    jpeg_exif_bytes: int = 256 * 1024
    compressed_text: int = 16
    header_bytes: int = 64 * 1024
    python_coded_bytes: int = 1024 * 1024

    def max_segments(self, size: int) -> int:
        return self.segments + size // self.bytes_per_segment


DEFAULT_LIMITS = StructureLimits()


def check_structure(data: bytes, limits: StructureLimits = DEFAULT_LIMITS) -> str | None:
    """The format of ``data`` (``sniff_format``), after checking its structure against
    ``limits``; ImageStructureError past them. Truncated or malformed structure is left for
    the decoder to report: the walk only stops early."""
    fmt = sniff_format(data[:HEAD_BYTES])
    walk = _WALKS.get(fmt or "")
    if walk is not None:
        walk(data, limits, limits.max_segments(len(data)))
    return fmt


def _too_many(what: str, limit: int, why: str = "") -> ImageStructureError:
    return ImageStructureError(f"more than {limit} {what}; at most {limit} are accepted{why}")


def _too_many_segments(what: str, limit: int, limits: StructureLimits) -> ImageStructureError:
    per = limits.bytes_per_segment // 1024
    return _too_many(what, limit, f" ({limits.segments} plus one per {per} KiB of file)")


# --- JPEG ------------------------------------------------------------------------------------

_FF_RUN = re.compile(rb"\xff+")
_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # markers without a length
_SOS, _EOI, _APP1 = 0xDA, 0xD9, 0xE1


def _walk_jpeg(data: bytes, limits: StructureLimits, max_segments: int) -> None:
    """The markers Pillow reads in Python: from the start to the first scan (libjpeg, in C,
    reads the rest)."""
    pos, end, segments, padding, exif = 2, len(data), 0, 0, 0
    while pos < end:
        if data[pos] != 0xFF:  # stray bytes: Pillow steps over them one at a time
            found = data.find(b"\xff", pos)
            nxt = end if found < 0 else found
            padding += nxt - pos
            pos = nxt
        else:
            run = _FF_RUN.match(data, pos).end()  # type: ignore[union-attr]
            padding += run - pos - 1  # fill bytes before a marker
            _check_padding(padding, limits)
            if run >= end:
                break
            marker, pos = data[run], run + 1
            if marker == 0x00:  # a stuffed 0xFF00 outside a scan: stray bytes too
                padding += 2
            else:
                segments += 1
                if segments > max_segments:
                    raise _too_many_segments("JPEG markers", max_segments, limits)
                if marker in (_EOI, _SOS):
                    break
                if marker not in _STANDALONE:
                    length = int.from_bytes(data[pos : pos + 2], "big")
                    if marker == _APP1 and data.startswith(b"Exif\x00\x00", pos + 2):
                        exif += length
                        if exif > limits.jpeg_exif_bytes:
                            raise _too_many("bytes of EXIF", limits.jpeg_exif_bytes)
                    pos += max(length, 2)
        _check_padding(padding, limits)


def _check_padding(padding: int, limits: StructureLimits) -> None:
    if padding > limits.padding:
        raise _too_many("fill or stray bytes between JPEG markers", limits.padding)


# --- PNG -------------------------------------------------------------------------------------

_COMPRESSED_TEXT = (b"zTXt", b"iCCP")


def _walk_png(data: bytes, limits: StructureLimits, max_segments: int) -> None:
    """Every chunk: Pillow reads them all in Python, before the pixels and after."""
    pos, end, chunks, compressed = 8, len(data), 0, 0
    while pos + 8 <= end:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        chunks += 1
        if chunks > max_segments:
            raise _too_many_segments("PNG chunks", max_segments, limits)
        if kind in _COMPRESSED_TEXT or (kind == b"iTXt" and _itxt_compressed(data, pos + 8)):
            compressed += 1
            if compressed > limits.compressed_text:
                what = "compressed text or profile chunks (zTXt, iTXt, iCCP)"
                raise _too_many(what, limits.compressed_text)
        if kind == b"IEND":
            return
        pos += 12 + length


def _itxt_compressed(data: bytes, start: int) -> bool:
    keyword_end = data.find(b"\x00", start, start + 80)
    return keyword_end >= 0 and data[keyword_end + 1 : keyword_end + 2] == b"\x01"


# --- GIF -------------------------------------------------------------------------------------


def _walk_gif(data: bytes, limits: StructureLimits, max_segments: int) -> None:
    """The blocks before the first frame's pixels (Pillow reads later frames only on seek)."""
    if len(data) < 13:
        return
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    end, blocks, comments = len(data), 0, 0
    while pos < end and data[pos] == 0x21:  # an extension: label, then sub-blocks
        is_comment = data[pos + 1 : pos + 2] == b"\xfe"
        pos += 2
        while pos < end:
            size = data[pos]
            blocks += 1
            if blocks > max_segments:
                raise _too_many_segments("GIF blocks before the first image", max_segments, limits)
            pos += 1 + size
            if size == 0:
                break
            if is_comment:
                comments += size
                if comments > limits.header_bytes:
                    raise _too_many("bytes of GIF comments", limits.header_bytes)


# --- WebP ------------------------------------------------------------------------------------


def _walk_riff(data: bytes, limits: StructureLimits, max_segments: int) -> None:
    """The RIFF chunks (animation frames are chunks too): libwebp indexes each one."""
    pos, end, chunks = 12, len(data), 0
    while pos + 8 <= end:
        chunks += 1
        if chunks > max_segments:
            raise _too_many_segments("WebP chunks", max_segments, limits)
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 8 + length + (length & 1)


# --- TIFF ------------------------------------------------------------------------------------

_SUB_IFDS = (34665, 34853, 40965)  # EXIF, GPS, Interoperability: Pillow loads them on load
_OFFSETS = (273, 324)  # StripOffsets, TileOffsets: one tile of Pillow's each


def _walk_tiff(data: bytes, limits: StructureLimits, max_segments: int) -> None:
    """The first image's directory and the EXIF, GPS and interoperability directories it
    points to: their entries, and its strips or tiles."""
    order = "little" if data[:2] == b"II" else "big"
    big = int.from_bytes(data[2:4], order) == 43
    first = int.from_bytes(data[8:16] if big else data[4:8], order)
    pending, seen, entries = [first], set(), 0
    while pending:
        offset = pending.pop()
        if offset in seen or not 0 < offset < len(data):
            continue
        seen.add(offset)
        count_size, entry_size = (8, 20) if big else (2, 12)
        count = int.from_bytes(data[offset : offset + count_size], order)
        entries += count
        if entries > max_segments:
            raise _too_many_segments("TIFF directory entries", max_segments, limits)
        table = data[offset + count_size : offset + count_size + count * entry_size]
        for i in range(0, len(table) - entry_size + 1, entry_size):
            tag = int.from_bytes(table[i : i + 2], order)
            if tag in _OFFSETS:
                values = int.from_bytes(table[i + 4 : i + (12 if big else 8)], order)
                if values > max_segments:
                    raise _too_many_segments("TIFF strips or tiles", max_segments, limits)
            elif tag in _SUB_IFDS:
                kind = int.from_bytes(table[i + 2 : i + 4], order)
                start = i + (12 if big else 8)
                width = 8 if kind in (16, 18) else 4  # LONG8 / IFD8, else LONG / IFD
                pending.append(int.from_bytes(table[start : start + width], order))


# --- BMP and PNM -----------------------------------------------------------------------------

_BMP_RLE = {1: "RLE8", 2: "RLE4"}


def _walk_bmp(data: bytes, limits: StructureLimits, max_segments: int) -> None:
    """Run-length BMPs: Pillow decodes them in Python, one code at a time."""
    header = int.from_bytes(data[14:18], "little")
    compression = int.from_bytes(data[30:34], "little") if header >= 40 else 0
    if compression in _BMP_RLE:
        _check_python_coded(f"a run-length ({_BMP_RLE[compression]}) BMP", len(data), limits)


def _check_python_coded(what: str, size: int, limits: StructureLimits) -> None:
    if size > limits.python_coded_bytes:
        raise ImageStructureError(
            f"{what} of {size} bytes; such pixel data is decoded slowly (in Python), so at "
            f"most {limits.python_coded_bytes} bytes are accepted: convert it to PNG"
        )


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\r\n]*+)*+([^\s#]+)")  # possessive: no backtracking


def _walk_pnm(data: bytes, limits: StructureLimits, max_segments: int) -> None:
    """The header (magic, width, height, maximum value): Pillow reads its comments one byte
    at a time; and plain-text (P1 to P3) pixels, which it decodes in Python."""
    if data[1:2] in (b"1", b"2", b"3"):
        _check_python_coded("a plain-text PNM", len(data), limits)
    tokens = 2 if data[1:2] in (b"1", b"4") else 3
    pos = 2
    window = data[: limits.header_bytes + 1]
    for _ in range(tokens):
        match = _PNM_TOKEN.match(window, pos)
        if match is None:
            if len(window) > limits.header_bytes:
                raise _too_many("bytes of PNM header (with its comments)", limits.header_bytes)
            return  # malformed: the decoder says so
        pos = match.end()


_WALKS = {
    "JPEG": _walk_jpeg,
    "PNG": _walk_png,
    "GIF": _walk_gif,
    "WEBP": _walk_riff,
    "TIFF": _walk_tiff,
    "PPM": _walk_pnm,
    "BMP": _walk_bmp,
}
