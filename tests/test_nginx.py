"""The shipped nginx config (docker/nginx.conf) in front of a real uvicorn, on loopback:
a normal search passes through, dripped headers and stalled bodies are cut off, a burst
past the rate limit gets a JSON 429, and admin-token guesses are limited harder.

Runs Debian's nginx (``scripts/install.sh --system``); skipped where it is absent.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import HOUSE, REPO, RunningService, free_port

CONFIG = REPO / "docker" / "nginx.conf"
pytestmark = pytest.mark.slow
TIMEOUT_S = 2  # the config's header and body timeouts, shortened for the test
# What the test fills in; each must be in the config as written, so that drift fails here.
TEMPLATE = {
    "${SBIR_PROXY_LISTEN}": "127.0.0.1:{port}",
    "${SBIR_PROXY_UPSTREAM}": "127.0.0.1:{upstream}",
    "client_header_timeout 10s;": f"client_header_timeout {TIMEOUT_S}s;",
    "client_body_timeout 10s;": f"client_body_timeout {TIMEOUT_S}s;",
}
MAIN = """daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/sketch-search.conf;
}}
"""


@dataclass
class Proxy:
    url: str
    port: int


def render_config(port: int, upstream: int) -> str:
    text = CONFIG.read_text()
    for key, value in TEMPLATE.items():
        assert key in text, f"{CONFIG} no longer holds {key!r}"
        text = text.replace(key, value.format(port=port, upstream=upstream))
    return text


@pytest.fixture(scope="module")
def proxy(service: RunningService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (scripts/install.sh --system installs Debian's)")
    tmp = tmp_path_factory.mktemp("nginx")
    port, upstream = free_port(), int(service.url.rsplit(":", 1)[1])
    (tmp / "sketch-search.conf").write_text(render_config(port, upstream))
    (tmp / "nginx.conf").write_text(MAIN.format(tmp=tmp))
    cmd = [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail(f"nginx did not answer: {(tmp / 'error.log').read_text()}")
        yield Proxy(url, port)
    finally:
        process.terminate()
        process.wait(10)


def test_a_normal_search_passes_through(proxy: Proxy) -> None:
    response = httpx.post(proxy.url + "/v1/search", json={"strokes": HOUSE, "k": 3}, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 3
    assert response.json()["results"][0]["url"].startswith("/v1/photos/")


def closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Read until the peer closes; (seconds it took, what came), failing past ``seconds``."""
    sock.settimeout(seconds)
    started, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        pytest.fail(f"still open after {seconds} s; got {data[:200]!r}")
    except ConnectionResetError:
        pass
    return time.monotonic() - started, data


def test_dripped_headers_are_cut_off(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        with pytest.raises(OSError):  # drip a header byte every 0.5 s until nginx hangs up
            for _ in range(40):
                time.sleep(0.5)
                sock.sendall(b"X")
        assert time.monotonic() - started < TIMEOUT_S + 3


def test_a_stalled_body_is_cut_off(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        head = b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Content-Length: 100000\r\n\r\n" + b'{"strokes": [' + b" " * 1000)
        took, data = closed_within(sock, TIMEOUT_S + 5)
    assert took >= TIMEOUT_S - 0.5
    assert b" 200 " not in data


def test_a_burst_past_the_search_rate_gets_429(proxy: Proxy) -> None:
    """40 searches at once from one address: past the burst (20) they get 429 at once,
    whatever the api's speed (the limit counts arrivals)."""
    n = 40
    barrier = threading.Barrier(n)

    def post(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return client.post(proxy.url + "/v1/search", json={"k": 1})

    time.sleep(2.5)  # the earlier tests' searches drain from the burst
    with ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(post, range(n)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(429) >= n // 4 and set(statuses) == {422, 429}, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()["error"] == "rate_limited"
    assert limited.headers["retry-after"] == "1"


def test_admin_guesses_are_limited_harder(proxy: Proxy) -> None:
    headers = {"Authorization": "Bearer a-guess"}
    statuses = [
        httpx.post(proxy.url + "/v1/admin/reload", headers=headers, timeout=30).status_code
        for _ in range(8)
    ]
    assert statuses[0] == 401 and statuses.count(401) <= 4 and statuses[-1] == 429, statuses
    assert httpx.get(proxy.url + "/healthz", timeout=5).status_code == 200  # others still pass


def test_bodies_over_the_limit_get_a_json_413(proxy: Proxy) -> None:
    response = httpx.post(proxy.url + "/v1/index", content=b"x" * (11 << 20), timeout=30)
    assert response.status_code == 413
    assert "10485760" in response.json()["detail"]


def test_compose_puts_the_proxy_in_front() -> None:
    from test_deployment import _config

    services = _config()["services"]
    proxy = services["proxy"]
    (mount,) = proxy["volumes"]
    mount = mount if isinstance(mount, str) else f"{mount['source']}:{mount['target']}:ro"
    source, target, _ = mount.rsplit(":", 2)
    assert Path(source).resolve() == CONFIG and target.startswith("/etc/nginx/templates/")
    assert proxy["environment"]["SBIR_PROXY_UPSTREAM"] == "api:8000"
    assert [(p["published"], p["target"]) for p in proxy["ports"]] == [(8080, 8080)]
