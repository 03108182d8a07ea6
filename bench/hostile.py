"""What hostile requests cost the service, and what an ordinary client sees meanwhile.

    python -m bench.hostile [--model MODEL_DIR [--index DIR]] [--work DIR] [--repo CHECKOUT]...

Serves ``python -m service`` on loopback (``--repo``/``--python``: another checkout's code,
e.g. the one before this work, over the same model and index) and runs each attack for a
few seconds: several concurrent requests of one kind (each at most the 10 MiB upload limit)
while one ordinary client sends ``/healthz`` and a small strokes search in a loop. Reports,
per attack: the statuses the attack got, its slowest answer, the server's peak RSS, and the
ordinary client's slowest ``/healthz`` and search (the liveness the attack costs others);
then how long slow clients stay connected and whether an aborted upload counts as a 5xx.
Without ``--model`` a small model is trained on a few real classes and exported first
(``bench.service_latency``'s); the index holds a few thousand synthetic embeddings.
The payload builders are shared with ``tests/test_hostile.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
UPLOAD_LIMIT = 10 << 20  # the service's default SBIR_MAX_UPLOAD_BYTES
HOUSE = [[[20, 20, 230, 230, 20], [250, 110, 110, 250, 250]], [[20, 125, 230], [110, 10, 110]]]
ORDINARY = {"strokes": HOUSE, "k": 5}

# --- payloads (each at most the upload limit) ------------------------------------------------


def json_body(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def string_coordinates(limit: int = UPLOAD_LIMIT) -> bytes:
    """Strokes whose coordinates are strings: every value a validation error."""
    n = (limit - 100) // 8
    return json_body({"strokes": [[["1"] * n, ["1"] * n]]})


def unknown_keys(limit: int = UPLOAD_LIMIT) -> bytes:
    """An object of many unknown fields."""
    n = (limit - 100) // 14
    return json_body({f"k{i:08d}": 0 for i in range(n)})


def many_points(limit: int = UPLOAD_LIMIT) -> bytes:
    """One stroke of far more points than the point limit, as numbers."""
    n = (limit - 100) // 4
    return json_body({"strokes": [[[1] * n, [1] * n]]})


def random_drawing(points: int = 20_000) -> bytes:
    """A drawing of ``points`` points, each a long random jump: slow to render, and within
    the default point limit (the old one was 100,000)."""
    xy = np.random.default_rng(0).uniform(0, 10_000, (2, points)).round(1)
    return json_body({"strokes": [xy.tolist()], "k": 1})


def deep_nesting(limit: int = UPLOAD_LIMIT) -> bytes:
    """Arrays nested a million deep."""
    n = min(limit // 2, 1_000_000)
    return b'{"strokes":' + b"[" * n + b"]" * n + b"}"


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def jpeg_scan_bomb(side: int = 4000, repeats: int = 10_000) -> bytes:
    """A progressive JPEG whose smallest scan (a few bytes over a blank image) is repeated
    ``repeats`` times: tiny, and every scan is a pass over every block when decoded."""
    data = encode(Image.new("L", (side, side), 255), "JPEG", progressive=True, quality=90)
    starts = [m.start() for m in re.finditer(b"\xff\xda", data)]
    end = data.rindex(b"\xff\xd9")
    scans = [data[a:b] for a, b in zip(starts, [*starts[1:], end], strict=True)]
    small = min(scans[1:], key=len)  # not the first (DC) scan
    return data[:end] + small * repeats + data[end:]


def big_drawing(side: int, mode: str = "L") -> Image.Image:
    img = Image.new(mode, (side, side), "white")
    ImageDraw.Draw(img).line([(0, 0), (side - 1, side - 1)], fill="black", width=8)
    return img


def big_webp(side: int = 4000) -> bytes:
    """A lossless WebP of side x side: a few hundred bytes, 16 M pixels to decode."""
    return encode(big_drawing(side, "RGB"), "WEBP", lossless=True)


def big_png(side: int = 4000) -> bytes:
    return encode(big_drawing(side), "PNG", optimize=True)


def multipart(image: bytes, k: str = "5") -> tuple[bytes, str]:
    boundary = "hostile-boundary-1234"
    part = f"--{boundary}\r\nContent-Disposition: form-data; name="
    body = (
        f'{part}"k"\r\n\r\n{k}\r\n{part}"image"; filename="s"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body += image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# --- second round: structure Pillow walks in Python, metadata, multipart, encodings --------


def small_jpeg(side: int = 256) -> bytes:
    return encode(big_drawing(side), "JPEG", quality=90)


def small_png(side: int = 256) -> bytes:
    return encode(big_drawing(side), "PNG")


def lone_surrogate_key() -> bytes:
    """A JSON key that is a lone UTF-16 surrogate: valid JSON, not Unicode."""
    return b'{"\\ud800": 1}'


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def insert_png_chunks(png: bytes, chunks: bytes) -> bytes:
    """``chunks`` right after IHDR."""
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def exif_with_shorts(count: int, orientation: int = 6) -> bytes:
    """An EXIF block (big-endian TIFF): Orientation, then a private tag of ``count`` SHORTs."""
    entries = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    data_at = 8 + 2 + 2 * 12 + 4
    entries += struct.pack(">HHII", 0xC7A1, 3, count, data_at)
    return b"MM\x00*" + struct.pack(">IH", 8, 2) + entries + b"\x00" * 4 + b"\x01\x00" * count


def png_exif_bomb(limit: int = UPLOAD_LIMIT) -> bytes:
    """A sketch PNG whose eXIf chunk holds Orientation and ~``limit`` bytes of SHORTs:
    Pillow's ``exif_transpose`` decodes and re-encodes every one."""
    exif = exif_with_shorts((limit - 4096) // 2)
    return insert_png_chunks(small_png(), png_chunk(b"eXIf", exif))


def webp_exif_bomb(limit: int = UPLOAD_LIMIT) -> bytes:
    """The same EXIF in a WebP."""
    return encode(big_drawing(256, "RGB"), "WEBP", exif=exif_with_shorts((limit - 4096) // 2))


def png_empty_chunks(limit: int = UPLOAD_LIMIT) -> bytes:
    """A sketch PNG with empty private chunks filling the upload: 873,000 of them in 10 MiB."""
    return insert_png_chunks(small_png(), png_chunk(b"prVt", b"") * ((limit - 4096) // 12))


def png_compressed_text(count: int = 64) -> bytes:
    """``count`` zTXt chunks, each inflating to Pillow's 1 MiB text limit (~1 KiB each)."""
    text = zlib.compress(b"x" * ((1 << 20) - 1), 9)
    return insert_png_chunks(small_png(), png_chunk(b"zTXt", b"k\x00\x00" + text) * count)


def before_first_scan(jpeg: bytes, filler: bytes) -> bytes:
    sos = jpeg.index(b"\xff\xda")
    return jpeg[:sos] + filler + jpeg[sos:]


def jpeg_fill_bytes(limit: int = UPLOAD_LIMIT) -> bytes:
    """0xFF fill bytes before the first scan's marker: Pillow reads them one at a time."""
    return before_first_scan(small_jpeg(), b"\xff" * (limit - 65536))


def jpeg_empty_segments(limit: int = UPLOAD_LIMIT) -> bytes:
    """Empty APP15 segments before the first scan: 2.6 million in 10 MiB."""
    return before_first_scan(small_jpeg(), b"\xff\xef\x00\x02" * ((limit - 65536) // 4))


def jpeg_exif_segments(limit: int = UPLOAD_LIMIT) -> bytes:
    """EXIF segments (64 KiB each, the most one holds): Pillow joins them and parses the
    result while opening the file."""
    exif = b"Exif\x00\x00" + exif_with_shorts(32_000)
    segment = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    jpeg = small_jpeg()
    return jpeg[:2] + segment * ((limit - 65536) // len(segment)) + jpeg[2:]


MULTIPART_BOUNDARY = "hostile-boundary-1234"


def boundary_flood(limit: int = UPLOAD_LIMIT) -> tuple[bytes, str]:
    """A multipart image part made of ``CRLF--boundary`` and one more byte, over and over:
    the parser checks each near-delimiter in Python."""
    b = MULTIPART_BOUNDARY
    unit = f"\r\n--{b}Q".encode()
    body, content_type = multipart(b"")
    head, tail = body[: -len(f"\r\n--{b}--\r\n")], f"\r\n--{b}--\r\n".encode()
    return head + unit * ((limit - len(body) - 1024) // len(unit)) + tail, content_type


def blank_images() -> dict[str, bytes]:
    """Sketches with nothing drawn: all white, one white pixel, fully transparent."""
    return {
        "white": encode(Image.new("L", (256, 256), 255), "PNG"),
        "one white pixel": encode(Image.new("RGB", (1, 1), "white"), "PNG"),
        "transparent": encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"),
        "white JPEG": encode(Image.new("RGB", (300, 200), "white"), "JPEG"),
        "white WebP": encode(Image.new("RGB", (300, 200), "white"), "WEBP"),
    }


@dataclass(frozen=True)
class Attack:
    """``concurrency`` clients each sending ``body`` (``content_type``) to /v1/search."""

    name: str
    make: Callable[[], tuple[bytes, str]]
    concurrency: int = 4
    rounds: int = 2


def as_json(make: Callable[[], bytes]) -> Callable[[], tuple[bytes, str]]:
    return lambda: (make(), "application/json")


def as_upload(make: Callable[[], bytes]) -> Callable[[], tuple[bytes, str]]:
    return lambda: multipart(make())


ATTACKS = [
    Attack("json: 10 MB of string coordinates", as_json(string_coordinates), 2, 1),
    Attack("json: 10 MB of unknown keys", as_json(unknown_keys), 2, 1),
    Attack("json: 2.6 M points", as_json(many_points), 4, 1),
    Attack("json: 20,000 random points (a valid drawing)", as_json(random_drawing), 4, 1),
    Attack("json: nested 1 M deep", as_json(deep_nesting)),
    Attack("jpeg: 1,000-scan bomb 2000x2000", as_upload(lambda: jpeg_scan_bomb(2000, 1000)), 2, 1),
    Attack("webp: lossless 4000x4000", as_upload(big_webp)),
    Attack("png: 4000x4000", as_upload(big_png)),
]
SECOND_ROUND = [
    Attack("json: a lone surrogate as a key", as_json(lone_surrogate_key), 2, 2),
    Attack("png: eXIf, Orientation + 10 MB of SHORTs", as_upload(png_exif_bomb), 2, 1),
    Attack("webp: EXIF, Orientation + 10 MB of SHORTs", as_upload(webp_exif_bomb), 2, 1),
    Attack("jpeg: 10 MB of 0xFF fill before a marker", as_upload(jpeg_fill_bytes), 2, 1),
    Attack(
        "jpeg: 5 MB of 0xFF fill, two at once",
        as_upload(lambda: jpeg_fill_bytes(UPLOAD_LIMIT // 2)),
        2,
        1,
    ),
    Attack("jpeg: 2.6 M empty APP15 segments", as_upload(jpeg_empty_segments), 2, 1),
    Attack("jpeg: 10 MB of EXIF segments", as_upload(jpeg_exif_segments), 2, 1),
    Attack("png: 873 k empty private chunks", as_upload(png_empty_chunks), 2, 1),
    Attack("png: 64 zTXt chunks of 1 MiB text", as_upload(png_compressed_text), 2, 1),
    Attack("multipart: 10 MB of CRLF--boundary+1 byte", boundary_flood, 2, 1),
]

# --- a server --------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(repo: Path, python: str, model: Path, index: Path, work: Path) -> Server:
    port = free_port()
    env = os.environ | {
        "SBIR_MODEL_DIR": str(model),
        "SBIR_INDEX_DIR": str(index),
        "SBIR_THUMBNAIL_DIR": str(work / "thumbnails"),
        "SBIR_WATCH_INTERVAL_S": "0",
        "PYTHONPATH": str(repo),
    }
    cmd = [python, "-m", "service", "--port", str(port), "--no-access-log"]
    log = open(work / f"service-{port}.log", "wb")  # noqa: SIM115 (the server's life)
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited; see {log.name}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    server.stop()
    raise SystemExit("the service did not get ready in 300 s")


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Probe:
    """The ordinary client: /healthz and a strokes search in turn until stopped."""

    url: str
    healthz: list[float] = field(default_factory=list)
    search: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stop.is_set():
                for path, times in (("/healthz", self.healthz), ("/v1/search", self.search)):
                    started = time.perf_counter()
                    try:
                        if path == "/healthz":
                            r = client.get(path)
                        else:
                            r = client.post(path, json=ORDINARY)
                        if r.status_code != 200:
                            self.failures.append(f"{path}: {r.status_code}")
                    except httpx.HTTPError as err:
                        self.failures.append(f"{path}: {type(err).__name__}")
                    times.append(time.perf_counter() - started)
                time.sleep(0.05)


@dataclass
class Outcome:
    attack: str
    statuses: dict[int, int]
    slowest_s: float
    rss_mb: float
    healthz_ms: float
    search_ms: float
    ordinary_failures: int


def run_attack(server: Server, attack: Attack) -> Outcome:
    body, content_type = attack.make()
    probe = Probe(server.url)
    thread = threading.Thread(target=probe.run)
    thread.start()
    time.sleep(0.5)
    rss = server.rss_mb()
    statuses: dict[int, int] = {}
    slowest = 0.0

    def send(_: int) -> tuple[int, float]:
        started = time.perf_counter()
        try:
            r = httpx.post(
                server.url + "/v1/search",
                content=body,
                timeout=120,
                headers={"Content-Type": content_type},
            )
            status = r.status_code
        except httpx.HTTPError:
            status = 0  # the connection failed or was dropped
        return status, time.perf_counter() - started

    done = threading.Event()

    def watch_rss() -> None:
        nonlocal rss
        while not done.is_set():
            rss = max(rss, server.rss_mb())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_rss)
    watcher.start()
    with ThreadPoolExecutor(attack.concurrency) as pool:
        for status, took in pool.map(send, range(attack.concurrency * attack.rounds)):
            statuses[status] = statuses.get(status, 0) + 1
            slowest = max(slowest, took)
    done.set()
    watcher.join()
    time.sleep(0.3)
    probe.stop.set()
    thread.join()
    return Outcome(
        attack.name,
        statuses,
        slowest,
        rss,
        max(probe.healthz) * 1000,
        max(probe.search) * 1000,
        len(probe.failures),
    )


def stalled_body(server: Server, cap_s: float = 40.0) -> str:
    """A Content-Length larger than the body sent: when the server answers, and hangs up."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b'\r\nContent-Length: 1000\r\n\r\n{"strokes": ['
        )
        sock.settimeout(cap_s)
        started, data, answered = time.monotonic(), b"", None
        try:
            while chunk := sock.recv(4096):
                answered = answered or time.monotonic() - started
                data += chunk
        except TimeoutError:
            return f"still open after {cap_s:g} s"
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "no answer"
        when = f"{status} after {answered:.1f} s, " if answered else ""
        return f"{when}closed after {time.monotonic() - started:.1f} s"


def dripped_headers(server: Server, cap_s: float = 20.0) -> str:
    """A header byte every second: how long until the server hangs up."""
    with connect(server, "127.0.0.2") as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            while time.monotonic() - started < cap_s:
                time.sleep(1)
                sock.sendall(b"X")
        except OSError:
            return f"closed after {time.monotonic() - started:.1f} s"
        return f"still open after {cap_s:g} s"


def connect(server: Server, source: str | None = None) -> socket.socket:
    """A connection to the server, from ``source`` (another loopback address: to the
    server, another client than the ordinary one on 127.0.0.1)."""
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), source_address=(source or "", 0))


def ordinary_statuses(server: Server, seconds: float = 3.0) -> tuple[dict[str, int], float]:
    """What the ordinary client gets for ``seconds`` (/healthz and a search in turn): its
    statuses (with the kind of body) and its slowest answer in ms."""
    statuses: dict[str, int] = {}
    slowest, deadline = 0.0, time.monotonic() + seconds
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while time.monotonic() < deadline:
            for send in (
                lambda: client.get("/healthz"),
                lambda: client.post("/v1/search", json=ORDINARY),
            ):
                started = time.perf_counter()
                try:
                    r = send()
                    kind = "json" if r.headers.get("content-type", "").endswith("json") else "text"
                    key = f"{r.status_code} {kind}"
                except httpx.HTTPError as err:
                    key = type(err).__name__
                slowest = max(slowest, time.perf_counter() - started)
                statuses[key] = statuses.get(key, 0) + 1
            time.sleep(0.05)
    return statuses, slowest * 1000


def idle_sockets(server: Server, n: int = 200, cap_s: float = 20.0) -> str:
    """``n`` sockets from another address, half sending nothing and half half a request
    head: what the ordinary client gets meanwhile, and how long the sockets stay open."""
    socks = []
    for i in range(n):
        sock = connect(server, "127.0.0.2")
        if i % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    time.sleep(0.3)
    statuses, slowest = ordinary_statuses(server)
    started, open_socks, answers = time.monotonic(), list(socks), {}
    while open_socks and time.monotonic() - started < cap_s:
        for sock in list(open_socks):
            sock.settimeout(0.01)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
            answers[status] = answers.get(status, 0) + 1
            open_socks.remove(sock)
        time.sleep(0.1)
    took = time.monotonic() - started
    for sock in socks:
        sock.close()
    got = ", ".join(f"{k}x{v}" for k, v in sorted(statuses.items()))
    reaped = ", ".join(f"{k}x{v}" for k, v in sorted(answers.items())) or "none"
    left = (
        f"{len(open_socks)} still open after {cap_s:g} s"
        if open_socks
        else f"all closed within {took:.1f} s"
    )
    return (
        f"{n} idle sockets from another address: the ordinary client got {got} "
        f"(slowest {slowest:.0f} ms); the sockets got {reaped}, {left}"
    )


def invented_methods(server: Server, n: int = 10_000) -> str:
    """``n`` requests, each with a method of its own: the size and scrape time of /metrics."""

    def scrape() -> tuple[int, float]:
        started = time.perf_counter()
        size = len(httpx.get(server.url + "/metrics", timeout=60).content)
        return size, (time.perf_counter() - started) * 1000

    before, _ = scrape()
    with connect(server) as sock:
        sock.settimeout(30)
        for i in range(n):
            sock.sendall(f"X{i:06d} /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    after, took = scrape()
    sizes = f"{before / 1000:.0f} kB -> {after / 1000:.0f} kB"
    return f"{n:,} invented methods: /metrics {sizes}, a scrape then {took:.0f} ms"


def head_and_blank(server: Server) -> str:
    """HEAD on the health endpoints, and blank sketches searched."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        heads = [f"HEAD {p} {client.head(p).status_code}" for p in ("/healthz", "/readyz")]
        blank = []
        for name, image in blank_images().items():
            body, content_type = multipart(image)
            r = client.post("/v1/search", content=body, headers={"Content-Type": content_type})
            blank.append(f"{name} {r.status_code}")
    return f"{', '.join(heads)}; blank sketches: {', '.join(blank)}"


def server_errors(server: Server) -> int:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    pattern = r'^sbir_http_requests_total\{[^}]*status="5\d\d"\} (\S+)$'  # not *_created
    return sum(int(float(m)) for m in re.findall(pattern, text, re.M))


def aborted_uploads(server: Server, n: int = 5) -> str:
    """Clients that send part of a body and leave: do the server's 5xx counts rise?"""
    before = server_errors(server)
    host, port = server.url.removeprefix("http://").split(":")
    for _ in range(n):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                b"\r\nContent-Length: 100000\r\n\r\n" + b" " * 5000
            )
        time.sleep(0.2)
    time.sleep(0.5)
    return f"{n} aborted uploads: 5xx count +{server_errors(server) - before}"


# --- the report ------------------------------------------------------------------------------


def table(label: str, outcomes: list[Outcome], extras: list[str]) -> str:
    lines = [
        f"### {label}",
        "",
        "| attack | statuses | slowest attack answer s | server RSS peak MB "
        "| ordinary /healthz max ms | ordinary search max ms | ordinary failures |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        statuses = ", ".join(f"{k}x{v}" for k, v in sorted(o.statuses.items()))
        ordinary = f"{o.healthz_ms:.0f} | {o.search_ms:.0f} | {o.ordinary_failures}"
        cost = f"{o.slowest_s:.2f} | {o.rss_mb:.0f}"
        lines.append(f"| {o.attack} | {statuses} | {cost} | {ordinary} |")
    lines += ["", *[f"- {e}" for e in extras], ""]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--model", type=Path, help="exported model dir (default: train one)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sbir-bench-hostile"))
    parser.add_argument(
        "--index", type=Path, help="an index built for --model (default: a synthetic one)"
    )
    parser.add_argument("--photos", type=int, default=5000, help="synthetic index size")
    parser.add_argument(
        "--repo",
        type=Path,
        action="append",
        default=[],
        help="a checkout to serve (repeatable; default: this one)",
    )
    parser.add_argument(
        "--python", action="append", default=[], help="its interpreter (one per --repo)"
    )
    parser.add_argument(
        "--round",
        choices=("first", "second", "all"),
        default="all",
        help="the first round of attacks (issue 11), the second (issue 22), or both",
    )
    args = parser.parse_args(argv)
    from bench.service_latency import make_model, synthesise_index

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model or make_model(args.work, steps=20)
    index = args.index or args.work / "index"
    if not (index / "CURRENT").exists():
        synthesise_index(model, args.work / "photos", index, args.photos)
    repos = args.repo or [REPO]
    pythons = args.python or [sys.executable] * len(repos)
    print(f"# bench.hostile, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}\n")
    for repo, python in zip(repos, pythons, strict=True):
        server = start_server(repo.resolve(), python, model, index, args.work)
        try:
            attacks = {"first": ATTACKS, "second": SECOND_ROUND, "all": ATTACKS + SECOND_ROUND}
            outcomes = [run_attack(server, attack) for attack in attacks[args.round]]
            extras = []
            if args.round != "second":
                extras += [
                    f"stalled body: {stalled_body(server)}",
                    f"dripped headers: {dripped_headers(server)}",
                    aborted_uploads(server),
                ]
            if args.round != "first":
                extras += [idle_sockets(server), invented_methods(server), head_and_blank(server)]
            extras.append(f"server errors (5xx) counted in all: {server_errors(server)}")
        finally:
            server.stop()
        print(table(str(repo), outcomes, extras), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
