"""Every image's structure is bounded before Pillow walks it (``model.image_structure``), the
EXIF orientation is read without walking the rest of the EXIF, and real images of every kind
still pass: shared by the service and the builder through ``model.preprocess``.

The time bounds are liveness bounds (each refused file cost Pillow seconds before), not
speed measurements.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps, PngImagePlugin

from bench.hostile import (
    before_first_scan,
    big_drawing,
    exif_with_shorts,
    insert_png_chunks,
    png_chunk,
    png_exif_bomb,
    small_jpeg,
    small_png,
    webp_exif_bomb,
)
from model.image_structure import check_structure, sniff_format
from model.preprocess import (
    DecodeLimits,
    ImageTooLargeError,
    decode_image_bytes,
    exif_orientation,
    load_image,
    to_rgb_on_white,
)

REFUSED_WITHIN_S = 1.0
STAMPS = Path("/usr/share/tuxpaint/stamps")
CLIPART = Path("/usr/share/openclipart/png")


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def drawing(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    img = Image.new(mode, size, "white")
    draw = ImageDraw.Draw(img)
    draw.line([(0, 0), (size[0] - 1, size[1] - 1)], fill="black", width=3)
    draw.rectangle([2, 2, 12, 8], fill="red" if mode == "RGB" else "black")
    return img


# --- recognition by content ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "expected"),
    [
        ("JPEG", {}, "JPEG"),
        ("PNG", {}, "PNG"),
        ("GIF", {}, "GIF"),
        ("WEBP", {}, "WEBP"),
        ("TIFF", {}, "TIFF"),
        ("BMP", {}, "BMP"),
        ("PPM", {}, "PPM"),
    ],
)
def test_formats_are_recognised_by_content(fmt: str, params: dict, expected: str) -> None:
    assert sniff_format(encode(drawing(), fmt, **params)[:32]) == expected


def test_other_content_is_no_image_format() -> None:
    for head in (b"", b"hello world", b"%PDF-1.7", b"PK\x03\x04", b"<svg xmlns=", b"P7\n"):
        assert sniff_format(head) is None, head
    assert sniff_format(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") == "HEIF"
    assert sniff_format(b"\x00\x00\x00\x0cJXL \r\n\x87\n") == "JPEG XL"


# --- real images pass ------------------------------------------------------------------------


@cache
def real_variety() -> dict[str, bytes]:
    """Images of every supported kind as cameras and tools write them."""
    img = drawing((320, 240))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0110] = 1, "Camera maker", "Model"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    icc = b"\x00" * 3000  # opaque to the checks
    frames = [drawing((96, 64)).rotate(i * 3) for i in range(300)]
    noise = Image.effect_noise((1600, 1600), 80).convert("RGB")
    small_idats = io.BytesIO()
    PngImagePlugin.ImageFile.MAXBLOCK, old = 8192, PngImagePlugin.ImageFile.MAXBLOCK
    try:
        noise.save(small_idats, "PNG")  # 8 KiB data chunks, as libpng writes them
    finally:
        PngImagePlugin.ImageFile.MAXBLOCK = old
    info = PngImagePlugin.PngInfo()
    for i in range(20):
        info.add_text(f"key{i}", "some text " * 20, zip=i % 2 == 0)
    return {
        "progressive JPEG with EXIF, ICC, XMP, comment": encode(
            img, "JPEG", progressive=True, exif=exif, icc_profile=icc, xmp=xmp, comment=b"hi"
        ),
        "MPO of two frames": encode(img, "MPO", save_all=True, append_images=[img.rotate(5)]),
        "PNG with text chunks": encode(img, "PNG", pnginfo=info),
        "noisy PNG in 8 KiB chunks": small_idats.getvalue(),
        "16-bit PNG": encode(
            Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16), "PNG"
        ),
        "APNG of 300 frames": encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "GIF of 300 frames with a comment": encode(
            frames[0], "GIF", save_all=True, append_images=frames[1:], comment=b"c" * 1000
        ),
        "animated WebP of 300 frames": encode(
            frames[0], "WEBP", save_all=True, append_images=frames[1:]
        ),
        "WebP with EXIF and XMP": encode(img, "WEBP", exif=exif, xmp=xmp),
        "multi-page LZW TIFF": encode(
            img, "TIFF", save_all=True, append_images=[img] * 3, compression="tiff_lzw"
        ),
        "TIFF of a noisy photo": encode(noise, "TIFF"),
        "BMP": encode(img, "BMP"),
        "PGM with a comment": b"P5\n# made by hand\n4 2\n255\n" + bytes(range(8)),
        "PPM": encode(img, "PPM"),
    }


@pytest.mark.parametrize("name", list(real_variety()))
def test_real_images_of_every_kind_pass(name: str) -> None:
    data = real_variety()[name]
    check_structure(data)
    img = load_image(data)
    assert img.mode == "RGB" and min(img.size) > 0


def test_the_real_image_collections_pass() -> None:
    paths = sorted(STAMPS.rglob("*.png"))[:3000] + sorted(CLIPART.rglob("*.png"))[:2000]
    if not paths:
        pytest.skip("no tuxpaint stamps or openclipart PNGs on this machine")
    refused = []
    for path in paths:
        try:
            check_structure(path.read_bytes())
        except ValueError as err:
            refused.append(f"{path}: {err}")
    assert not refused, refused[:5]


# --- hostile structures are refused before Pillow walks them ----------------------------------

Make = Callable[[int], bytes]


def gif_with(blocks: bytes) -> bytes:
    gif = encode(drawing(), "GIF")
    flags = gif[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    return gif[:start] + blocks + gif[start:]


def riff_with(chunks: bytes) -> bytes:
    webp = encode(drawing(), "WEBP", lossless=True)
    body = webp[12:] + chunks
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def tiff_with_entries(count: int) -> bytes:
    """A little-endian TIFF whose first directory has ``count`` entries (mostly a private
    tag) and a 1x1 image."""
    entries = [
        (256, 3, 1, 1),
        (257, 3, 1, 1),
        (258, 3, 1, 8),
        (262, 3, 1, 1),
        (273, 4, 1, 0),
        (277, 3, 1, 1),
        (278, 3, 1, 1),
        (279, 4, 1, 1),
    ]
    entries += [(40000 + i % 20000, 3, 1, 0) for i in range(max(0, count - len(entries)))]
    entries.sort(key=lambda e: e[0])
    table_at = 8
    pixel_at = table_at + 2 + 12 * len(entries) + 4
    packed = b"".join(
        struct.pack("<HHII", tag, kind, n, pixel_at if tag == 273 else value)
        for tag, kind, n, value in entries
    )
    return b"II*\x00" + struct.pack("<IH", table_at, len(entries)) + packed + b"\x00" * 4 + b"\x80"


def tiff_with_strips(strips: int) -> bytes:
    """A TIFF declaring ``strips`` one-row strips (StripOffsets and StripByteCounts)."""
    entries_at, n = 8, 8
    offsets_at = entries_at + 2 + 12 * n + 4
    counts_at = offsets_at + 4 * strips
    pixels_at = counts_at + 4 * strips
    entries = [
        (256, 3, 1, 1),
        (257, 4, 1, strips),
        (258, 3, 1, 8),
        (262, 3, 1, 1),
        (273, 4, strips, offsets_at),
        (277, 3, 1, 1),
        (278, 3, 1, 1),
        (279, 4, strips, counts_at),
    ]
    packed = b"".join(struct.pack("<HHII", *e) for e in entries)
    offsets = struct.pack(f"<{strips}I", *(pixels_at + i for i in range(strips)))
    counts = struct.pack(f"<{strips}I", *([1] * strips))
    head = b"II*\x00" + struct.pack("<IH", entries_at, n) + packed + b"\x00" * 4
    return head + offsets + counts + b"\x80" * strips


def bmp_rle8(codes: bytes, width: int = 1000, height: int = 1000) -> bytes:
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(codes), 0, 0, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(codes), 0, 0, offset) + info + palette + codes


def jpeg_with_exif_segments(count: int) -> bytes:
    """``count`` EXIF segments of 64 KB each (Pillow joins them and parses the result)."""
    exif = b"Exif\x00\x00" + exif_with_shorts(32_000)
    segment = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    return small_jpeg()[:2] + segment * count + small_jpeg()[2:]


HOSTILE: dict[str, tuple[Make, str]] = {
    "png: empty private chunks": (
        lambda n: insert_png_chunks(small_png(), png_chunk(b"prVt", b"") * (n // 12)),
        "PNG chunks",
    ),
    "png: empty data chunks": (
        lambda n: insert_png_chunks(small_png(), png_chunk(b"IDAT", b"") * (n // 12)),
        "PNG chunks",
    ),
    "png: chunks after the image data": (
        lambda n: small_png()[:-12] + png_chunk(b"tEXt", b"k\x00v") * (n // 15) + small_png()[-12:],
        "PNG chunks",
    ),
    "png: compressed text chunks": (
        lambda n: insert_png_chunks(
            small_png(), png_chunk(b"zTXt", b"k\x00\x00x\x9c\x03\x00\x00\x00\x00\x01") * 40
        ),
        "compressed text",
    ),
    "png: compressed iTXt chunks": (
        lambda n: insert_png_chunks(
            small_png(),
            png_chunk(b"iTXt", b"k\x00\x01\x00\x00\x00x\x9c\x03\x00\x00\x00\x00\x01") * 40,
        ),
        "compressed text",
    ),
    "jpeg: fill bytes before a marker": (
        lambda n: before_first_scan(small_jpeg(), b"\xff" * n),
        "fill or stray bytes",
    ),
    "jpeg: stray bytes between markers": (
        lambda n: before_first_scan(small_jpeg(), b"\x00" * n),
        "fill or stray bytes",
    ),
    "jpeg: stuffed 0xFF00 pairs between markers": (
        lambda n: before_first_scan(small_jpeg(), b"\xff\x00" * (n // 2)),
        "fill or stray bytes",
    ),
    "jpeg: empty APP15 segments": (
        lambda n: before_first_scan(small_jpeg(), b"\xff\xef\x00\x02" * (n // 4)),
        "JPEG markers",
    ),
    "jpeg: empty comment segments": (
        lambda n: before_first_scan(small_jpeg(), b"\xff\xfe\x00\x02" * (n // 4)),
        "JPEG markers",
    ),
    "jpeg: EXIF segments": (
        lambda n: jpeg_with_exif_segments(max(5, n // 64_000)),
        "bytes of EXIF",
    ),
    "gif: extension blocks before the image": (
        lambda n: gif_with(b"\x21\xfe\x01c\x00" * (n // 5)),
        "GIF blocks",
    ),
    "gif: one long comment": (
        lambda n: gif_with(b"\x21\xfe" + (b"\xff" + b"c" * 255) * (n // 256) + b"\x00"),
        "GIF comments",
    ),
    "webp: unknown chunks": (
        lambda n: riff_with(b"ABCD\x00\x00\x00\x00" * (n // 8)),
        "WebP chunks",
    ),
    "tiff: directory entries": (
        lambda n: tiff_with_entries(min(65535, n // 12)),
        "TIFF directory entries",
    ),
    "tiff: strips": (lambda n: tiff_with_strips(n // 9), "TIFF strips"),
    "pnm: a long comment": (
        lambda n: b"P6\n#" + b"c" * n + b"\n1 1\n255\n\x00\x00\x00",
        "PNM header",
    ),
    "pnm: comment lines": (lambda n: b"P5\n" + b"#\n" * (n // 2) + b"1 1\n255\n\x00", "PNM header"),
    "pnm: plain text pixels": (
        lambda n: b"P2\n%d 1\n255\n" % (n // 2) + b"1 " * (n // 2),
        "plain-text PNM",
    ),
    "bmp: run-length codes": (
        lambda n: bmp_rle8(b"\x00\x00" * (n // 2) + b"\x00\x01"),
        "run-length",
    ),
}


@pytest.mark.parametrize("size", [1 << 20, 10 << 20], ids=["1MiB", "10MiB"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_structure_is_refused_before_decoding(name: str, size: int) -> None:
    make, mentions = HOSTILE[name]
    data = make(size)
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        decode_image_bytes(data, DecodeLimits())
    took = time.perf_counter() - started
    assert info.value.code == "image_too_complex" and mentions in str(info.value), info.value
    assert "at most" in str(info.value)  # the limit is named
    assert took < REFUSED_WITHIN_S, f"{name}: {took:.2f} s"


def test_a_small_dose_of_each_structure_still_decodes() -> None:
    """The same constructions within the limits are ordinary images."""
    assert load_image(insert_png_chunks(small_png(), png_chunk(b"prVt", b"") * 100)).size
    assert load_image(before_first_scan(small_jpeg(), b"\xff" * 100)).size
    assert load_image(before_first_scan(small_jpeg(), b"\xff\xef\x00\x02" * 100)).size
    assert load_image(gif_with(b"\x21\xfe\x01c\x00" * 100)).size


# --- the EXIF orientation, without walking the EXIF -----------------------------------------

BASE = drawing((40, 24))


def with_orientation(fmt: str, how: str, value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = value, "maker"
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
        f'tiff:Orientation="{value}"/></rdf:RDF></x:xmpmeta>'
    )
    if how == "exif":
        extra = {"compression": "tiff_lzw"} if fmt == "TIFF" and value % 2 else {}
        return encode(BASE, fmt, exif=exif.tobytes(), **extra)
    if how == "xmp":
        return encode(BASE, fmt, xmp=xmp.encode())
    info = PngImagePlugin.PngInfo()
    if how == "raw profile":
        raw = exif.tobytes()
        info.add_text("Raw profile type exif", f"\nexif\n{len(raw):8}\n{raw.hex()}\n", zip=True)
    else:  # an iTXt XMP packet
        info.add_itxt("XML:com.adobe.xmp", xmp)
    return encode(BASE, "PNG", pnginfo=info)


CONTAINERS = [
    ("JPEG", "exif"),
    ("PNG", "exif"),
    ("WEBP", "exif"),
    ("TIFF", "exif"),
    ("JPEG", "xmp"),
    ("WEBP", "xmp"),
    ("PNG", "raw profile"),
    ("PNG", "itxt"),
]


@pytest.mark.parametrize(("fmt", "how"), CONTAINERS)
def test_the_orientation_is_applied_as_pillow_does(fmt: str, how: str) -> None:
    for value in range(1, 9):
        data = with_orientation(fmt, how, value)
        expected = to_rgb_on_white(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
        img, shown = decode_image_bytes(data, DecodeLimits())
        assert img.size == expected.size == shown, (fmt, how, value)
        assert np.array_equal(np.asarray(img), np.asarray(expected)), (fmt, how, value)


@pytest.mark.parametrize("make", [png_exif_bomb, webp_exif_bomb], ids=["png", "webp"])
def test_a_huge_exif_is_not_walked(make: Callable[[], bytes]) -> None:
    data = make()  # Orientation 6 and 10 MB of SHORTs: seconds in exif_transpose
    started = time.perf_counter()
    img, shown = decode_image_bytes(data, DecodeLimits(draft_size=224))
    assert time.perf_counter() - started < REFUSED_WITHIN_S
    assert shown == (256, 256) and img.size == (256, 256)
    turned = np.asarray(big_drawing(256).transpose(Image.Transpose.ROTATE_270), np.float32)
    assert np.abs(np.asarray(img.convert("L"), np.float32) - turned).mean() < 5  # as shown


def test_exif_orientation_reads_one_entry() -> None:
    assert exif_orientation(b"Exif\x00\x00" + exif_with_shorts(10, orientation=8)) == 8
    assert exif_orientation(exif_with_shorts(10, orientation=3)) == 3
    little = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    assert exif_orientation(little) == 6
    as_long = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x0112, 4, 1, 5)
    assert exif_orientation(as_long) == 5
    two_values = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 2, 6, 6)
    assert exif_orientation(two_values) == 0  # there, but not a number: no turn
    no_tag = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x010F, 2, 2, 0, 0)
    assert exif_orientation(no_tag) is None
    for junk in (b"", b"Exif\x00\x00", b"II*\x00\xff\xff\xff\xff", little[:14], b"not exif"):
        assert exif_orientation(junk) is None, junk
