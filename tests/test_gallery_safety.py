"""The builder never loses or corrupts the gallery: guarded commits, every file name, a safe
walk, correct pixels, retried read errors, bounded reads, paths as given, served-version
pruning and clear CLI errors, on small generated trees.

The encoder is the session's exported test model (``service_assets`` in conftest), so these
tests add no training of their own.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import HOUSE, RunningService, ServiceAssets, run_service, service_env
from PIL import Image

from gallery_store.base import Report, SkippedItem, StoreWriteError
from gallery_store.photos import display_path, sha256_file
from gallery_store.versions import (
    POINTER,
    SERVED,
    VERSIONS,
    load_current,
    load_version,
    version_names,
)
from index_builder.cli import main
from index_builder.indexing import scan as scan_module
from index_builder.indexing.embed import Decoded, Failure, decode_photo
from index_builder.indexing.rebuild import (
    BuildOptions,
    GuardError,
    build_new_index,
    plan_build,
    rebuild,
)
from index_builder.indexing.scan import PhotoFile, Scan, scan_photos
from model.encoder import OnnxEncoder
from model.preprocess import Preprocessing, load_image, to_rgb_on_white

QUIET = ["--no-progress", "--workers", "2", "--batch-size", "8"]
OPTIONS = BuildOptions(batch_size=8, workers=2)
LATIN1 = os.fsdecode(b"caf\xe9")  # a name that is not UTF-8: surrogate-escaped


@pytest.fixture
def photos(service_assets: ServiceAssets, tmp_path: Path) -> Path:
    """Ten real photos in two class folders."""
    root = tmp_path / "photos"
    sources = sorted(service_assets.photos.rglob("*.png"))[:10]
    for i, src in enumerate(sources):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / f"c{i % 2}" / f"p{i}.png")
    return root


@pytest.fixture
def model(service_assets: ServiceAssets) -> Path:
    return service_assets.model_dir


def _build(model: Path, photos: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "build-index",
            "--model",
            str(model),
            "--photos",
            str(photos),
            "--out",
            str(out),
            *QUIET,
            *extra,
        ]
    )


def _rebuild(index: Path, *extra: str) -> int:
    return main(["rebuild", "--index", str(index), *QUIET, *extra])


@pytest.fixture
def index(model: Path, photos: Path, tmp_path: Path) -> Path:
    out = tmp_path / "index"
    assert _build(model, photos, out) == 0
    return out


def _state(index: Path) -> tuple[bytes, list[str]]:
    return (index / POINTER).read_bytes(), version_names(index)


# --- 1. guarded commits ---------------------------------------------------------------------


def test_an_empty_photo_root_is_refused_and_recovery_reembeds_nothing(
    index: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _state(index)
    away = photos.rename(tmp_path / "unmounted")
    photos.mkdir()  # an unmounted disk: the mount point is there, empty
    capsys.readouterr()
    assert _rebuild(index) == 2
    err = capsys.readouterr().err
    assert "no photo would be indexed" in err and "--allow-empty" in err and str(photos) in err
    assert _state(index) == before
    # explicitly asked for: an empty version is written and served
    assert _rebuild(index, "--allow-empty", "--allow-shrink") == 0
    assert load_current(index).manifest.count == 0
    # the disk is back: every vector comes from the kept version, nothing is embedded
    photos.rmdir()
    away.rename(photos)
    assert _rebuild(index) == 0
    loaded = load_current(index)
    assert loaded.version == "v000003" and loaded.manifest.count == 10
    assert (loaded.report.embedded, loaded.report.reused) == (0, 10)


def test_a_rebuild_that_drops_too_much_is_refused_unless_allowed(
    index: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _state(index)
    for path in sorted(photos.rglob("*.png"))[:3]:  # 30% > 20%
        path.unlink()
    capsys.readouterr()
    assert _rebuild(index) == 2
    err = capsys.readouterr().err
    assert "3 of the 10 photos served by v000001 would be dropped (30%" in err
    assert "--allow-shrink" in err
    assert _state(index) == before
    with pytest.raises(GuardError, match="would be dropped"):
        rebuild(index, options=OPTIONS)
    assert _rebuild(index, "--max-shrink", "0.3") == 0
    assert load_current(index).manifest.count == 7


def test_an_empty_gallery_does_not_build(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert _build(model, tmp_path / "empty", tmp_path / "index") == 2
    assert "no photo would be indexed" in capsys.readouterr().err
    assert not (tmp_path / "index" / POINTER).exists()


def _unreadable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``folder`` unlistable: chmod 000, or where root ignores that, a scandir that
    fails there as the kernel would."""
    if os.geteuid() != 0:
        folder.chmod(0)
        return
    real = os.scandir

    def scandir(path: object) -> object:
        if Path(os.fspath(path)) == folder:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(scan_module.os, "scandir", scandir)


