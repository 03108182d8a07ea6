"""ONNX export of a trained run: ONNX Runtime matches PyTorch on real images, for both backbones.

A tiny run is trained through the CLI on stand-in data, exported with ``export-onnx`` and read
back with ``model.encoder`` (no PyTorch). The PyTorch reference is the run's own
``embed_sketch`` / ``embed_photo`` on the backbone's features, L2-normalised.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from standins import draw_photo, make_authors_features, make_folder_layout

from index_builder.cli import main
from index_builder.indexing.embed import Decoded, decode_photo, embed_photos
from index_builder.indexing.scan import scan_photos
from model.backbones import load_backbone, with_pseudo_sketch
from model.backbones.vgg import VGG16Features
from model.checkpoint import load_model
from model.encoder import (
    EncoderIntegrityError,
    EncoderMetadata,
    OnnxEncoder,
    compute_fingerprint,
    default_providers,
)
from model.export import Int8Photo, export_module, export_onnx, load_run_encoders
from model.preprocess import load_image, render_strokes, to_input_array
from model.pseudo_sketch import EdgeConfig, encoder_input_array

pytestmark = pytest.mark.usefixtures("feature_cache")

CLASSES = ["circle", "square", "triangle", "diamond"]
TEST = ["diamond"]
TRAIN_ARGS = ["--steps", "5", "--log-every", "5"]
TOLERANCE = 1e-4
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
STAMPS = Path("/usr/share/tuxpaint/stamps")
# Hand-written Quick, Draw!-style strokes ([[x...], [y...]], 0-255): a house, a star, a fish.
STROKES = [
    [
        [[20, 20, 230, 230, 20], [250, 110, 110, 250, 250]],
        [[20, 125, 230], [110, 10, 110]],
        [[100, 100, 150, 150], [250, 180, 180, 250]],
    ],
    [
        [
            [128, 160, 250, 170, 200, 128, 56, 86, 6, 96, 128],
            [0, 90, 95, 150, 250, 190, 250, 150, 95, 90, 0],
        ]
    ],
    [
        [[10, 60, 140, 200, 140, 60, 10], [128, 80, 70, 128, 186, 176, 128]],
        [[200, 250, 250, 200], [128, 70, 186, 128]],
        [[60], [110]],
    ],
]


@dataclass
class Export:
    backbone: str
    run: Path
    model_dir: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder-layout stand-in (2 sketches, 2 photos per class) and its test-class file."""
    root = make_folder_layout(tmp_path_factory.mktemp("data"), CLASSES, 2, 2)
    test_file = root.parent / "test_classes.txt"
    test_file.write_text("\n".join(TEST) + "\n")
    return root, test_file


