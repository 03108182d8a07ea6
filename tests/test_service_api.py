"""The HTTP API against a real uvicorn on loopback, over a real model and index built by the
builder from real images: the contract, every kind of bad input (each its own case), a model
/ index mismatch, and a schemathesis run over the OpenAPI document; the contract, the bad
inputs and schemathesis on both stores (FAISS, Qdrant in local mode).
"""

from __future__ import annotations

import base64
import inspect
import io
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from conftest import (
    ADMIN_TOKEN,
    REPO,
    SHARED,
    RunningService,
    ServiceAssets,
    run_service,
    service_env,
)
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gallery_store.versions import Payload, commit_version, load_current, locked
from model.encoder import EncoderMetadata
from model.preprocess import render_strokes
from service.app import create_app
from service.inputs import InputError, decode_image
from service.settings import ServiceSettings

HOUSE = [
    [[20, 20, 230, 230, 20], [250, 110, 110, 250, 250]],
    [[20, 125, 230], [110, 10, 110]],
    [[100, 100, 150, 150], [250, 180, 180, 250]],
]
MAX_K, MAX_UPLOAD, MAX_PIXELS, MAX_STROKES = 50, 1_000_000, 4_000_000, 200  # the fixture's


@pytest.fixture(scope="module")
def client(any_service: RunningService) -> httpx.Client:
    with any_service.client() as c:
        yield c