def test_an_unreadable_folder_is_refused_then_reported_as_skipped(
    index: Path, photos: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _state(index)
    _unreadable(photos / "c1", monkeypatch)
    capsys.readouterr()
    assert _rebuild(index) == 2
    err = capsys.readouterr().err
    assert "1 folders cannot be read (c1/)" in err and "--allow-shrink" in err
    assert _state(index) == before
    assert _rebuild(index, "--allow-shrink") == 0
    report = load_current(index).report
    assert [(s.path, s.error) for s in report.skipped] == [
        ("c1/", "cannot read the folder (Permission denied)")
    ]
    assert load_current(index).manifest.count == 5
    (photos / "c1").chmod(0o755)


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--batch-size", "-1"),
        ("--batch-size", "0"),
        ("--workers", "0"),
        ("--keep", "0"),
        ("--batch-size", "x"),
        ("--max-shrink", "2"),
    ],
)
def test_bad_flags_are_refused_before_anything_runs(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["rebuild", "--index", str(tmp_path / "i"), flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()


# --- 2. every file name works or is named ---------------------------------------------------


def test_names_that_are_not_utf8_are_stored_and_reported_losslessly(
    model: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = sorted(photos.rglob("*.png"))[0]
    shutil.copy(good, photos / "c0" / f"{LATIN1}.png")
    (photos / LATIN1).mkdir()  # a class folder with such a name too
    shutil.copy(good, photos / LATIN1 / "x.png")
    (photos / "c1" / f"{LATIN1}-broken.png").write_bytes(b"not a png")
    assert _build(model, photos, tmp_path / "index") == 0
    out = capsys.readouterr().out
    assert "skipped c1/caf\\xe9-broken.png: not a readable image" in out
    loaded = load_current(tmp_path / "index")
    items = {it.path: it for it in loaded.manifest.items}
    assert {f"c0/{LATIN1}.png", f"{LATIN1}/x.png"} <= set(items)
    assert items[f"{LATIN1}/x.png"].cls == LATIN1
    for item in items.values():  # every stored name finds its file again
        assert sha256_file(loaded.photo_path(item.id)) == item.sha256
    assert loaded.report.skipped[0].path == f"c1/{LATIN1}-broken.png"
    assert rebuild(tmp_path / "index", options=OPTIONS).version is None  # stable round trip
    assert display_path(f"{LATIN1}.png") == "caf\\xe9.png"


# --- 3. a safe walk -------------------------------------------------------------------------


def test_the_walk_survives_loops_special_files_and_pseudo_filesystems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "a" / "one.png").write_bytes(b"1")
    (root / "top.jpg").write_bytes(b"2")
    (root / "a" / "loop").symlink_to("..")  # back to the root
    (root / "a" / "self").symlink_to(".")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.png").write_bytes(b"3")
    (root / "link1").symlink_to(outside)
    (root / "link2").symlink_to(outside)  # the same folder twice: entered once
    (root / "proc").symlink_to("/proc")
    os.mkfifo(root / "a" / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "a" / "sock.png"))
    (root / "a" / "phone.HEIC").write_bytes(b"heic")
    (root / "a" / "drawing.svg").write_bytes(b"<svg/>")
    (root / "a" / "notes.txt").write_text("not an image, not reported")
    result: list[Scan] = []
    walker = threading.Thread(target=lambda: result.append(scan_photos(root, 2, progress=True)))
    walker.start()
    walker.join(60)
    sock.close()
    assert not walker.is_alive(), "the walk hung"
    scan = result[0]
    assert [f.path for f in scan.files] == ["a/one.png", "link1/o.png", "top.jpg"]
    skipped = {s.path: s.error for s in scan.unreadable}
    assert skipped == {
        "a/drawing.svg": "unsupported format (SVG); convert it to JPEG or PNG to index it",
        "a/phone.HEIC": "unsupported format (HEIC); convert it to JPEG or PNG to index it",
        "a/pipe.png": "a FIFO, not a photo",
        "a/sock.png": "a socket, not a photo",
    }
    assert "find photos" in capsys.readouterr().err  # progress while walking


def test_a_listed_fifo_is_never_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "list.txt").write_text("pipe.png\n")
    scan = scan_photos(tmp_path / "list.txt")
    assert [(s.path, s.error) for s in scan.unreadable] == [
        ("pipe.png", "cannot read the file (a FIFO, not a photo)")
    ]