def vgg16_random_weights(path: Path) -> Path:
    """Random VGG-16 conv weights (torchvision's init) under torchvision's key names."""
    torch.manual_seed(0)
    net = VGG16Features()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(
    scope="module",
    params=["efficientnet-lite0", pytest.param("vgg16", marks=pytest.mark.slow)],
)
def export(
    request: pytest.FixtureRequest,
    data: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Export:
    """``train`` a few steps, then ``export-onnx``, both through the CLI."""
    backbone, (root, test_file) = request.param, data
    base = tmp_path_factory.mktemp(backbone)
    args = [
        "train",
        "--data",
        str(root),
        "--test-classes",
        str(test_file),
        "--out",
        str(base / "run"),
        "--backbone",
        backbone,
        *TRAIN_ARGS,
    ]
    if backbone == "vgg16":
        args += ["--backbone-weights", str(vgg16_random_weights(base / "vgg16.pth"))]
    assert main(args) == 0
    assert main(["export-onnx", "--run", str(base / "run"), "--out", str(base / "model")]) == 0
    return Export(backbone, base / "run", base / "model")


# --- real images ----------------------------------------------------------------------------


def sketch_images() -> list[Image.Image]:
    """Hand-written strokes rendered as in training, plus real Quick, Draw! drawings if here."""
    images = [render_strokes(s) for s in STROKES]
    folder = SHARED / "quickdraw" / "simplified"
    for path in sorted(folder.glob("*.ndjson"))[:2] if folder.is_dir() else []:
        with open(path) as f:
            images.append(render_strokes(json.loads(f.readline())["drawing"]))
    return images


def photo_images() -> list[Image.Image]:
    """Generated photos, plus real TuxPaint photo cut-outs where the shared data lists them."""
    images = [draw_photo(i, np.random.default_rng(i)) for i in range(3)]
    texture = np.random.default_rng(7).integers(0, 256, size=(180, 300, 3), dtype=np.uint8)
    images.append(Image.fromarray(texture, "RGB"))
    table = SHARED / "tuxpaint_photos.tsv"
    if table.is_file() and STAMPS.is_dir():
        rows = [line.split("\t") for line in table.read_text().splitlines()[1:]]
        paths = [STAMPS / stamp.strip() for _, stamp in rows]
        images += [load_image(p) for p in paths if p.is_file()][:2]
    return images


def torch_embeddings(run: Path, images: list[Image.Image], domain: str) -> np.ndarray:
    """The reference: the run's embed_sketch / embed_photo on the backbone's features, normalised;
    photos with their pseudo-sketches where the model was trained so."""
    model, info = load_model(run)
    backbone = load_backbone(info["feature_backbone"], info["config"]["backbone_weights"])
    if domain == "photo" and model.scaling.cfg.pseudo_sketch:
        backbone = with_pseudo_sketch(backbone)
    prep, edges = backbone.preprocessing, backbone.edges
    x = torch.from_numpy(np.stack([encoder_input_array(img, prep, edges) for img in images]))
    with torch.no_grad():
        feats = backbone(x)
        z = model.embed_sketch(feats) if domain == "sketch" else model.embed_photo(feats)
    return torch.nn.functional.normalize(z, dim=-1).numpy()


@pytest.fixture(scope="module")
def encoders(export: Export) -> dict[str, OnnxEncoder]:
    return {d: OnnxEncoder(export.model_dir, d, intra_op_threads=1) for d in ("sketch", "photo")}


# --- ONNX Runtime vs PyTorch ----------------------------------------------------------------


@pytest.mark.parametrize("domain", ["sketch", "photo"])
def test_onnx_matches_pytorch_on_real_images(
    export: Export, encoders: dict[str, OnnxEncoder], domain: str
) -> None:
    images = sketch_images() if domain == "sketch" else photo_images()
    expected = torch_embeddings(export.run, images, domain)
    got = encoders[domain].embed_images(images)
    assert got.shape == (len(images), 64) and got.dtype == np.float32
    diff = float(np.abs(got - expected).max())
    print(f"{export.backbone} {domain}: max |onnx - torch| = {diff:.2e} over {len(images)}")
    assert diff <= TOLERANCE
    # the embeddings are informative, not all the same
    assert float(np.abs(got - got.mean(0)).max()) > 1e-3


def test_dynamic_batch_and_unit_norm(encoders: dict[str, OnnxEncoder]) -> None:
    enc = encoders["photo"]
    batch = enc.to_batch(photo_images()[:4] + sketch_images()[:1])
    assert len(batch) == 5
    together = enc.embed_arrays(batch)
    one_by_one = np.concatenate([enc.embed_arrays(batch[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert enc.embed_images([]).shape == (0, 64)


def test_images_go_through_the_shared_preprocessing(encoders: dict[str, OnnxEncoder]) -> None:
    enc = encoders["sketch"]
    img = sketch_images()[0]
    direct = enc.embed_arrays(to_input_array(img, enc.metadata.preprocessing)[None])
    assert np.array_equal(enc.embed_images([img]), direct)


def test_concurrent_calls_agree(encoders: dict[str, OnnxEncoder]) -> None:
    enc = encoders["sketch"]
    batch = enc.to_batch(sketch_images()[:3])
    alone = [enc.embed_arrays(batch[i : i + 1]) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda i: enc.embed_arrays(batch[i : i + 1]), range(3)))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_the_builders_lanes_embed_as_one_photo_at_a_time(
    encoders: dict[str, OnnxEncoder], tmp_path: Path
) -> None:
    """``embed_photos`` (lanes decoding and encoding batches at once) gives the vectors, order,
    sizes and skips of decoding and encoding each photo alone, one after another."""
    enc = encoders["photo"]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate(photo_images()):
        img.save(folder / f"p{i}.png")
    whole = (folder / "p0.png").read_bytes()
    (folder / "p1b-cut.png").write_bytes(whole[: len(whole) // 2])  # a header, half its pixels
    scan = scan_photos(folder)
    got = embed_photos(enc, scan.root, scan.files, batch_size=2, workers=3)
    prep = enc.metadata.preprocessing
    alone = [decode_photo(scan.root / p.path, p.sha256, prep, edges=enc.edges) for p in scan.files]
    decoded = [(p, r) for p, r in zip(scan.files, alone, strict=True) if isinstance(r, Decoded)]
    assert len(decoded) >= 4 and len(decoded) < len(scan.files)
    assert got.done == [p for p, _ in decoded]
    assert got.sizes == [r.size for _, r in decoded]
    assert [s.path for s in got.skipped] == ["p1b-cut.png"]
    expected = np.concatenate([enc.embed_arrays(r.array[None]) for _, r in decoded])
    np.testing.assert_allclose(got.vectors, expected, atol=1e-5)


def test_a_wrong_input_shape_is_refused(encoders: dict[str, OnnxEncoder]) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\)"):
        encoders["sketch"].embed_arrays(np.zeros((1, 3, 100, 100), np.float32))


def test_providers(encoders: dict[str, OnnxEncoder]) -> None:
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert default_providers()[0] == ("CUDAExecutionProvider" if cuda else "CPUExecutionProvider")
    assert default_providers()[-1] == "CPUExecutionProvider"
    assert encoders["sketch"].providers[0] == default_providers()[0]


# --- the model directory --------------------------------------------------------------------


def test_onnx_graphs_have_the_documented_interface(export: Export) -> None:
    photo_channels = 6 if EncoderMetadata.load(export.model_dir).photo_edges else 3
    for name, channels in (("sketch_encoder.onnx", 3), ("photo_encoder.onnx", photo_channels)):
        session = ort.InferenceSession(str(export.model_dir / name))
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        shape = [channels, 224, 224]
        assert (inp.name, inp.type, inp.shape[1:]) == ("image", "tensor(float)", shape)
        assert (out.name, out.type, out.shape[1:]) == ("embedding", "tensor(float)", [64])
        assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)  # dynamic batch


def test_metadata_records_the_run(export: Export, encoders: dict[str, OnnxEncoder]) -> None:
    meta = EncoderMetadata.load(export.model_dir)
    run_info = json.loads((export.run / "run.json").read_text())
    backbone = load_backbone(export.backbone, run_info["config"]["backbone_weights"])
    assert meta.backbone == export.backbone
    assert meta.preprocessing == backbone.preprocessing
    assert meta.input_size == 224 and meta.embedding_dim == 64
    assert (meta.input_name, meta.output_name) == ("image", "embedding")
    assert meta.train_classes == run_info["train_classes"] == [c for c in CLASSES if c not in TEST]
    assert meta.test_classes == TEST
    assert meta.config == run_info["config"] and meta.iiae == run_info["iiae"]
    assert (meta.scaling, meta.retrieval) == (run_info["scaling"], run_info["retrieval"])
    sums = {}
    for domain, name in (("sketch", "sketch_encoder.onnx"), ("photo", "photo_encoder.onnx")):
        sums[domain] = hashlib.sha256((export.model_dir / name).read_bytes()).hexdigest()
        assert meta.files[domain].file == name and meta.files[domain].sha256 == sums[domain]
    assert meta.backbone_fingerprint == backbone.fingerprint == run_info["backbone_fingerprint"]
    fp, edges = meta.backbone_fingerprint, meta.photo_edges
    assert edges == (EdgeConfig() if meta.scaling["pseudo_sketch"] else None)
    assert meta.fingerprint == compute_fingerprint(sums, meta.preprocessing, fp, edges)
    if edges is not None:  # the pseudo-sketch drawing, outside the graph, is fingerprinted
        other = edges.model_copy(update={"threshold": 0.3})
        assert meta.fingerprint != compute_fingerprint(sums, meta.preprocessing, fp, other)
    assert meta.fingerprint != compute_fingerprint(
        sums, meta.preprocessing.model_copy(update={"image_size": 256}), fp, edges
    )
    assert meta.fingerprint != compute_fingerprint(
        sums, meta.preprocessing, "another network", edges
    )
    assert encoders["sketch"].fingerprint == encoders["photo"].fingerprint == meta.fingerprint
    meta.verify_checksums()
    raw = json.loads((export.model_dir / "metadata.json").read_text())
    assert raw["preprocessing"]["mean"] == list(backbone.preprocessing.mean)


def test_a_tampered_or_missing_onnx_file_is_caught(export: Export, tmp_path: Path) -> None:
    copy = shutil.copytree(export.model_dir, tmp_path / "model")
    path = copy / "photo_encoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(EncoderIntegrityError, match="sha256") as err:
        EncoderMetadata.load(copy).verify_checksums()
    assert str(path) in str(err.value)
    with pytest.raises(EncoderIntegrityError):
        OnnxEncoder(copy, "sketch")
    path.unlink()
    with pytest.raises(EncoderIntegrityError, match="missing"):
        EncoderMetadata.load(copy).verify_checksums()


def test_an_edited_fingerprint_is_caught(export: Export, tmp_path: Path) -> None:
    copy = shutil.copytree(export.model_dir, tmp_path / "model")
    meta_path = copy / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["preprocessing"]["image_size"] = 256
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(EncoderIntegrityError, match="fingerprint"):
        EncoderMetadata.load(copy).verify_checksums()


def test_the_saved_optimised_graph_computes_what_the_plain_one_does(
    export: Export, tmp_path: Path
) -> None:
    """The files hold ONNX Runtime's extended optimisations (fewer nodes: fused), and give the
    vectors of the exporter's plain graph."""
    meta = EncoderMetadata.load(export.model_dir)
    assert meta.graph_optimization.startswith("ORT_ENABLE_EXTENDED")
    torch_encoders, _, _ = load_run_encoders(export.run)
    images = {"sketch": sketch_images(), "photo": photo_images()}
    for domain, encoder in torch_encoders.items():
        plain = tmp_path / f"{domain}.onnx"
        channels = encoder.backbone.input_channels
        export_module(encoder, plain, 224, meta.embedding_dim, 17, channels)
        saved = meta.onnx_path(domain)
        nodes = [len(onnx.load(str(f)).graph.node) for f in (plain, saved)]
        assert nodes[1] < nodes[0]
        enc = OnnxEncoder(export.model_dir, domain, intra_op_threads=1)
        x = enc.to_batch(images[domain])
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(plain), opts, providers=["CPUExecutionProvider"])
        (expected,) = session.run(None, {"image": x})
        np.testing.assert_allclose(enc.embed_arrays(x), expected, atol=1e-4)


def test_an_int8_photo_encoder_is_another_model(
    export: Export, data: tuple[Path, Path], tmp_path: Path
) -> None:
    """``--quantize int8-static``: calibrated on training-class photos, named in the metadata
    and the fingerprint; the sketch encoder stays the float one."""
    root, _ = data
    with pytest.raises(ValueError, match="calibration"):
        export_onnx(export.run, tmp_path / "none", int8=Int8Photo())
    meta = export_onnx(export.run, tmp_path / "int8", int8=Int8Photo(data=root))
    float_meta = EncoderMetadata.load(export.model_dir)
    assert meta.quantization.startswith("int8-static photo encoder, calibrated on ")
    assert meta.fingerprint != float_meta.fingerprint
    meta.verify_checksums()
    assert meta.files["sketch"].sha256 == float_meta.files["sketch"].sha256
    assert meta.files["photo"].sha256 != float_meta.files["photo"].sha256
    ops = {n.op_type for n in onnx.load(str(meta.onnx_path("photo"))).graph.node}
    assert "QLinearConv" in ops or "QuantizeLinear" in ops
    # the same files under another quantisation name are another model
    sums = {d: meta.files[d].sha256 for d in ("sketch", "photo")}
    args = (sums, meta.preprocessing, meta.backbone_fingerprint, meta.photo_edges)
    assert compute_fingerprint(*args, meta.quantization) == meta.fingerprint
    assert compute_fingerprint(*args, "int8-dynamic photo encoder") != meta.fingerprint
    assert compute_fingerprint(*args) != meta.fingerprint
    # it computes other vectors (how close: bench/export_accuracy.py, on a real model)
    images = photo_images()
    a = OnnxEncoder(export.model_dir, "photo", intra_op_threads=1).embed_images(images)
    b = OnnxEncoder(tmp_path / "int8", "photo", intra_op_threads=1).embed_images(images)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() > 1e-3


def test_encoder_module_imports_without_torch() -> None:
    code = "import sys; import model.encoder; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


# --- the CLI --------------------------------------------------------------------------------


def test_export_again_replaces_the_model_dir(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    assert main(["export-onnx", "--run", str(export.run), "--out", str(out)]) == 0
    (out / "stale.txt").write_text("from the first export")
    assert main(["export-onnx", "--run", str(export.run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "metadata.json",
        "photo_encoder.onnx",
        "sketch_encoder.onnx",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left behind
    assert f"-> {out}" in capsys.readouterr().out


def test_cli_names_a_directory_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_run = tmp_path / "not-a-run"
    not_run.mkdir()
    out = tmp_path / "model"
    assert main(["export-onnx", "--run", str(not_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(not_run) in err
    assert not out.exists()


def test_cli_refuses_to_overwrite_other_files(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export-onnx", "--run", str(export.run), "--out", str(out)]) == 2
    assert str(out) in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.filterwarnings("ignore:Setting 'keep_initializers_as_inputs=False'")
def test_a_failed_export_leaves_nothing(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Opset 1 cannot express the encoders: the exporter fails half way through."""
    out = tmp_path / "model"
    assert main(["export-onnx", "--run", str(export.run), "--out", str(out), "--opset", "1"]) == 2
    assert "at opset 1 failed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither MODEL_DIR nor a temporary folder


def test_a_run_on_released_features_cannot_be_exported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    released = make_authors_features(tmp_path / "released", 1, CLASSES, 2, test_classes=TEST)
    run = tmp_path / "run"
    test_file = tmp_path / "test_classes.txt"
    test_file.write_text("\n".join(TEST) + "\n")
    assert (
        main(
            [
                "train",
                "--data",
                str(released),
                "--test-classes",
                str(test_file),
                "--out",
                str(run),
                *TRAIN_ARGS,
            ]
        )
        == 0
    )
    assert main(["export-onnx", "--run", str(run), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "'vgg16-authors'" in err and "no image backbone" in err
    assert not (tmp_path / "model").exists()


def test_a_run_on_another_networks_features_cannot_be_exported(
    export: Export, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose features came from another network (the Swish-bug EfficientNet, other
    weights under the same name) would embed photos with a network it never saw: refused."""
    stale = tmp_path / "run"
    shutil.copytree(export.run, stale)
    info = json.loads((stale / "run.json").read_text())
    (stale / "run.json").write_text(json.dumps({**info, "backbone_fingerprint": "0" * 64}))
    assert main(["export-onnx", "--run", str(stale), "--out", str(tmp_path / "model")]) == 2
    assert "trained on features of another" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
