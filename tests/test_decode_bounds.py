"""``load_image``'s decode bounds: JPEG scan counts, draft decoding, clean error messages."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image, ImageDraw

from model.preprocess import ImageError, ImageTooLargeError, load_image


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def drawing(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A sketch-like picture: black lines on white."""
    img = Image.new(mode, size, "white")
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.line([(0, 0), (w - 1, h - 1)], fill="black", width=max(1, w // 50))
    draw.ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], outline="black", width=max(1, w // 60))
    return img


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` grey pixels and holds none."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def scan_bomb(size: int = 1024, repeats: int = 300) -> bytes:
    """A progressive JPEG whose last scan is repeated ``repeats`` times (still decodable)."""
    data = encode(drawing((size, size)), "JPEG", progressive=True, quality=90)
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")  # EOI
    return data[:end] + data[last:end] * repeats + data[end:]


def test_a_jpeg_with_more_scans_than_allowed_is_refused_before_decoding() -> None:
    bomb = scan_bomb(repeats=300)
    assert load_image(bomb, max_jpeg_scans=None).size == (1024, 1024)  # it is a real image
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=r"<upload>: a JPEG of 3\d\d scans; at most 64"):
        load_image(bomb, max_jpeg_scans=64)
    assert time.perf_counter() - start < 0.5
    ordinary = encode(drawing((512, 512)), "JPEG", progressive=True)
    assert load_image(ordinary, max_jpeg_scans=64).size == (512, 512)


def test_the_scan_limit_applies_to_files_too(tmp_path) -> None:
    path = tmp_path / "bomb.jpg"
    path.write_bytes(scan_bomb(size=256, repeats=100))
    with pytest.raises(ImageTooLargeError, match=r"bomb\.jpg: a JPEG of"):
        load_image(path, max_jpeg_scans=50)


def test_draft_decodes_a_large_jpeg_small_but_never_below_the_asked_size() -> None:
    data = encode(drawing((4000, 3000)), "JPEG")
    img = load_image(data, draft_size=256)
    assert img.mode == "RGB"
    assert 256 <= min(img.size) < 512  # libjpeg's 1/8 scale: 500x375
    assert img.size == (500, 375)
    assert load_image(data).size == (4000, 3000)  # no draft unless asked
    assert load_image(encode(drawing((300, 300)), "JPEG"), draft_size=256).size == (300, 300)


@pytest.mark.parametrize(
    ("fmt", "mode", "params"),
    [("PNG", "L", {}), ("PNG", "RGBA", {}), ("WEBP", "RGB", {"lossless": True})],
)
def test_draft_reduces_other_formats_after_decoding(fmt: str, mode: str, params: dict) -> None:
    data = encode(drawing((2400, 1200), mode), fmt, **params)
    img = load_image(data, draft_size=224)
    assert img.mode == "RGB" and img.size == (480, 240)  # reduced by 5, both sides >= 224
    assert max(img.getpixel((0, 0))) < 64  # the line's end is still ink
    assert img.getpixel((img.width - 1, 0)) == (255, 255, 255)


def test_the_exif_orientation_survives_the_reduction() -> None:
    img = drawing((1600, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(img, "PNG", exif=exif.tobytes())
    assert load_image(data, draft_size=200).size == (200, 400)


def test_errors_carry_no_object_reprs() -> None:
    for junk in (b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40):
        with pytest.raises(ImageError) as info:
            load_image(junk)
        assert "0x" not in str(info.value) and "BytesIO" not in str(info.value)
        assert str(info.value).startswith("<upload>: not a readable image")


def test_a_decompression_bomb_names_the_callers_limit() -> None:
    data = png_declaring(20000, 20000)  # > 2x Pillow's MAX_IMAGE_PIXELS: refused at open
    with pytest.raises(ImageTooLargeError) as info:
        load_image(data, max_pixels=4_000_000)
    assert "4000000" in str(info.value) and "exceeds limit" not in str(info.value)


def test_a_palette_image_is_decoded_whole() -> None:
    # averaging palette indices would mix unrelated colours: such images keep their size
    data = encode(drawing((900, 600)).convert("P"), "PNG")
    img = load_image(data, draft_size=224)
    assert img.mode == "RGB" and img.size == (900, 600)
