"""What the builder writes, the service reads as another user: `export-onnx` and `rebuild` run
as one throwaway uid with umask 022, `python -m service` as another (real processes, real
users' credentials through setpriv), as when a model exported on the host, by CI or by another
account is served by a container's uid 10001. Needs root; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HOUSE, LEAN_ENV, REPO, STAMPS, run_service

pytestmark = pytest.mark.slow
WRITER, READER = 47001, 47002  # uids no account has: only the files' modes can let them in
UMASK = 0o022


def as_user(uid: int) -> list[str]:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run as other users")
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder both users can enter and create in (pytest's own tmp folders are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="sbir-modes-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_as(uid: int, *args: str, home: Path) -> None:
    env = os.environ | LEAN_ENV | {"HOME": str(home), "SBIR_TORCH_THREADS": "1"}
    result = subprocess.run(
        [*as_user(uid), sys.executable, "-m", "index_builder", *args],
        cwd=REPO,
        env=env,
        umask=UMASK,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_another_user_serves_what_the_builder_wrote(shared_dir: Path) -> None:
    if not STAMPS.is_dir():
        pytest.skip(f"{STAMPS} is absent (scripts/install.sh --system installs it)")
    photos = shared_dir / "photos"
    for stamp in sorted((STAMPS / "food" / "fruit").glob("*.png"))[:6]:
        (photos / "fruit").mkdir(parents=True, exist_ok=True)
        shutil.copy(stamp, photos / "fruit" / stamp.name)
    model, index = shared_dir / "model", shared_dir / "index"
    as_user(WRITER)  # skip before any work where it cannot run
    run_as(WRITER, "export-onnx", "--run", "models/demo", "--out", str(model), home=shared_dir)
    index.mkdir()
    os.chown(index, WRITER, WRITER)
    run_as(
        WRITER,
        *("rebuild", "--index", str(index), "--photos", str(photos), "--model", str(model)),
        "--no-progress",
        home=shared_dir,
    )
    written = [p for root in (model, index) for p in (root, *root.rglob("*"))]
    assert all(p.stat().st_uid == WRITER for p in written)
    unreadable = [p for p in written if p.stat().st_mode & 0o044 != 0o044]
    assert not unreadable, f"not readable by group and others under umask 022: {unreadable}"
    assert all(p.stat().st_mode & 0o011 == 0o011 for p in written if p.is_dir())
    assert not any(p.stat().st_mode & stat.S_IWOTH for p in written)

    env = {
        "SBIR_MODEL_DIR": str(model),
        "SBIR_INDEX_DIR": str(index),
        "SBIR_THUMBNAIL_DIR": str(shared_dir / "thumbnails"),
        "SBIR_WATCH_INTERVAL_S": "0",
        "HOME": str(shared_dir),
    }
    reader = as_user(READER)
    with (
        run_service(env, shared_dir / "service.log", timeout=90, as_user=reader) as api,
        api.client() as client,
    ):
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["index_version"] == "v000001"
        found = client.post("/v1/search", json={"strokes": HOUSE, "k": 3})
        assert found.status_code == 200, found.text
        results = found.json()["results"]
        assert len(results) == 3 and all(r["class"] == "fruit" for r in results)
        thumb = client.get(results[0]["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
