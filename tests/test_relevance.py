"""Relevance through the real service: the committed demo model finds photos of classes it
never saw for real drawings.

The demo model (``models/demo``) is exported as ``scripts/demo`` exports it; its 41 test
classes (the sealed set: never trained on, nor used to choose anything) are prepared from
../shared/data as ``scripts/reproduce`` prepares them; their 182 photos are indexed by the
builder; a real ``python -m service`` (uvicorn) serves them; Quick, Draw! drawings of 11 of
those classes are sent as strokes, as the drawing page sends them. Nearly every class must
find a photo of itself among the first 10 results, for most drawings. Skips where
../shared/data is absent.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
from conftest import REPO, SHARED, ServiceAssets, has_shared_data, run_service, service_env

CLIPART = Path("/usr/share/openclipart/png")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (has_shared_data() and CLIPART.is_dir()),
        reason=f"needs the real data in {SHARED} and Debian's openclipart-png",
    ),
]

DEMO = REPO / "models" / "demo"
# every test (sealed) class with 4 to 10 photos among the 182: a photo of the class among
# 10 results by chance 0.2 to 0.45 of the time
QUERY_CLASSES = [
    "bee",
    "bus",
    "cat",
    "drums",
    "duck",
    "envelope",
    "lion",
    "rabbit",
    "sheep",
    "strawberry",
    "whale",
]
DRAWINGS = 3  # the first of each class's Quick, Draw! file


@pytest.fixture(scope="module")
def demo_service(tmp_path_factory: pytest.TempPathFactory, feature_cache: Path):
    from index_builder.indexing.rebuild import BuildOptions, build_new_index
    from index_builder.training.prepare import PHOTO_MAP, prepare_shared_data
    from model.export import export_onnx

    base = tmp_path_factory.mktemp("demo-relevance")
    test_classes = json.loads((DEMO / "run.json").read_text())["test_classes"]
    prepare_shared_data(SHARED, base / "data", categories=test_classes, photo_table=PHOTO_MAP)
    export_onnx(DEMO, base / "model")
    build_new_index(
        base / "model", base / "data" / "photo", base / "index", BuildOptions(workers=1)
    )
    assets = ServiceAssets(base / "data", base / "model", base / "index", real=True)
    with run_service(service_env(assets, base), base / "service.log") as running:
        yield running


def drawings(cls: str) -> list[list]:
    from index_builder.training.datasets.quickdraw import read_ndjson

    path = SHARED / "quickdraw" / "simplified" / f"{cls}.ndjson"
    return [[list(map(list, s)) for s in d.strokes] for d in islice(read_ndjson(path), DRAWINGS)]


def test_drawings_of_unseen_classes_find_their_photos_in_the_top_10(demo_service) -> None:
    hits: dict[str, list[bool]] = {}
    with demo_service.client() as client:
        assert client.get("/v1/index").json()["count"] == 182
        for cls in QUERY_CLASSES:
            hits[cls] = []
            for strokes in drawings(cls):
                response = client.post("/v1/search", json={"strokes": strokes, "k": 10})
                assert response.status_code == 200, response.text
                results = response.json()["results"]
                assert len(results) == 10
                hits[cls].append(any(r["class"] == cls for r in results))
    # measured on the issue-24 demo (its one sealed-set look): 10 of 11 classes find
    # themselves (sheep none of 3), 24 of 33 drawings (0.73; chance about 0.3)
    assert sum(any(found) for found in hits.values()) >= 10, hits
    rate = sum(map(sum, hits.values())) / sum(map(len, hits.values()))
    assert rate >= 0.65, hits