# --- 4. correct pixels ----------------------------------------------------------------------


def _grey() -> np.ndarray:
    """An 8-bit greyscale ramp with every tone."""
    return (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _twins() -> dict[str, tuple[bytes, bytes]]:
    """Mode -> (file in that mode, its 8-bit twin)."""
    g = _grey()
    rgb = np.stack([g, 255 - g, g // 2], -1)
    alpha = ((np.arange(64)[None, :] * 4) % 256).astype(np.uint8).repeat(64, 0)
    l8 = _encode(Image.fromarray(g, "L"))
    rgba_twin = np.stack([g, g, g, alpha], -1)
    palette = Image.fromarray(rgb, "RGB").quantize(256)
    cmyk = Image.fromarray(rgb, "RGB").convert("CMYK")
    return {
        "I;16": (_encode(Image.fromarray(g.astype(np.uint16) * 257)), l8),
        "I;16B": (
            _encode(Image.frombytes("I;16B", (64, 64), (g.astype(">u2") * 257).tobytes()), "TIFF"),
            l8,
        ),
        "I": (_encode(Image.fromarray(g.astype(np.int32) * 257, "I"), "TIFF"), l8),
        "F": (_encode(Image.fromarray(g.astype(np.float32) / 255, "F"), "TIFF"), l8),
        "LA": (
            _encode(Image.fromarray(np.stack([g, alpha], -1), "LA")),
            _encode(Image.fromarray(rgba_twin, "RGBA")),
        ),
        "P with tRNS": (_encode_with(palette, transparency=3), _encode(_p_twin(palette, 3))),
        "CMYK": (_encode(cmyk, "TIFF"), _encode(cmyk.convert("RGB"))),
        "1": (
            _encode(Image.fromarray(g >= 128).convert("1")),
            _encode(Image.fromarray(np.where(g >= 128, 255, 0).astype(np.uint8), "L")),
        ),
        "I;16 with tRNS": (
            _trns16(g),
            _encode(
                Image.fromarray(
                    np.stack([g, g, g, np.where(g == 7, 0, 255).astype(np.uint8)], -1), "RGBA"
                )
            ),
        ),
        # 16-bit PNGs Pillow opens as 8-bit modes (grey+alpha, RGB, RGBA)
        "RGBA from 16-bit grey+alpha": (
            _png16(np.stack([g, alpha], -1), 4),
            _encode(Image.fromarray(rgba_twin, "RGBA")),
        ),
        "RGB from 16-bit": (_png16(rgb, 2), _encode(Image.fromarray(rgb, "RGB"))),
        "RGBA from 16-bit": (
            _png16(np.dstack([rgb, alpha]), 6),
            _encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")),
        ),
    }


def _png16(pixels8: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (Pillow writes none but greyscale) of 8-bit ``pixels8`` x 257."""
    height, width = pixels8.shape[:2]
    rows = (pixels8.astype(">u2") * 257).reshape(height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _p_twin(palette: Image.Image, transparent: int) -> Image.Image:
    rgba = np.asarray(palette.convert("RGBA")).copy()
    rgba[..., 3] = np.where(np.asarray(palette) == transparent, 0, 255)
    return Image.fromarray(rgba, "RGBA")


def _trns16(g: np.ndarray) -> bytes:
    img = Image.fromarray(g.astype(np.uint16) * 257)
    return _encode_with(img, transparency=7 * 257)


def _encode_with(img: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **params)
    return buf.getvalue()


@pytest.mark.parametrize("mode", list(_twins()))
def test_every_mode_loads_like_its_8bit_twin(mode: str) -> None:
    data, twin = _twins()[mode]
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == mode.split(" ")[0]  # the file really is in that mode
    loaded = load_image(data)
    expected = np.asarray(load_image(twin), dtype=np.int16)
    got = np.asarray(loaded, dtype=np.int16)
    assert loaded.mode == "RGB" and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1, mode


def test_premultiplied_and_palette_alpha_modes_go_onto_white() -> None:
    g = _grey()
    alpha = np.full((64, 64), 128, np.uint8)
    straight = Image.fromarray(np.stack([g, g, g, alpha], -1), "RGBA")
    expected = np.asarray(to_rgb_on_white(straight), np.int16)
    g_pre = (g.astype(np.uint16) * 128 // 255).astype(np.uint8)  # Pillow's RGBA -> La drops alpha
    premultiplied = Image.fromarray(np.stack([g_pre, alpha], -1), "LA")
    premultiplied = Image.frombytes("La", (64, 64), premultiplied.tobytes())
    images = {m: straight.convert(m) for m in ("PA", "RGBa", "LA")} | {"La": premultiplied}
    for mode, img in images.items():
        assert img.mode == mode
        got = np.asarray(to_rgb_on_white(img), np.int16)
        assert np.abs(got - expected).max() <= 3, mode  # premultiplying rounds


def test_a_16bit_photo_embeds_like_its_8bit_twin(model: Path, tmp_path: Path) -> None:
    g = _grey()
    encoder = OnnxEncoder(model, "photo")
    deep = load_image(_encode(Image.fromarray(g.astype(np.uint16) * 257)))
    flat = load_image(_encode(Image.fromarray(g, "L")))
    white = Image.new("RGB", (64, 64), "white")
    v = encoder.embed_images([deep, flat, white])
    assert float(v[0] @ v[1]) > 0.999
    assert float(v[0] @ v[2]) < float(v[0] @ v[1]) - 0.01  # not the blank image it once was


# --- 5. only deterministic failures are remembered ------------------------------------------


def test_read_errors_are_retried_and_decode_failures_remembered(tmp_path: Path) -> None:
    prep = Preprocessing(image_size=32)
    png = _encode(Image.fromarray(_grey(), "L"))
    (tmp_path / "ok.png").write_bytes(png)
    assert isinstance(
        decode_photo(tmp_path / "ok.png", sha256_file(tmp_path / "ok.png"), prep), Decoded
    )
    gone = decode_photo(tmp_path / "gone.png", "0" * 64, prep)
    assert isinstance(gone, Failure) and gone.retry and "cannot read the file" in gone.error
    changed = decode_photo(tmp_path / "ok.png", "0" * 64, prep)
    assert isinstance(changed, Failure) and changed.retry
    (tmp_path / "bad.png").write_bytes(png[: len(png) // 2])
    bad = decode_photo(tmp_path / "bad.png", sha256_file(tmp_path / "bad.png"), prep)
    assert isinstance(bad, Failure) and not bad.retry and "not a readable image" in bad.error
    # the next plan tries the read error again, whatever the name of a copy, but not the
    # decode failure; an old report's read error (before ``retry``) is retried too
    report = Report(
        mode="full",
        reason="x",
        skipped=[
            SkippedItem(
                path="r.png", sha256="a" * 64, error="cannot read the file (I/O)", retry=True
            ),
            SkippedItem(
                path="old.png", sha256="c" * 64, error="cannot read the file (Input/output)"
            ),
            SkippedItem(path="d.png", sha256="b" * 64, error="not a readable image (x)"),
        ],
    )

    class Base:  # plan_build reads only these two fields of a loaded version
        manifest = type("M", (), {"items": []})()

    Base.report = report  # type: ignore[attr-defined]
    files = [
        PhotoFile("copy.png", None, "a" * 64),
        PhotoFile("d.png", None, "b" * 64),
        PhotoFile("old.png", None, "c" * 64),
    ]
    plan = plan_build(Scan(tmp_path, tmp_path, files, []), [Base()])  # type: ignore[list-item]
    assert [p.path for p in plan.to_embed] == ["copy.png", "old.png"]
    assert [s.path for s in plan.carried] == ["d.png"]


# --- 6. bounded memory ----------------------------------------------------------------------


def test_huge_files_and_headers_are_refused_before_decoding(tmp_path: Path) -> None:
    prep = Preprocessing(image_size=32)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_encode(Image.new("L", (8_000, 8_000)))[:64])  # IHDR declares 64 MP
    result = decode_photo(bomb, sha256_file(bomb), prep, max_pixels=10_000_000)
    assert isinstance(result, Failure) and not result.retry
    assert result.error == "8000x8000 pixels; at most 10000000 are accepted for PNG"
    small = _encode(Image.new("L", (8, 8)))
    padded = tmp_path / "padded.png"
    with open(padded, "wb") as f:
        f.write(small)
        f.truncate(3 * 2**30)  # 3 GB, sparse: costs nothing unless read
    # refused unread; the size the scan hashed says it is the same file
    result = decode_photo(padded, "0" * 64, prep, size=3 * 2**30)
    assert isinstance(result, Failure) and not result.retry
    assert result.error.startswith(f"{3 * 2**30} bytes; at most")
    # it grew after the scan: not the bytes scanned, so tried again next time
    result = decode_photo(padded, "0" * 64, prep, size=len(small))
    assert isinstance(result, Failure) and result.retry and "changed" in result.error


def test_the_stored_size_is_the_photos_not_the_drafts(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees
    path = tmp_path / "big.jpg"
    Image.fromarray(np.zeros((800, 1200, 3), np.uint8)).save(path, exif=exif.tobytes())
    result = decode_photo(path, sha256_file(path), Preprocessing(image_size=32))
    assert isinstance(result, Decoded) and result.size == (800, 1200)  # drafted at 1/8


# --- 7. paths as given ----------------------------------------------------------------------


def test_a_repointed_photo_link_is_followed(
    model: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = Path(shutil.copytree(photos, tmp_path / "second"))
    shutil.copy(sorted(photos.rglob("*.png"))[0], second / "c0" / "extra.png")
    link = tmp_path / "current-photos"
    link.symlink_to(photos)
    assert _build(model, link, tmp_path / "index") == 0
    loaded = load_current(tmp_path / "index")
    assert loaded.manifest.photos_root == str(link) and loaded.manifest.source == str(link)
    link.unlink()
    link.symlink_to(second)
    result = rebuild(tmp_path / "index", options=OPTIONS)
    assert result.version == "v000002" and result.report.added == 1
    assert load_current(tmp_path / "index").manifest.count == 11


# --- 8. pruning counts served versions ------------------------------------------------------


def test_pruning_keeps_the_last_served_version_and_removes_orphans(
    index: Path, photos: Path
) -> None:
    shutil.copy(sorted(photos.rglob("*.png"))[0], photos / "c0" / "copy1.png")
    assert _rebuild(index, "--keep", "2") == 0  # v2 served
    # a build killed after writing v3 but before moving CURRENT, and its pointer temporary
    shutil.copytree(index / VERSIONS / "v000002", index / VERSIONS / "v000003")
    (index / f".{POINTER}.4242.tmp").write_text("{}")
    shutil.copy(sorted(photos.rglob("*.png"))[1], photos / "c0" / "copy2.png")
    assert _rebuild(index, "--keep", "2") == 0
    # the never-served v3 went first (it held disk space), so the new version is v3 again
    assert load_current(index).version == "v000003"
    assert version_names(index) == ["v000002", "v000003"]
    assert sorted(json.loads((index / SERVED).read_text())) == ["v000002", "v000003"]
    assert not list(index.glob(".CURRENT.*"))
    # killed after moving CURRENT to v3 but before recording it: the next commit records it
    (index / SERVED).write_text(json.dumps({"v000002": ""}))
    shutil.copy(sorted(photos.rglob("*.png"))[2], photos / "c0" / "copy3.png")
    assert _rebuild(index, "--keep", "2") == 0
    assert version_names(index) == ["v000003", "v000004"]


# --- 9. clear CLI errors --------------------------------------------------------------------


def test_operator_mistakes_get_clear_errors_and_change_nothing(
    model: Path, photos: Path, index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = sorted(photos.rglob("*.png"))[0]
    cases = [
        (
            [
                "build-index",
                "--model",
                str(model),
                "--photos",
                str(image),
                "--out",
                str(tmp_path / "i1"),
            ],
            f"{image}: an image, not a folder or list file",
        ),
        (
            ["build-index", "--model", str(model), "--photos", str(photos), "--out", str(image)],
            f"{image}: a file, not a folder",
        ),
        (
            [
                "rebuild",
                "--index",
                str(tmp_path / "TYPO"),
                "--photos",
                str(photos),
                "--model",
                str(model),
            ],
            f"{tmp_path / 'TYPO'}: no gallery index here",
        ),
        (
            [
                "build-index",
                "--model",
                str(tmp_path / "nomodel"),
                "--photos",
                str(photos),
                "--out",
                str(tmp_path / "i2"),
            ],
            "not a model directory",
        ),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main([*args, *QUIET]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "TYPO").exists() and not (tmp_path / "i1" / POINTER).exists()
    (tmp_path / "volume").mkdir()  # an existing empty folder (a fresh volume) takes a first build
    assert (
        main(
            [
                "rebuild",
                "--index",
                str(tmp_path / "volume"),
                "--photos",
                str(photos),
                "--model",
                str(model),
                *QUIET,
            ]
        )
        == 0
    )
    assert load_current(tmp_path / "volume").manifest.count == 10
    binary = tmp_path / "list.txt"
    binary.write_bytes("c0/p0.png\n".encode("utf-16"))
    assert (
        main(
            [
                "build-index",
                "--model",
                str(model),
                "--photos",
                str(binary),
                "--out",
                str(tmp_path / "i3"),
                *QUIET,
            ]
        )
        == 2
    )
    assert f"{binary}:1: binary data" in capsys.readouterr().err


def test_list_files_with_a_bom_or_latin1_names_work(
    model: Path, photos: Path, tmp_path: Path
) -> None:
    os.rename(photos / "c0" / "p0.png", photos / "c0" / f"{LATIN1}.png")
    listing = photos / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbfc0/caf\xe9.png\nc0/p2.png\tcats\n")
    assert _build(model, listing, tmp_path / "index") == 0
    items = load_current(tmp_path / "index").manifest.items
    assert [(it.path, it.cls) for it in items] == [
        (f"c0/{LATIN1}.png", "c0"),
        ("c0/p2.png", "cats"),
    ]


def test_an_unreadable_current_has_a_way_forward(
    index: Path, model: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for garbage in (b"", b"garbage"):
        (index / POINTER).write_bytes(garbage)
        capsys.readouterr()
        assert _rebuild(index) == 2
        err = capsys.readouterr().err
        assert "unreadable pointer" in err and "--photos PHOTOS --model MODEL_DIR" in err
    assert _rebuild(index, "--photos", str(photos), "--model", str(model)) == 0
    loaded = load_current(index)
    assert loaded.version == "v000002" and loaded.report.embedded == 0  # reused from v1
    assert load_version(index, "v000001").manifest.count == 10


def test_the_summary_counts_skips_beyond_the_first_twenty(
    index: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(25):
        (photos / "c0" / f"bad{i:02d}.png").write_bytes(b"x" * (i + 1))
    capsys.readouterr()
    assert _rebuild(index) == 0
    out = capsys.readouterr().out
    assert out.count("  skipped c0/bad") == 20 and "... and 5 more skipped" in out
    assert len(load_current(index).report.skipped) == 25


# --- 10. second round: bytes read once, live readers, full disks, counting, names -----------


def test_a_photo_cut_short_while_a_build_reads_it_is_tried_again(
    model: Path, photos: Path, tmp_path: Path
) -> None:
    """``cp -r backup/. gallery/`` during a rebuild: the scan hashed the good photo, the
    decoder finds it empty or cut short. That is not the scanned photo's failure."""
    victim = sorted(photos.rglob("*.png"))[0]
    good = victim.read_bytes()
    scan = scan_photos(photos, 2)
    photo = next(p for p in scan.files if scan.absolute(p) == victim)
    prep = Preprocessing(image_size=32)
    for cut in (b"", good[:8], good[:40], good[: len(good) // 2]):
        victim.write_bytes(cut)
        result = decode_photo(victim, photo.sha256, prep, size=photo.size)
        assert isinstance(result, Failure) and result.retry, (len(cut), result)
        assert "changed" in result.error
    # the builder's own embed step after its own scan, then the next rebuild
    index = tmp_path / "index"
    assert _build(model, photos, index) == 0  # scans the cut file: a real decode failure
    skipped = load_current(index).report.skipped
    assert [s.path for s in skipped] == [photo.path] and not skipped[0].retry
    assert skipped[0].sha256 != photo.sha256  # remembered under the cut bytes' hash
    victim.write_bytes(good)  # restored
    assert _rebuild(index) == 0
    loaded = load_current(index)
    assert photo.path in {it.path for it in loaded.manifest.items} and not loaded.report.skipped


@pytest.fixture(scope="module")
def other_model(service_assets: ServiceAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's run exported again at another opset: another model fingerprint."""
    out = tmp_path_factory.mktemp("other-model") / "model"
    run = service_assets.model_dir.parent / "run"
    assert main(["export-onnx", "--run", str(run), "--out", str(out), "--opset", "18"]) == 0
    assert (
        OnnxEncoder(out, "photo").fingerprint
        != OnnxEncoder(service_assets.model_dir, "photo").fingerprint
    )
    return out


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.2)


def _filtered_searches(service: RunningService, cls: str) -> list[httpx.Response]:
    with service.client() as client:
        return [
            client.post("/v1/search", json={"strokes": HOUSE, "k": 3, "classes": [cls]}),
            client.post("/v1/search", json={"strokes": HOUSE, "k": 3}),
            client.get("/v1/photos/0/similar", params={"k": 3}),
        ]


@contextmanager
def _service_refusing_a_new_model(
    assets: ServiceAssets, other_model: Path, photos: Path, tmp: Path
) -> Iterator[tuple[RunningService, Path]]:
    """A service over v1 of a new index, after v2 was built by another model (which the
    service refuses: it keeps serving v1)."""
    index = tmp / "index"
    assert _build(assets.model_dir, photos, index) == 0
    env = service_env(assets, tmp, index_dir=index, watch_interval_s=0.3)
    with run_service(env, tmp / "service.log") as service:
        assert _rebuild(index, "--model", str(other_model)) == 0
        stats = lambda: httpx.get(service.url + "/v1/index", timeout=10).json()  # noqa: E731
        _wait_for(
            lambda: (stats()["last_reload_error"] or {}).get("version") == "v000002", "refused"
        )
        yield service, index


def test_pruning_spares_the_version_a_service_still_serves(
    service_assets: ServiceAssets, other_model: Path, photos: Path, tmp_path: Path
) -> None:
    with _service_refusing_a_new_model(service_assets, other_model, photos, tmp_path) as (
        service,
        index,
    ):
        shutil.copy(sorted(photos.rglob("*.png"))[0], photos / "c0" / "copy.png")
        assert _rebuild(index, "--keep", "1") == 0  # v3; v1 would go, but it is served
        assert version_names(index) == ["v000001", "v000003"]
        for response in _filtered_searches(service, "c0"):
            assert response.status_code == 200, response.text
            assert response.json()["index_version"] == "v000001"
        assert httpx.get(service.url + "/readyz", timeout=10).status_code == 200
    # nobody serves v1 now: the next build removes it
    shutil.copy(sorted(photos.rglob("*.png"))[1], photos / "c0" / "copy2.png")
    assert _rebuild(index, "--keep", "1") == 0
    assert version_names(index) == ["v000004"]


def test_a_version_removed_under_a_service_is_not_ready_never_a_500(
    service_assets: ServiceAssets, other_model: Path, photos: Path, tmp_path: Path
) -> None:
    with _service_refusing_a_new_model(service_assets, other_model, photos, tmp_path) as (
        service,
        index,
    ):
        shutil.rmtree(index / VERSIONS / "v000001")  # by hand, or by a builder of old
        ready = lambda: httpx.get(service.url + "/readyz", timeout=10)  # noqa: E731
        _wait_for(lambda: ready().status_code == 503, "not ready")
        assert "v000001 was removed" in ready().json()["detail"]
        for response in _filtered_searches(service, "c1"):  # from memory, still right
            assert response.status_code == 200, response.text
        # a version of the service's model becomes current: it falls back to that
        assert _rebuild(index, "--model", str(service_assets.model_dir)) == 0
        _wait_for(lambda: ready().status_code == 200, "ready again")
        assert ready().json()["index_version"] == "v000003"
        assert "Traceback" not in service.log()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, to run out of space for real (root only)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all of ``disk``'s free space but ``leave`` bytes."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(disk).free - leave))
    return filler


def _assert_nothing_half_written(index: Path) -> None:
    assert not list((index / VERSIONS).glob(".staging-*"))
    assert not list(index.glob(".*.tmp"))
    served = json.loads((index / SERVED).read_text())
    assert version_names(index) == sorted(served), "a version never served is left"
    load_current(index)  # verified against its checksums


def test_a_full_disk_is_one_clear_line_and_leaves_nothing_behind(
    model: Path, photos: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = small_disk / "index"
    assert _build(model, photos, index) == 0
    size = sum(f.stat().st_size for f in (index / VERSIONS / "v000001").iterdir())
    good = sorted(photos.rglob("*.png"))
    # every amount of space from none to more than a version needs: each write fails in turn
    for step, leave in enumerate([0, 4096, size // 4, size // 2, size - 4096, size, 2 * size]):
        _fill(small_disk, leave)
        shutil.copy(good[step % len(good)], photos / "c1" / f"new{step}.png")
        before = load_current(index).version
        capsys.readouterr()
        code = _rebuild(index)
        err = capsys.readouterr().err
        if code != 0:
            assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
            assert "No space left on device" in err and "free of" in err, err
            assert load_current(index).version == before
        assert "Traceback" not in err
        _assert_nothing_half_written(index)
    (small_disk / "filler").unlink()
    assert _rebuild(index) == 0
    assert load_current(index).manifest.count == len(list(photos.rglob("*.png")))
    _assert_nothing_half_written(index)


def test_a_full_disk_under_qdrant_local_mode_is_one_clear_line(
    model: Path, photos: Path, small_disk: Path
) -> None:
    from gallery_store.qdrant_store import QdrantStore
    from gallery_store.settings import StoreSettings

    store = QdrantStore(StoreSettings(store="qdrant", qdrant_path=small_disk / "qdrant"))
    collections = lambda: sorted(c.name for c in store.client.get_collections().collections)  # noqa: E731
    try:
        build_new_index(model, photos, store, OPTIONS)
        failures = 0
        for leave in (0, 4096, 16384, 65536):
            _fill(small_disk, leave)
            shutil.copy(sorted(photos.rglob("*.png"))[0], photos / "c1" / f"more{leave}.png")
            served, before = store.served(), collections()
            try:
                rebuild(store, options=OPTIONS)
            except StoreWriteError as err:
                failures += 1
                message = str(err)
                assert "\n" not in message and "writing version v0000" in message, message
                assert "free of" in message and f"{served} is served" in message, message
                assert store.served() == served and collections() == before
        assert failures
        (small_disk / "filler").unlink()
        rebuild(store, options=OPTIONS)
        assert store.load_current().manifest.count == len(list(photos.rglob("*.png")))
    finally:
        store.close()


def test_the_shrink_guard_counts_photos_not_contents(
    model: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = sorted(photos.rglob("*.png"))[0]
    gallery = tmp_path / "copies"
    (gallery / "c").mkdir(parents=True)
    for i in range(100):
        shutil.copy(one, gallery / "c" / f"p{i:03d}.png")
    index = tmp_path / "index"
    assert _build(model, gallery, index) == 0
    for path in sorted(gallery.rglob("*.png"))[1:]:
        path.unlink()
    capsys.readouterr()
    assert _rebuild(index) == 2
    assert "99 of the 100 photos served by v000001 would be dropped (99%" in capsys.readouterr().err
    assert _rebuild(index, "--allow-shrink") == 0
    # moving or renaming photos drops none
    (gallery / "c").rename(gallery / "d")
    assert _rebuild(index) == 0


def test_files_are_recognised_by_content_not_only_by_name(
    model: Path, photos: Path, tmp_path: Path
) -> None:
    jpeg = _encode(Image.open(sorted(photos.rglob("*.png"))[0]).convert("RGB"), "JPEG")
    names = ["saved.jfif", "pic.jpe", "IMG_0001", "space.jpg ", "photo.jpeg.bak", "UPPER.JPG"]
    for name in names:
        (photos / "c0" / name).write_bytes(jpeg)
    (photos / "c0" / "notes").write_text("just text, no image")
    (photos / "c0" / "TODO").write_text("P1 fix the scanner")  # not a PBM
    (photos / "c0" / "cars").write_text("BMW, Audi and the rest")  # not a BMP
    (photos / "c0" / "notes.txt").write_bytes(jpeg)  # a sidecar name: never read
    (photos / "c0" / "sketch_jxl").write_bytes(b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\0" * 64)
    index = tmp_path / "index"
    assert _build(model, photos, index) == 0
    loaded = load_current(index)
    indexed = {it.path for it in loaded.manifest.items}
    assert {f"c0/{name}" for name in names} <= indexed
    assert [(s.path, s.error) for s in loaded.report.skipped] == [
        ("c0/sketch_jxl", "unsupported format (JPEG XL); convert it to JPEG or PNG to index it")
    ]
    assert "c0/notes" not in indexed and "c0/notes.txt" not in indexed


def test_identical_bad_files_odd_names_and_a_closed_output(
    model: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = b"\xff\xd8\xff\xe0 this is not really a JPEG"
    for i in range(60):
        (photos / "c0" / f"bad{i:03d}.jpg").write_bytes(bad)
    for name in ("0new\nline.jpg", "0esc\x1b[31mred.jpg", "0bidi\u202egpj.jpg"):
        (photos / "c0" / name).write_bytes(bad)  # listed first
    index = tmp_path / "index"
    assert _build(model, photos, index) == 0
    out = capsys.readouterr().out
    for line in out.splitlines():
        assert line.startswith((str(index), "  ")), line  # no name splits a line
    assert "skipped c0/0new\\nline.jpg: " in out and "0esc\\x1b[31mred.jpg" in out
    assert "0bidi\\u202egpj.jpg" in out
    skipped = load_current(index).report.skipped
    assert len(skipped) == 63 and len({s.error for s in skipped}) == 1
    for s in skipped:  # no file named in the message: it is carried to every copy
        assert "bad0" not in s.error and "<_io" not in s.error and str(tmp_path) not in s.error
    (photos / "c0" / "bad999.jpg").write_bytes(bad)
    assert _rebuild(index) == 0
    carried = next(s for s in load_current(index).report.skipped if s.path == "c0/bad999.jpg")
    assert carried.error == skipped[0].error
    # `rebuild | head -1` where the reader is gone before the summary: quiet, and done
    shutil.copy(sorted(photos.rglob("*.png"))[0], photos / "c0" / "late.png")
    proc = subprocess.Popen(
        [sys.executable, "-m", "index_builder", "rebuild", "--index", str(index), *QUIET],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
    assert "c0/late.png" in {it.path for it in load_current(index).manifest.items}
