"""Hostile clients against a real uvicorn on loopback: every request's cost is bounded
before the work, slow and vanishing clients are cut off or ignored, nothing internal leaks,
types are strict, and while the attacks run ``/healthz`` and an ordinary search keep
answering within a few seconds (a liveness bound, not a speed test).

The payloads are ``bench.hostile``'s; each is at most the default 10 MiB upload limit.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from conftest import ADMIN_TOKEN, HOUSE, RunningService, ServiceAssets, run_service, service_env
from PIL import Image

from bench.hostile import (
    MULTIPART_BOUNDARY,
    big_png,
    big_webp,
    blank_images,
    boundary_flood,
    deep_nesting,
    jpeg_empty_segments,
    jpeg_exif_segments,
    jpeg_fill_bytes,
    jpeg_scan_bomb,
    many_points,
    multipart,
    png_compressed_text,
    png_empty_chunks,
    png_exif_bomb,
    small_png,
    string_coordinates,
    unknown_keys,
    webp_exif_bomb,
)
from gallery_store.versions import (
    INDEX_FILE,
    VERSIONS,
    Payload,
    commit_version,
    load_current,
    locked,
)

pytestmark = pytest.mark.slow
ORDINARY = {"strokes": HOUSE, "k": 3}
LIVENESS_S = 5.0  # generous: 2 loaded cores; the attacks used to stall others 10-30 s
BODY_TIMEOUT_S = 3
HEADER_TIMEOUT_S = 2
MAX_CLIENT_CONNECTIONS = 40
MAX_PIXELS, MAX_SCANS, MAX_POINTS = 4_194_304, 64, 20_000  # the defaults


@pytest.fixture(scope="module")
def hostile(
    service_assets: ServiceAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """A server with the default limits, but a short body timeout."""
    tmp = tmp_path_factory.mktemp("hostile")
    shutil.copytree(service_assets.index_dir, tmp / "index")
    env = service_env(
        service_assets,
        tmp,
        index_dir=tmp / "index",
        body_timeout_s=BODY_TIMEOUT_S,
        header_timeout_s=HEADER_TIMEOUT_S,
        max_client_connections=MAX_CLIENT_CONNECTIONS,
        decode_workers=2,
    )
    with run_service(env, tmp / "service.log") as running:
        yield running


@dataclass
class Liveness:
    healthz_s: float
    search_s: float
    server_errors: float  # 5xx the server counted meanwhile

    @property
    def ok(self) -> bool:
        return self.healthz_s < LIVENESS_S and self.search_s < LIVENESS_S and not self.server_errors


SERVER_ERRORS = r'sbir_http_requests_total\{[^}]*status="5\d\d"\}'
JSON_TYPE = "application/json"


def under_attack(
    service: RunningService, attack: Callable[[int], httpx.Response], n: int
) -> tuple[list[httpx.Response], Liveness]:
    """``n`` concurrent attack requests while an ordinary client sends /healthz and a
    strokes search in turn; the attack's responses and the ordinary client's slowest."""
    healthz, search, stop = [0.0], [0.0], threading.Event()
    errors = metric(service, SERVER_ERRORS)

    def ordinary() -> None:
        with service.client() as client:
            while not stop.is_set():
                for path, times in (("/healthz", healthz), ("/v1/search", search)):
                    started = time.perf_counter()
                    if path == "/healthz":
                        response = client.get(path)
                    else:
                        response = client.post(path, json=ORDINARY)
                    assert response.status_code == 200, response.text
                    times.append(time.perf_counter() - started)
                time.sleep(0.05)

    with ThreadPoolExecutor(n + 1) as pool:
        probe = pool.submit(ordinary)
        time.sleep(0.2)
        responses = list(pool.map(attack, range(n)))
        time.sleep(0.3)
        stop.set()
        probe.result()
    return responses, Liveness(max(healthz), max(search), metric(service, SERVER_ERRORS) - errors)


def post_raw(service: RunningService, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(
        service.url + "/v1/search", content=body, timeout=60, headers={"Content-Type": content_type}
    )


def long_unknown_keys() -> bytes:
    """10 MB in a few unknown fields: under the value count, refused after parsing."""
    return b"{" + b",".join(b'"%d": "%s"' % (i, b"x" * 1_000_000) for i in range(10)) + b"}"


def points_past_the_limit() -> bytes:
    """A stroke of one point too many: under the value count, over the point limit."""
    n = MAX_POINTS + 1
    return json.dumps({"strokes": [[[1] * n, [2] * n]]}).encode()


def costliest_drawing() -> bytes:
    """A valid drawing that is slow to render: the most points, each a long random jump."""
    xy = np.random.default_rng(0).uniform(0, 10_000, (2, MAX_POINTS)).round(1)
    return json.dumps({"strokes": [xy.tolist()], "k": 1}).encode()


JSON_ATTACKS = {
    "string_coordinates": (string_coordinates, 422, "too_many_values", f"at most {MAX_POINTS}"),
    "unknown_keys": (unknown_keys, 422, "too_many_values", f"at most {MAX_POINTS}"),
    "many_points": (many_points, 422, "too_many_values", f"at most {MAX_POINTS}"),
    "deep_nesting": (deep_nesting, 400, "malformed_json", "nested too deeply"),
    "few_long_keys": (long_unknown_keys, 422, "invalid_request", "unknown field"),
    "points_just_past_the_limit": (
        points_past_the_limit,
        422,
        "invalid_strokes",
        f"at most {MAX_POINTS}",
    ),
    "costliest_drawing": (costliest_drawing, 200, None, None),
}


@pytest.mark.parametrize("name", list(JSON_ATTACKS))
def test_huge_json_bodies_are_refused_cheaply(hostile: RunningService, name: str) -> None:
    make, status, code, mentions = JSON_ATTACKS[name]
    body = make()
    assert len(body) <= 10 << 20
    responses, live = under_attack(
        hostile, lambda _: post_raw(hostile, body, "application/json"), 3
    )
    for r in responses:
        assert r.status_code == status, r.text[:300]
        if code is not None:
            assert r.json()["error"] == code and mentions in r.json()["detail"], r.text[:300]
    assert live.ok, live


def scan_bomb_within_the_pixel_budget() -> bytes:
    return jpeg_scan_bomb(side=2000, repeats=2000)


IMAGE_ATTACKS = {
    "jpeg_scan_bomb": (scan_bomb_within_the_pixel_budget, "too_many_scans", f"at most {MAX_SCANS}"),
    "lossless_webp_4000": (big_webp, "too_many_pixels", f"at most {MAX_PIXELS}"),
    "png_4000": (big_png, "too_many_pixels", f"at most {MAX_PIXELS}"),
}


@pytest.mark.parametrize("name", list(IMAGE_ATTACKS))
def test_costly_images_are_refused_before_decoding(hostile: RunningService, name: str) -> None:
    make, code, mentions = IMAGE_ATTACKS[name]
    body, content_type = multipart(make())
    responses, live = under_attack(hostile, lambda _: post_raw(hostile, body, content_type), 3)
    for r in responses:
        assert r.status_code == 413 and r.json()["error"] == code, r.text[:300]
        assert mentions in r.json()["detail"]  # the service's own limit, not Pillow's
    assert live.ok, live


def test_a_large_jpeg_within_the_budget_is_searched(hostile: RunningService) -> None:
    img = Image.new("L", (2048, 2048), 255)
    img.paste(0, (500, 500, 1500, 560))
    out = io.BytesIO()
    img.save(out, "JPEG", progressive=True)
    body, content_type = multipart(out.getvalue(), k="2")
    response = post_raw(hostile, body, content_type)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 2


# --- slow and vanishing clients --------------------------------------------------------------


def raw_request(service: RunningService, source: str = "127.0.0.1") -> socket.socket:
    """A connection to the server from ``source`` (another loopback address is another
    client to the server)."""
    port = int(service.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), source_address=(source, 0))


def read_response(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and data.rstrip().endswith(b"}"):
                break
    except TimeoutError:
        pytest.fail(f"no answer within {limit_s} s (got {data[:200]!r})")
    return data


HEAD = b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_a_body_shorter_than_its_content_length_gets_408(hostile: RunningService) -> None:
    with raw_request(hostile) as sock:
        started = time.monotonic()
        sock.sendall(HEAD + b"Content-Length: 5000\r\n\r\n" + b'{"strokes": [')
        data = read_response(sock, BODY_TIMEOUT_S + 5)
    assert data.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in data, data[:300]
    assert time.monotonic() - started >= BODY_TIMEOUT_S - 0.2


def test_a_dripped_body_gets_408(hostile: RunningService) -> None:
    with raw_request(hostile) as sock:
        sock.sendall(HEAD + b"Content-Length: 5000\r\n\r\n")
        for _ in range(int(BODY_TIMEOUT_S / 0.25) + 2):  # a byte every 0.25 s, past the limit
            time.sleep(0.25)
            try:
                sock.sendall(b" ")
            except OSError:
                break
        data = read_response(sock, 5)
    assert data.startswith(b"HTTP/1.1 408 ") and b"did not arrive within" in data, data[:300]


def metric(service: RunningService, pattern: str) -> float:
    """The sum of the samples whose line matches ``pattern`` (name and labels)."""
    text = httpx.get(service.url + "/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(r"^" + pattern + r" (\S+)$", text, re.M))


def test_aborted_uploads_are_no_server_errors(hostile: RunningService) -> None:
    errors = SERVER_ERRORS
    before = metric(hostile, errors), metric(hostile, "sbir_client_disconnects_total")
    for _ in range(3):
        with raw_request(hostile) as sock:
            sock.sendall(HEAD + b"Content-Length: 100000\r\n\r\n" + b" " * 5000)
            time.sleep(0.1)
    time.sleep(1.0)
    text = httpx.get(hostile.url + "/metrics", timeout=30).text
    assert metric(hostile, errors) == before[0], re.findall(r".*status=.*", text)
    assert metric(hostile, "sbir_client_disconnects_total") == before[1] + 3
    assert metric(hostile, r'sbir_http_requests_total\{[^}]*status="499"\}') >= 3
    assert "Traceback" not in hostile.log()


# --- nothing leaks ---------------------------------------------------------------------------


def test_an_undecodable_image_error_is_clean(hostile: RunningService) -> None:
    for junk in (
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x01" * 50,
    ):
        body, content_type = multipart(junk)
        response = post_raw(hostile, body, content_type)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert not re.search(r"0x[0-9a-f]{6,}|BytesIO|<\w|/tmp|Traceback", detail), detail


def test_result_urls_ignore_the_host_header(hostile: RunningService) -> None:
    response = httpx.post(
        hostile.url + "/v1/search", json=ORDINARY, timeout=60, headers={"Host": "evil.example"}
    )
    assert response.status_code == 200
    for result in response.json()["results"]:
        assert result["url"].startswith("/v1/photos/") and "evil" not in result["url"]
        assert result["thumbnail_url"].startswith(f"/v1/photos/{result['id']}/thumbnail?v=")
        assert httpx.get(hostile.url + result["url"], timeout=30).status_code == 200


def test_a_failed_reload_shows_the_version_and_no_paths(hostile: RunningService) -> None:
    index_dir = hostile.log_file.parent / "index"  # the fixture's copy
    loaded = load_current(index_dir)
    with locked(index_dir):
        version = commit_version(
            index_dir,
            Payload(loaded.index, np.asarray(loaded.vectors()), loaded.manifest, loaded.report),
        )
    (index_dir / VERSIONS / version / INDEX_FILE).write_bytes(b"corrupt")
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with hostile.client() as client:
        reload = client.post("/v1/admin/reload", headers=auth)
        assert reload.status_code == 409, reload.text
        stats = client.get("/v1/index").json()
        failure = stats["last_reload_error"]
        assert failure["version"] == version and stats["version"] != version
        assert "index.faiss" in failure["reason"], failure
        for text in (failure["reason"], reload.json()["detail"]):
            assert str(index_dir) not in text and "/tmp" not in text, text
        assert client.post("/v1/search", json=ORDINARY).status_code == 200
    assert str(index_dir) in hostile.log()  # the log keeps the whole story


# --- strict types ----------------------------------------------------------------------------


STRICT = {
    "json_k_string": ("json", {"strokes": HOUSE, "k": "5"}, "k: must be an integer"),
    "json_k_float": ("json", {"strokes": HOUSE, "k": 5.0}, "k: must be an integer"),
    "json_k_bool": ("json", {"strokes": HOUSE, "k": True}, "k: must be an integer"),
    "coordinate_string": ("json", {"strokes": [[["1", 2], [1, 2]]]}, "strokes.0.0.0"),
    "coordinate_bool": ("json", {"strokes": [[[1, 2], [1, True]]]}, "strokes.0.1.1"),
    "time_string": ("json", {"strokes": [[[1, 2], [1, 2], [0, "9"]]]}, "strokes.0.2.1"),
    "form_k_underscore": ("form", "1_0", "'1_0'"),
    "form_k_arabic_digits": ("form", "\u0661\u0660", "k must be an integer"),
    "form_k_plus": ("form", "+5", "'+5'"),
    "form_k_space": ("form", " 5", "' 5'"),
    "photo_id_plus": ("path", "+1", "photo_id"),
    "photo_id_leading_zero": ("path", "01", "photo_id"),
    "photo_id_float": ("path", "1.0", "photo_id"),
}


@pytest.mark.parametrize("case", list(STRICT))
def test_types_are_strict(hostile: RunningService, case: str) -> None:
    kind, value, mentions = STRICT[case]
    with hostile.client() as client:
        if kind == "json":
            response = client.post("/v1/search", json=value)
        elif kind == "form":
            png = io.BytesIO()
            Image.new("L", (64, 64), 255).save(png, "PNG")
            response = client.post(
                "/v1/search", files={"image": ("s.png", png.getvalue())}, data={"k": value}
            )
        else:
            response = client.get(f"/v1/photos/{value}")
    assert response.status_code == 422, response.text
    assert mentions in response.json()["detail"], response.json()


# --- a saturated decode pool -----------------------------------------------------------------


def test_a_saturated_decode_pool_gets_a_quick_503(
    service_assets: ServiceAssets, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("saturated")
    env = service_env(service_assets, tmp, decode_workers=1, decode_queue=1, decode_wait_s=0.2)
    png = io.BytesIO()
    Image.effect_noise((2000, 2000), 60).save(png, "PNG")  # incompressible: a slow decode
    body, content_type = multipart(png.getvalue())
    with run_service(env, tmp / "service.log") as running:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: post_raw(running, body, content_type), range(8)))
        statuses = [r.status_code for r in responses]
        assert 503 in statuses and 200 in statuses, statuses
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.json()["error"] == "busy" and busy.headers["retry-after"] == "1"
        assert busy.elapsed.total_seconds() < LIVENESS_S
        assert metric(running, "sbir_busy_rejections_total") == statuses.count(503)
        time.sleep(1.1)  # /readyz says busy for a second after a refusal, then ready again
        assert httpx.get(running.url + "/readyz", timeout=10).status_code == 200


# --- second round: structure, metadata, multipart, strings, connections ----------------------


def jpeg_fill_bytes_5mb() -> bytes:
    return jpeg_fill_bytes(5 << 20)


STRUCTURE_ATTACKS = {
    "png_exif_bomb": (png_exif_bomb, 200, None),  # read for its orientation only: searched
    "webp_exif_bomb": (webp_exif_bomb, 200, None),
    "jpeg_fill_bytes": (jpeg_fill_bytes, 413, "fill or stray bytes"),
    "jpeg_fill_bytes_5mb": (jpeg_fill_bytes_5mb, 413, "fill or stray bytes"),
    "jpeg_empty_segments": (jpeg_empty_segments, 413, "JPEG markers"),
    "jpeg_exif_segments": (jpeg_exif_segments, 413, "bytes of EXIF"),
    "png_empty_chunks": (png_empty_chunks, 413, "PNG chunks"),
    "png_compressed_text": (png_compressed_text, 413, "compressed text"),
}


@pytest.mark.parametrize("name", list(STRUCTURE_ATTACKS))
def test_costly_structure_is_bounded_before_decoding(hostile: RunningService, name: str) -> None:
    make, status, mentions = STRUCTURE_ATTACKS[name]
    body, content_type = multipart(make())
    responses, live = under_attack(hostile, lambda _: post_raw(hostile, body, content_type), 2)
    for r in responses:
        assert r.status_code == status, r.text[:300]
        if mentions is not None:
            assert r.json()["error"] == "image_too_complex", r.text[:300]
            assert mentions in r.json()["detail"] and "at most" in r.json()["detail"]
    assert live.ok, live


def test_a_multipart_boundary_flood_is_refused_off_the_event_loop(
    hostile: RunningService,
) -> None:
    body, content_type = boundary_flood()
    responses, live = under_attack(hostile, lambda _: post_raw(hostile, body, content_type), 2)
    for r in responses:
        assert r.status_code == 400 and r.json()["error"] == "malformed_multipart", r.text
        assert "parts" in r.json()["detail"]
    assert live.ok, live


def test_an_image_part_without_a_filename_is_the_image(hostile: RunningService) -> None:
    b = MULTIPART_BOUNDARY
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="image"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()
    body += small_png() + f"\r\n--{b}--\r\n".encode()
    response = post_raw(hostile, body, f"multipart/form-data; boundary={b}")
    assert response.status_code == 200, response.text


NOT_UNICODE = {
    "a key": b'{"\\ud800": 1}',
    "a low surrogate key": b'{"\\udfff": 1, "strokes": []}',
    "a class": b'{"strokes": [[[1, 2], [3, 4]]], "classes": ["\\udc80"]}',
    "a folder, as raw bytes": b'{"strokes": [[[1, 2], [3, 4]]], "path_prefix": "\xed\xa0\x80"}',
    "an image": b'{"image_base64": "\\ud83d"}',
}


@pytest.mark.parametrize("where", list(NOT_UNICODE))
def test_strings_that_are_not_unicode_get_a_4xx(hostile: RunningService, where: str) -> None:
    errors = metric(hostile, SERVER_ERRORS)
    response = post_raw(hostile, NOT_UNICODE[where], "application/json")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "malformed_json" and "surrogate" in response.json()["detail"]
    assert metric(hostile, SERVER_ERRORS) == errors


def test_a_valid_surrogate_pair_is_text(hostile: RunningService) -> None:
    response = post_raw(hostile, b'{"\\ud83d\\ude00": 1}', "application/json")
    assert response.status_code == 422, response.text  # an unknown field, shown escaped
    assert "\\ud83d\\ude00" in response.json()["detail"]


def test_messages_repeat_a_short_escaped_prefix_of_what_was_sent(
    hostile: RunningService,
) -> None:
    huge = "9" * 4000
    cases = [
        post_raw(hostile, b'{"strokes": [[[1], [1]]], "k": ' + huge.encode() + b"}", JSON_TYPE),
        post_raw(
            hostile, b'{"strokes": [[[1], [1]]], "offset": ' + huge.encode() + b"}", JSON_TYPE
        ),
        post_raw(hostile, json.dumps({"x\u202e" * 500: 1}).encode(), JSON_TYPE),
        httpx.get(f"{hostile.url}/v1/photos/0/similar?k={huge}", timeout=30),
        httpx.get(f"{hostile.url}/{'a' * 3000}", timeout=30),
        httpx.request("FOO" * 30, f"{hostile.url}/healthz", timeout=30),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.text[:200]
        detail = response.json()["detail"]
        assert len(detail) < 300 and huge not in detail and "\u202e" not in detail, detail


def test_blank_sketches_are_refused(hostile: RunningService) -> None:
    for name, image in blank_images().items():
        body, content_type = multipart(image)
        response = post_raw(hostile, body, content_type)
        assert response.status_code == 422, (name, response.text)
        assert response.json()["error"] == "empty_drawing", (name, response.text)
    b64 = base64.b64encode(blank_images()["white"]).decode()
    response = httpx.post(hostile.url + "/v1/search", json={"image_base64": b64}, timeout=30)
    assert response.status_code == 422 and response.json()["error"] == "empty_drawing"


def test_head_works_wherever_get_does(hostile: RunningService) -> None:
    with hostile.client() as client:
        photo = client.post("/v1/search", json=ORDINARY).json()["results"][0]
        paths = [
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/index",
            "/",
            photo["url"],
            photo["thumbnail_url"],
            f"/v1/photos/{photo['id']}/similar",
        ]
        for path in paths:
            get, head = client.get(path), client.head(path)
            assert head.status_code == get.status_code == 200, (path, head.status_code)
            assert (
                head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
            )
        refused = client.head("/v1/search")
        assert refused.status_code == 405 and refused.headers["content-type"] == "application/json"
        operations = client.get("/openapi.json").json()["paths"]
        assert not [p for p, ops in operations.items() if "head" in ops]


def test_invented_methods_are_one_metrics_label(hostile: RunningService) -> None:
    before = len(httpx.get(hostile.url + "/metrics", timeout=30).content)
    with raw_request(hostile) as sock:  # one keep-alive connection, 2,000 requests
        for i in range(2000):
            sock.sendall(f"M{i:05d}X /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            read_response(sock, 10)
    text = httpx.get(hostile.url + "/metrics", timeout=30).text
    assert len(text.encode()) - before < 10_000
    assert 'method="other",route="/healthz",status="405"' in text and "M00001X" not in text


def test_a_malformed_request_gets_a_json_400(hostile: RunningService) -> None:
    with raw_request(hostile) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = read_response(sock, 5)
    assert data.startswith(b"HTTP/1.1 400 ") and b'"malformed_request"' in data, data


def answer_of(sock: socket.socket, wait_s: float) -> bytes:
    """What the server sent before closing (b"" if it closed silently)."""
    sock.settimeout(wait_s)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return data or b"(still open)"
    except ConnectionResetError:
        return data or b"(reset)"
    return data


def test_idle_sockets_cannot_lock_other_clients_out(hostile: RunningService) -> None:
    """200 sockets from one address, half sending nothing, half half a request head."""
    socks = []
    try:
        for i in range(200):
            sock = raw_request(hostile, "127.0.0.2")
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        started = time.monotonic()
        with hostile.client() as client:  # another address
            for _ in range(3):
                assert client.get("/healthz").status_code == 200
                assert client.post("/v1/search", json=ORDINARY).status_code == 200
        assert time.monotonic() - started < LIVENESS_S
        answers = [answer_of(sock, HEADER_TIMEOUT_S + 4) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 429 ")]
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")]
    closed = [a for a in answers if a == b""]
    assert len(refused) == 200 - MAX_CLIENT_CONNECTIONS, [a[:40] for a in answers][:5]
    assert all(b'"too_many_connections"' in a and b"retry-after: 1" in a for a in refused)
    assert timed_out and all(b'"request_timeout"' in a for a in timed_out)  # half a head
    assert len(refused) + len(timed_out) + len(closed) == 200, {a[:20] for a in answers}


def test_a_body_dripped_after_its_answer_is_cut_off(hostile: RunningService) -> None:
    with raw_request(hostile) as sock:
        sock.sendall(HEAD + b"Content-Length: 50000000\r\n\r\n")  # 413 from the head
        assert read_response(sock, 10).startswith(b"HTTP/1.1 413 ")
        started = time.monotonic()
        with pytest.raises(OSError):  # a byte every 0.3 s, until the server hangs up
            while time.monotonic() - started < HEADER_TIMEOUT_S + 10:
                sock.sendall(b" ")
                time.sleep(0.3)
                with contextlib.suppress(BlockingIOError):  # nothing to read: still open
                    if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                        raise ConnectionResetError("closed by the server")
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 3


def test_the_connection_limit_answers_in_json(
    service_assets: ServiceAssets, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("connections")
    env = service_env(service_assets, tmp, max_connections=30, max_client_connections=10)
    with run_service(env, tmp / "service.log") as running:
        socks = [raw_request(running, f"127.0.0.{3 + i // 10}") for i in range(30)]
        try:
            time.sleep(0.3)
            refused = httpx.get(running.url + "/healthz", timeout=10)  # read, not reset
        finally:
            for sock in socks:
                sock.close()
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == "too_many_connections", refused.text
        assert "30 connections" in refused.json()["detail"]
        time.sleep(0.5)
        assert httpx.get(running.url + "/healthz", timeout=10).status_code == 200