@pytest.fixture(scope="module")
def sketch(service_assets: ServiceAssets) -> Path:
    """A real sketch PNG of a training class."""
    return service_assets.sketches()[len(service_assets.sketches()) // 2]


def encode(path: Path, fmt: str, **save: object) -> bytes:
    out = io.BytesIO()
    with Image.open(path) as img:
        img.convert("RGB").save(out, fmt, **save)
    return out.getvalue()


def upload(
    client: httpx.Client, data: bytes, k: object = None, name: str = "s.png"
) -> httpx.Response:
    fields = {} if k is None else {"k": str(k)}
    return client.post("/v1/search", files={"image": (name, data)}, data=fields)


def ranked(response: httpx.Response) -> list[tuple[int, float]]:
    assert response.status_code == 200, response.text
    return [(r["id"], r["score"]) for r in response.json()["results"]]


def assert_same_ranking(a: httpx.Response, b: httpx.Response) -> None:
    ra, rb = ranked(a), ranked(b)
    assert [i for i, _ in ra] == [i for i, _ in rb]
    np.testing.assert_allclose([s for _, s in ra], [s for _, s in rb], atol=1e-5)


# --- the contract ----------------------------------------------------------------------------


def test_service_imports_no_torch() -> None:
    code = "import sys, service.app, service.__main__; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_health_and_readiness(client: httpx.Client, service_assets: ServiceAssets) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    fingerprint = EncoderMetadata.load(service_assets.model_dir).fingerprint
    assert ready.json() | {"detail": None} == {
        "status": "ready",
        "detail": None,
        "index_version": "v000001",
        "model_fingerprint": fingerprint,
    }


def test_openapi_documents_the_versioned_api(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    assert set(doc["paths"]) >= {
        "/v1/search",
        "/v1/photos/{photo_id}",
        "/v1/index",
        "/v1/photos/{photo_id}/thumbnail",
        "/v1/admin/reload",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    body = doc["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert body["application/json"]["schema"]["properties"]["k"]["maximum"] == MAX_K


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_search_by_upload(
    client: httpx.Client, sketch: Path, service_assets: ServiceAssets, fmt: str
) -> None:
    response = upload(client, encode(sketch, fmt), k=5, name=f"s.{fmt.lower()}")
    body = response.json()
    assert response.status_code == 200, body
    assert body["index_version"] == "v000001" and body["took_ms"] > 0
    assert set(body["timing"]) == {"decode_ms", "queue_ms", "encode_ms", "search_ms", "batch_size"}
    results = body["results"]
    assert len(results) == 5
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    classes = {p.name for p in service_assets.photos.iterdir()}
    for r in results:
        assert set(r) == {"id", "score", "path", "class", "url", "thumbnail_url"}
        assert r["class"] in classes and r["path"].startswith(r["class"] + "/")
        assert r["url"].endswith(f"/v1/photos/{r['id']}?v=v000001")


def test_photo_and_cached_thumbnail(
    client: httpx.Client, sketch: Path, service_assets: ServiceAssets, any_service: RunningService
) -> None:
    top = upload(client, sketch.read_bytes(), k=1).json()["results"][0]
    photo = client.get(top["url"])
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/png"
    assert photo.content == (service_assets.photos / top["path"]).read_bytes()
    first = client.get(top["thumbnail_url"])
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(first.content)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 256
    cached = list((any_service.log_file.parent / "thumbnails").rglob("*.jpg"))
    assert len(cached) >= 1
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    assert client.get(top["thumbnail_url"]).content == first.content
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes  # made once


def test_base64_and_data_url_match_the_upload(client: httpx.Client, sketch: Path) -> None:
    data = sketch.read_bytes()
    b64 = base64.b64encode(data).decode()
    by_upload = upload(client, data, k=5)
    by_base64 = client.post("/v1/search", json={"image_base64": b64, "k": 5})
    by_data_url = client.post(
        "/v1/search", json={"image_base64": f"data:image/png;base64,{b64}", "k": 5}
    )
    assert_same_ranking(by_upload, by_base64)
    assert_same_ranking(by_upload, by_data_url)


def real_drawing(assets: ServiceAssets) -> tuple[list, Path] | None:
    """Strokes of a Quick, Draw! drawing and the PNG `prepare` rendered from them."""
    from index_builder.training.datasets.quickdraw import read_ndjson

    for drawing in read_ndjson(SHARED / "quickdraw" / "simplified" / "fish.ndjson"):
        png = assets.data / "sketch" / "fish" / f"{drawing.key_id}.png"
        if png.is_file():
            return [list(map(list, s)) for s in drawing.strokes], png
    return None


def test_strokes_are_rendered_as_prepare_renders(
    client: httpx.Client, service_assets: ServiceAssets, tmp_path: Path
) -> None:
    """One preprocessing path: strokes sent by a drawing client rank exactly as the sketch
    `prepare` rendered from the same strokes for training."""
    from index_builder.training.prepare import prepare_shared_data

    rendered = inspect.signature(render_strokes).parameters
    prepared = inspect.signature(prepare_shared_data).parameters
    for name in ("size", "stroke_width", "margin"):
        assert prepared[name].default == rendered[name].default
    found = real_drawing(service_assets) if service_assets.real else None
    if found is None:
        found = HOUSE, tmp_path / "house.png"
        render_strokes(HOUSE).convert("L").save(found[1])
    strokes, png = found
    by_strokes = client.post("/v1/search", json={"strokes": strokes, "k": 8})
    assert_same_ranking(by_strokes, upload(client, png.read_bytes(), k=8))


def test_k_defaults_and_caps_at_the_gallery(client: httpx.Client, sketch: Path) -> None:
    assert len(ranked(upload(client, sketch.read_bytes()))) == 10  # SBIR_DEFAULT_K
    count = client.get("/v1/index").json()["count"]
    assert len(ranked(upload(client, sketch.read_bytes(), k=MAX_K))) == min(MAX_K, count)


def full_ranking(client: httpx.Client) -> list[dict]:
    """Every photo, best first, for the house drawing."""
    count = client.get("/v1/index").json()["count"]
    body = client.post("/v1/search", json={"strokes": HOUSE, "k": min(count, MAX_K)}).json()
    assert len(body["results"]) == min(count, MAX_K)
    return body["results"]


def search_json(client: httpx.Client, **fields: object) -> list[dict]:
    response = client.post("/v1/search", json={"strokes": HOUSE, **fields})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_class_and_folder_filters_pages_and_cutoff(client: httpx.Client) -> None:
    full = full_ranking(client)
    ids = [r["id"] for r in full]
    classes = sorted({r["class"] for r in full})
    wanted = classes[:2]
    of_classes = [r["id"] for r in full if r["class"] in wanted]
    assert [r["id"] for r in search_json(client, k=5, classes=wanted)] == of_classes[:5]
    one = classes[-1]  # a class is its folder in this gallery
    under = [r["id"] for r in full if r["path"].startswith(one + "/")]
    assert under and [r["id"] for r in search_json(client, k=50, path_prefix=one + "/")] == under
    assert search_json(client, classes=["no such class"]) == []
    assert [r["id"] for r in search_json(client, k=4, offset=3)] == ids[3:7]
    assert search_json(client, k=4, offset=len(full)) == []
    cutoff = full[5]["score"]
    kept = search_json(client, k=50, min_score=cutoff)
    assert [r["id"] for r in kept] == [r["id"] for r in full if r["score"] >= cutoff]
    # the multipart form takes the same fields (classes repeated)
    png = io.BytesIO()
    render_strokes(HOUSE).save(png, "PNG")
    form = client.post(
        "/v1/search",
        files={"image": ("s.png", png.getvalue())},
        data={"k": "3", "offset": "1", "classes": wanted, "min_score": "-1"},
    )
    assert form.status_code == 200, form.text
    assert all(r["class"] in wanted for r in form.json()["results"])
    assert len(form.json()["results"]) == 3


def test_more_like_a_gallery_photo(client: httpx.Client) -> None:
    count = client.get("/v1/index").json()["count"]
    photo = full_ranking(client)[0]
    response = client.get(f"/v1/photos/{photo['id']}/similar", params={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    found = [r["id"] for r in body["results"]]
    assert len(found) == 5 and photo["id"] not in found
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and scores[0] <= 1.0 + 1e-5
    assert body["index_version"] == client.get("/v1/index").json()["version"]
    k = min(count, MAX_K)
    everyone = client.get(f"/v1/photos/{photo['id']}/similar", params={"k": k}).json()
    assert len(everyone["results"]) == min(count - 1, k)
    assert client.get(body["results"][0]["thumbnail_url"]).status_code == 200


def test_index_stats(client: httpx.Client, service_assets: ServiceAssets) -> None:
    stats = client.get("/v1/index").json()
    per_class = {p.name: len(list(p.iterdir())) for p in service_assets.photos.iterdir()}
    assert stats["version"] == "v000001" and stats["count"] == sum(per_class.values())
    assert stats["classes"] == per_class
    expected = {"faiss": ("flat", "cpu"), "qdrant": ("qdrant", "qdrant")}[stats["store"]]
    assert (stats["index"]["kind"], stats["device"]) == expected
    assert stats["model"]["providers"] == ["CPUExecutionProvider"]


def test_metrics(client: httpx.Client, sketch: Path) -> None:
    assert upload(client, sketch.read_bytes()).status_code == 200
    assert upload(client, b"not an image").status_code == 415
    text = client.get("/metrics").text
    count = client.get("/v1/index").json()["count"]
    for line in (
        'sbir_http_requests_total{method="POST",route="/v1/search",status="200"}',
        'sbir_http_requests_total{method="POST",route="/v1/search",status="415"}',
        'sbir_http_request_duration_seconds_bucket{le="0.1",method="POST",route="/v1/search"}',
        "sbir_decode_seconds_count",
        "sbir_encode_seconds_count",
        "sbir_search_seconds_count",
        "sbir_batch_size_count",
        "sbir_batch_wait_seconds_count",
        f"sbir_index_size {count}.0",
        "sbir_index_version 1.0",
        'sbir_index_info{version="v000001"} 1.0',
        "sbir_ready 1.0",
    ):
        assert line in text, line


def test_reload_needs_the_admin_token(client: httpx.Client) -> None:
    assert client.post("/v1/admin/reload").status_code == 401
    wrong = client.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
    ok = client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.json() == {
        "changed": False,
        "index_version": "v000001",
        "previous_version": "v000001",
    }


def test_home_serves_the_drawing_page_when_installed(client: httpx.Client) -> None:
    page = REPO / "service" / "static" / "index.html"
    response = client.get("/", follow_redirects=False)
    if page.is_file():
        assert response.status_code == 200 and response.content == page.read_bytes()
    else:
        assert response.status_code == 307 and response.headers["location"] == "/docs"


# --- bad input: a 4xx JSON error naming the problem, each its own case -----------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a decompression bomb's tiny file)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )


def big_blank_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("1", (side, side), 1).save(out, "PNG")
    return out.getvalue()


def json_post(payload: object) -> Callable[[httpx.Client, bytes], httpx.Response]:
    return lambda c, _: c.post("/v1/search", json=payload)


def raw_post(
    content: bytes, content_type: str | None
) -> Callable[[httpx.Client, bytes], httpx.Response]:
    headers = {"Content-Type": content_type} if content_type else {}
    return lambda c, _: c.post("/v1/search", content=content, headers=headers)


def chunked(size: int) -> Callable[[httpx.Client, bytes], httpx.Response]:
    """A multipart-typed body streamed without a Content-Length."""

    def stream() -> object:
        for _ in range(size // 65536 + 1):
            yield b"x" * 65536

    headers = {"Content-Type": "multipart/form-data; boundary=zzz"}
    return lambda c, _: c.post("/v1/search", content=stream(), headers=headers)


@dataclass(frozen=True)
class Bad:
    """One bad request: how to send it (client, a real sketch PNG), the answer expected."""

    send: Callable[[httpx.Client, bytes], httpx.Response]
    status: int
    code: str
    mentions: str


GOOD_B64 = "iVBORw0KGgo="  # a PNG signature, nothing more
BAD_INPUTS = {
    "zero_bytes": Bad(lambda c, _: upload(c, b""), 400, "empty_image", "0 bytes"),
    "not_an_image": Bad(
        lambda c, _: upload(c, b"hello, world\n" * 10),
        415,
        "unsupported_image_type",
        "PNG, JPEG or WebP",
    ),
    "gif_image": Bad(lambda c, png: upload(c, to_gif(png)), 415, "unsupported_image_type", "PNG"),
    "truncated_png": Bad(
        lambda c, png: upload(c, png[: len(png) // 2]), 422, "unreadable_image", "truncated"
    ),
    "truncated_jpeg": Bad(
        lambda c, png: upload(c, to_jpeg(png)[:300]), 422, "unreadable_image", "JPEG"
    ),
    "corrupt_png_body": Bad(
        lambda c, png: upload(c, png[:16] + b"\x00" * 200), 422, "unreadable_image", "PNG"
    ),
    "decompression_bomb": Bad(
        lambda c, _: upload(c, png_header(100_000, 100_000)),
        413,
        "too_many_pixels",
        "decompression bomb",
    ),
    "decompression_bomb_under_pillows_limit": Bad(
        lambda c, _: upload(c, png_header(9000, 9000)), 413, "too_many_pixels", "9000x9000"
    ),
    "over_the_pixel_limit": Bad(
        lambda c, _: upload(c, big_blank_png(2100)), 413, "too_many_pixels", "2100x2100"
    ),
    "upload_over_the_size_limit": Bad(
        lambda c, _: upload(c, b"\x89PNG" + b"0" * MAX_UPLOAD),
        413,
        "upload_too_large",
        str(MAX_UPLOAD),
    ),
    "chunked_upload_over_the_size_limit": Bad(
        chunked(2 * MAX_UPLOAD), 413, "upload_too_large", "at least"
    ),
    "json_over_the_size_limit": Bad(
        json_post({"image_base64": "A" * MAX_UPLOAD}), 413, "upload_too_large", "limit"
    ),
    "wrong_content_type": Bad(
        raw_post(b"hello", "text/plain"), 415, "unsupported_media_type", "text/plain"
    ),
    "raw_png_body": Bad(
        lambda c, png: raw_post(png, "image/png")(c, png),
        415,
        "unsupported_media_type",
        "multipart/form-data",
    ),
    "no_content_type": Bad(raw_post(b"hello", None), 415, "unsupported_media_type", "none"),
    "form_urlencoded": Bad(
        lambda c, _: c.post("/v1/search", data={"k": "3"}),
        415,
        "unsupported_media_type",
        "urlencoded",
    ),
    "multipart_without_image": Bad(
        lambda c, png: c.post("/v1/search", files={"sketch": png}), 422, "missing_image", "'image'"
    ),
    "multipart_without_boundary": Bad(
        raw_post(b"--x\r\n", "multipart/form-data"), 400, "malformed_multipart", "boundary"
    ),
    "k_zero": Bad(lambda c, png: upload(c, png, k=0), 422, "invalid_k", f"1 and {MAX_K}"),
    "k_over_the_largest": Bad(
        lambda c, png: upload(c, png, k=MAX_K + 1), 422, "invalid_k", f"not {MAX_K + 1}"
    ),
    "k_not_a_number": Bad(lambda c, png: upload(c, png, k="five"), 422, "invalid_k", "'five'"),
    "json_k_negative": Bad(json_post({"strokes": HOUSE, "k": -3}), 422, "invalid_k", "-3"),
    "json_k_not_integer": Bad(
        json_post({"strokes": HOUSE, "k": "many"}), 422, "invalid_request", "k"
    ),
    "malformed_json": Bad(
        raw_post(b'{"strokes": [[[1, 2', "application/json"),
        400,
        "malformed_json",
        "not valid JSON",
    ),
    "json_not_an_object": Bad(json_post([1, 2, 3]), 422, "invalid_request", "object"),
    "json_unknown_field": Bad(json_post({"sketch": "x"}), 422, "invalid_request", "sketch"),
    "json_without_a_sketch": Bad(json_post({"k": 3}), 422, "invalid_request", "exactly one"),
    "json_with_two_sketches": Bad(
        json_post({"image_base64": GOOD_B64, "strokes": HOUSE}),
        422,
        "invalid_request",
        "exactly one",
    ),
    "bad_base64": Bad(
        json_post({"image_base64": "not base64 at all!"}), 422, "invalid_base64", "base64"
    ),
    "bad_data_url": Bad(
        json_post({"image_base64": "data:image/png,abc"}), 422, "invalid_base64", "data: URL"
    ),
    "base64_of_text": Bad(
        json_post({"image_base64": base64.b64encode(b"plain text").decode()}),
        415,
        "unsupported_image_type",
        "PNG",
    ),
    "strokes_ragged": Bad(
        json_post({"strokes": [[[1, 2, 3], [1, 2]]]}), 422, "invalid_strokes", "same length"
    ),
    "strokes_not_numbers": Bad(
        json_post({"strokes": [[["a"], ["b"]]]}), 422, "invalid_request", "strokes.0.0.0"
    ),
    "strokes_one_list": Bad(
        json_post({"strokes": [[[1, 2, 3]]]}), 422, "invalid_strokes", "stroke 0"
    ),
    "strokes_empty": Bad(json_post({"strokes": []}), 422, "invalid_strokes", "non-empty"),
    "strokes_without_points": Bad(
        json_post({"strokes": [[[], []]]}), 422, "invalid_strokes", "no points"
    ),
    "strokes_too_many": Bad(
        json_post({"strokes": [[[1], [1]]] * (MAX_STROKES + 1)}),
        422,
        "invalid_strokes",
        f"at most {MAX_STROKES}",
    ),
    "strokes_not_finite": Bad(
        raw_post(b'{"strokes": [[[1, Infinity], [1, 2]]]}', "application/json"),
        422,
        "invalid_strokes",
        "finite",
    ),
    "strokes_too_wide": Bad(
        json_post({"strokes": [[[-1e308, 1e308], [0, 1]]]}), 422, "invalid_strokes", "too wide"
    ),
    "unknown_photo_id": Bad(
        lambda c, _: c.get("/v1/photos/999999"), 404, "unknown_photo", "999999"
    ),
    "unknown_thumbnail_id": Bad(
        lambda c, _: c.get("/v1/photos/999999/thumbnail"), 404, "unknown_photo", "999999"
    ),
    "negative_photo_id": Bad(
        lambda c, _: c.get("/v1/photos/-1"), 422, "invalid_request", "photo_id"
    ),
    "photo_id_not_a_number": Bad(
        lambda c, _: c.get("/v1/photos/abc"), 422, "invalid_request", "photo_id"
    ),
    "photo_path_traversal": Bad(
        lambda c, _: c.get("/v1/photos/..%2F..%2Fetc%2Fpasswd"),
        404,
        "not_found",
        "no such endpoint",
    ),
    "unknown_index_version": Bad(
        lambda c, _: c.get("/v1/photos/0?v=v999999"), 404, "unknown_photo", "v999999"
    ),
    "classes_not_a_list": Bad(
        json_post({"strokes": HOUSE, "classes": "fish"}),
        422,
        "invalid_request",
        "classes: must be an array",
    ),
    "classes_not_strings": Bad(
        json_post({"strokes": HOUSE, "classes": [1]}),
        422,
        "invalid_request",
        "each class must be a string",
    ),
    "offset_negative": Bad(
        json_post({"strokes": HOUSE, "offset": -1}), 422, "invalid_offset", "not -1"
    ),
    "offset_not_integer": Bad(
        json_post({"strokes": HOUSE, "offset": 1.5}),
        422,
        "invalid_request",
        "offset: must be an integer",
    ),
    "offset_over_the_largest": Bad(
        json_post({"strokes": HOUSE, "offset": 10**6}), 422, "invalid_offset", "between 0 and"
    ),
    "form_offset_negative": Bad(
        lambda c, png: c.post("/v1/search", files={"image": png}, data={"offset": "-2"}),
        422,
        "invalid_request",
        "offset",
    ),
    "min_score_not_a_number": Bad(
        json_post({"strokes": HOUSE, "min_score": "high"}),
        422,
        "invalid_request",
        "min_score: must be a number",
    ),
    "min_score_boolean": Bad(
        json_post({"strokes": HOUSE, "min_score": True}), 422, "invalid_request", "not a boolean"
    ),
    "min_score_not_finite": Bad(
        raw_post(b'{"strokes": [[[1, 2], [1, 2]]], "min_score": NaN}', "application/json"),
        422,
        "invalid_request",
        "finite",
    ),
    "form_min_score_not_a_number": Bad(
        lambda c, png: c.post("/v1/search", files={"image": png}, data={"min_score": "nan"}),
        422,
        "invalid_request",
        "min_score",
    ),
    "path_prefix_not_a_string": Bad(
        json_post({"strokes": HOUSE, "path_prefix": ["a"]}), 422, "invalid_request", "path_prefix"
    ),
    "similar_unknown_id": Bad(
        lambda c, _: c.get("/v1/photos/999999/similar"), 404, "unknown_photo", "999999"
    ),
    "similar_k_zero": Bad(
        lambda c, _: c.get("/v1/photos/0/similar?k=0"), 422, "invalid_request", "k"
    ),
    "similar_k_over_the_largest": Bad(
        lambda c, _: c.get(f"/v1/photos/0/similar?k={MAX_K + 1}"),
        422,
        "invalid_k",
        f"1 and {MAX_K}",
    ),
    "similar_k_not_a_number": Bad(
        lambda c, _: c.get("/v1/photos/0/similar?k=ten"), 422, "invalid_request", "k"
    ),
    "search_with_get": Bad(
        lambda c, _: c.get("/v1/search"), 405, "method_not_allowed", "does not take GET"
    ),
}


def to_gif(png: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).save(out, "GIF")
    return out.getvalue()


def to_jpeg(png: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, "JPEG")
    return out.getvalue()


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_a_4xx_naming_the_problem(
    client: httpx.Client, sketch: Path, case: str
) -> None:
    bad = BAD_INPUTS[case]
    response = bad.send(client, sketch.read_bytes())
    assert response.status_code == bad.status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == bad.code, body
    assert bad.mentions in body["detail"], body
    assert client.get("/healthz").status_code == 200  # and the server lives on


def test_mutated_images_are_refused_not_crashed(sketch: Path) -> None:
    """Randomly damaged PNG, JPEG and WebP files (header kept) either decode or raise
    InputError; nothing else escapes the decoder (which would be a 5xx)."""
    rng = np.random.default_rng(0)
    for fmt in ("PNG", "JPEG", "WEBP"):
        data = np.frombuffer(encode(sketch, fmt), np.uint8)
        for _ in range(60):
            damaged = data.copy()
            where = rng.integers(12, len(data), size=int(rng.integers(1, 8)))
            damaged[where] = rng.integers(0, 256, size=len(where))
            cut = damaged[: int(rng.integers(12, len(data) + 1))].tobytes()
            try:
                decode_image(cut, MAX_PIXELS)
            except InputError as err:
                assert 400 <= err.status < 500


# --- a model / index mismatch ----------------------------------------------------------------


def foreign_index(assets: ServiceAssets, index_dir: Path) -> None:
    """The session's index, committed under another model's fingerprint (store API)."""
    loaded = load_current(assets.index_dir)
    manifest = loaded.manifest.model_copy(deep=True)
    manifest.model.fingerprint = "0" * 64
    with locked(index_dir):
        commit_version(
            index_dir, Payload(loaded.index, np.asarray(loaded.vectors()), manifest, loaded.report)
        )


def test_fingerprint_mismatch_refuses_readiness(
    service_assets: ServiceAssets, tmp_path: Path, sketch: Path
) -> None:
    foreign_index(service_assets, tmp_path / "index")
    env = service_env(service_assets, tmp_path, index_dir=tmp_path / "index")
    with run_service(env, tmp_path / "service.log", ready=False) as running, running.client() as c:
        for _ in range(300):  # the first load runs in the background: wait for its verdict
            ready = c.get("/readyz")
            if not ready.json()["detail"].startswith("starting"):
                break
            time.sleep(0.1)
        assert ready.status_code == 503, ready.text
        detail = ready.json()["detail"]
        assert "do not match" in detail and "0000000000000000" in detail and "rebuild" in detail
        search = upload(c, sketch.read_bytes())
        assert search.status_code == 503 and search.json()["error"] == "not_ready"
        assert c.get("/healthz").status_code == 200
        assert "do not match" in running.log()


# --- schemathesis over the OpenAPI document --------------------------------------------------


# The document the fixture's server serves: same app, same limits (built here, not fetched,
# so that the cases are known when tests are collected).
SCHEMA_SETTINGS = ServiceSettings(max_k=MAX_K, max_strokes=MAX_STROKES)
schema = schemathesis.openapi.from_dict(create_app(SCHEMA_SETTINGS).openapi())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_schema_is_the_served_one(client: httpx.Client) -> None:
    assert client.get("/openapi.json").json() == create_app(SCHEMA_SETTINGS).openapi()


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error(
    case: schemathesis.Case, any_service: RunningService
) -> None:
    response = case.call(base_url=any_service.url, timeout=60)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.text[:500]}"
    case.validate_response(response, checks=CHECKS)
