"""The Ray engine of ``build-index`` / ``rebuild`` against the local one, on a real local Ray.

One local Ray (``ray_session``, what the CLI starts) serves the whole module: Ray starts in
seconds to tens of seconds on a busy 2-core machine, and each engine run adds actor start-up.
The model is the session's (``service_assets``: trained and exported once for the service
tests); the photos are a copy of its real photos plus two files that cannot be decoded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import REPO, ServiceAssets, free_port
from PIL import Image

from gallery_store.versions import load_current
from index_builder.cli import main
from index_builder.indexing.embed import Embedded
from index_builder.indexing.engines import embedder
from index_builder.indexing.rebuild import BuildOptions
from index_builder.indexing.scan import scan_photos
from model.encoder import OnnxEncoder
from model.preprocess import load_image
from service.search import SearchEngine
from service.settings import ServiceSettings

pytest.importorskip("ray.data", reason="the ray extra: scripts/install.sh --dev installs it")

from index_builder.indexing.ray_embed import CUDA, plan_actors, ray_session

BATCH = 8  # several blocks, so both local actors get batches
BAD = {"zz/garbage.png": "not a readable image", "zz/truncated.png": "image file is truncated"}


@dataclass(frozen=True)
class Runs:
    """One photo folder embedded by both engines."""

    photos: Path
    local: Embedded
    ray: Embedded


@pytest.fixture(scope="module")
def ray_local() -> Iterator[ModuleType]:
    """The local Ray the CLI would start (sized to the cores), shared by the module."""
    with ray_session() as ray:
        yield ray


@pytest.fixture(scope="module")
def photos(service_assets: ServiceAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's real photos, plus random bytes and a truncated PNG under ``zz/``."""
    root = Path(shutil.copytree(service_assets.photos, tmp_path_factory.mktemp("ray") / "p"))
    (root / "zz").mkdir()
    (root / "zz" / "garbage.png").write_bytes(np.random.default_rng(0).bytes(3000))
    whole = (root / "zz" / "whole.png").as_posix()
    Image.new("RGB", (300, 200), (200, 30, 30)).save(whole)
    data = Path(whole).read_bytes()
    (root / "zz" / "truncated.png").write_bytes(data[: len(data) // 2])
    Path(whole).unlink()
    return root


@pytest.fixture(scope="module")
def runs(ray_local: ModuleType, service_assets: ServiceAssets, photos: Path) -> Runs:
    """Both engines, through ``embedder`` as the builder calls them, on the same photos."""
    encoder = OnnxEncoder(service_assets.model_dir, "photo", intra_op_threads=1)
    scan = scan_photos(photos, workers=2)
    local = embedder("local")(encoder, scan.root, scan.files, BATCH, 2)
    ray = embedder("ray")(encoder, scan.root, scan.files, BATCH, 2)
    return Runs(photos, local, ray)


@pytest.mark.slow
def test_ray_vectors_equal_the_local_engines(runs: Runs) -> None:
    assert len(runs.local.done) >= 10
    assert [p.path for p in runs.ray.done] == [p.path for p in runs.local.done]
    assert [p.sha256 for p in runs.ray.done] == [p.sha256 for p in runs.local.done]
    assert runs.ray.sizes == runs.local.sizes
    assert runs.ray.vectors.shape == runs.local.vectors.shape
    assert runs.ray.vectors.dtype == np.float32 and runs.ray.vectors.flags.c_contiguous
    assert float(np.abs(runs.ray.vectors - runs.local.vectors).max()) <= 1e-5


@pytest.mark.slow
def test_undecodable_photos_are_skipped_and_reported_as_locally(runs: Runs) -> None:
    assert runs.ray.skipped == runs.local.skipped  # path, sha256, error and retry alike
    assert {s.path: s.retry for s in runs.ray.skipped} == dict.fromkeys(BAD, False)
    for skipped in runs.ray.skipped:
        assert BAD[skipped.path] in skipped.error


@pytest.mark.slow
def test_build_index_with_ray_serves_searches_and_rebuilds(
    ray_local: ModuleType,
    runs: Runs,
    service_assets: ServiceAssets,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    photos = Path(shutil.copytree(runs.photos, tmp_path / "photos"))
    out = tmp_path / "index"
    args = ["--batch-size", str(BATCH), "--workers", "2", "--no-progress"]
    assert (
        main(
            [
                "build-index",
                "--engine",
                "ray",
                "--model",
                str(service_assets.model_dir),
                "--photos",
                str(photos),
                "--out",
                str(out),
                *args,
            ]
        )
        == 0
    )
    summary = capsys.readouterr().out
    assert "wrote v000001 (full: new index)" in summary
    assert "skipped zz/garbage.png: not a readable image" in summary

    loaded = load_current(out)  # the index holds exactly the local engine's vectors, in order
    assert [it.path for it in loaded.manifest.items] == [p.path for p in runs.local.done]
    assert float(np.abs(np.asarray(loaded.vectors()) - runs.local.vectors).max()) <= 1e-5
    assert sorted(s.path for s in loaded.report.skipped) == sorted(BAD)

    # the service's loader takes it, and a sketch finds photos in it
    engine = SearchEngine(ServiceSettings(model_dir=service_assets.model_dir, index_dir=out))
    assert engine.load().version == "v000001"
    assert engine.encoder is not None
    sketch = engine.encoder.embed_images([load_image(service_assets.sketches()[0])])
    scores, ids = engine.snapshot.index.search(sketch, 3)
    assert len(set(ids[0].tolist())) == 3 and ids.min() >= 0 and np.isfinite(scores).all()

    # rebuild --engine ray embeds only the new photo and reuses the rest
    first = sorted(photos.rglob("*.png"))[0]
    shutil.copy(service_assets.sketches()[0], first.parent / "added.png")
    assert main(["rebuild", "--engine", "ray", "--index", str(out), *args]) == 0
    report = load_current(out).report
    assert (report.mode, report.added, report.embedded) == ("incremental", 1, 1)
    assert report.reused == len(runs.local.done)


def test_an_unknown_or_missing_engine_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = [
        "build-index",
        "--model",
        str(tmp_path),
        "--photos",
        str(tmp_path),
        "--out",
        str(tmp_path / "index"),
    ]
    with pytest.raises(SystemExit) as exited:
        main([*base, "--engine", "spark"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --engine: invalid choice: 'spark'" in err and "local" in err and "ray" in err
    with pytest.raises(SystemExit):
        main([*base, "--engine"])
    assert "--engine: expected one argument" in capsys.readouterr().err

    monkeypatch.setenv("SBIR_GALLERY_ENGINE", "spark")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid configuration") and "engine" in err and "spark" in err
    monkeypatch.delenv("SBIR_GALLERY_ENGINE")

    assert main([*base, "--ray-address", "127.0.0.1:6379"]) == 2
    assert "--ray-address 127.0.0.1:6379 is for --engine ray, not local" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown embedding engine 'spark'"):
        BuildOptions(engine="spark")
    assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_an_unreachable_ray_address_fails_fast_with_a_message(
    form: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = form.format(f"127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    paths = ["--model", str(tmp_path), "--photos", str(tmp_path), "--out", str(tmp_path / "i")]
    assert main(["build-index", "--engine", "ray", "--ray-address", address, *paths]) == 2
    assert time.monotonic() - started < 10  # Ray's own client would retry for minutes
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ray-address {address}: no Ray cluster answers there")
    assert "Traceback" not in err and not (tmp_path / "i").exists()


def test_a_malformed_ray_address_names_the_forms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = ["--model", str(tmp_path), "--photos", str(tmp_path), "--out", str(tmp_path / "i")]
    assert main(["build-index", "--engine", "ray", "--ray-address", "head-node", *paths]) == 2
    assert "--ray-address 'head-node': expected HOST:PORT, ray://HOST:PORT or auto" in (
        capsys.readouterr().err
    )


def test_the_ray_engine_without_ray_says_how_to_install_it(tmp_path: Path) -> None:
    # a fresh interpreter where `import ray` fails, as in the default (light) install
    code = (
        "import sys; sys.modules['ray'] = None; from index_builder.cli import main; "
        f"sys.exit(main(['build-index', '--engine', 'ray', '--model', {str(tmp_path)!r}, "
        f"'--photos', {str(tmp_path)!r}, '--out', {str(tmp_path / 'i')!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --engine ray needs Ray, which is not installed")
    assert "pip install -e '.[ray]'" in done.stderr


def test_actors_take_a_gpu_each_where_the_cluster_has_gpus() -> None:
    gpu = plan_actors({"CPU": 64.0, "GPU": 4.0, "memory": 1e11}, workers=6)
    assert (gpu.actors, gpu.resources, gpu.providers[0]) == (4, {"num_gpus": 1}, CUDA)
    assert gpu.decode_threads == 6
    cpu = plan_actors({"CPU": 2.0, "memory": 1e10}, workers=6)
    assert (cpu.actors, cpu.resources, cpu.providers) == (
        2,
        {"num_cpus": 1},
        ["CPUExecutionProvider"],
    )
    assert (cpu.intra_op_threads, cpu.decode_threads) == (1, 1)


@pytest.mark.slow
def test_an_actor_that_cannot_load_the_model_fails_the_build_with_its_cause(
    ray_local: ModuleType, runs: Runs, service_assets: ServiceAssets, tmp_path: Path
) -> None:
    # as on a cluster node that does not see the driver's model folder
    model = Path(shutil.copytree(service_assets.model_dir, tmp_path / "model"))
    encoder = OnnxEncoder(model, "photo", intra_op_threads=1)
    shutil.rmtree(model)
    scan = scan_photos(runs.photos, workers=2)
    with pytest.raises(
        RuntimeError,
        match=r"^the Ray engine failed: FileNotFoundError: .*"
        r"/model: not a model directory \(no metadata.json\)",
    ):
        embedder("ray")(encoder, scan.root, scan.files, BATCH, 2)
