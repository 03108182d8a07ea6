"""The builder end to end through its CLI, on stand-ins of Sketchy Extended in its exact layouts.

Train -> evaluate -> baselines on both image layouts (real EfficientNet-Lite0 features) and on
the authors' released features; resuming a run; the CLI's answer to bad inputs; and a check
that training really learns on data whose classes are easy to tell apart.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from standins import (
    ARRANGEMENTS,
    SKETCHY_PHOTOS,
    make_authors_features,
    make_sketchy_arrangement,
    make_sketchy_authors_layout,
    make_sketchy_sake_layout,
    sempcyc_names,
)

from index_builder.cli import _print_validation, main
from index_builder.training.config import BuilderSettings
from index_builder.training.datasets.splits import SKETCHY_CLASSES, read_class_list, resolve_split
from index_builder.training.embedding import embed
from index_builder.training.metrics import retrieval_metrics
from index_builder.training.recipes import recipe
from index_builder.training.run import build_model
from index_builder.training.sources import data_classes, feature_sets
from index_builder.training.train import ClassPairSampler, fit

pytestmark = pytest.mark.usefixtures("feature_cache")

CLASSES = [
    "airplane",
    "bell",
    "cup",
    "jack-o-lantern",
    "swan",
    "teddy_bear",
    "wine_bottle",
    "zebra",
]
TEST = ["bell", "swan", "zebra"]
TRAIN = [c for c in CLASSES if c not in TEST]
# (sketches, photos) per class of each layout's stand-in
COUNTS = {"sketchy-authors": (4, 2), "sketchy-sake": (2, 1)}
TRAIN_ARGS = ["--steps", "30", "--val-classes", "1", "--eval-every", "10", "--log-every", "10"]
METRICS = ("map_all", "p_at_100", "map_at_200", "p_at_200")


@pytest.fixture(scope="module")
def test_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("classes") / "test_classes.txt"
    path.write_text("# the unseen classes\n" + "\n".join(TEST) + "\n")
    return path


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data roots of the two layouts (the authors' one as the parent holding ``Sketchy/``)."""
    authors = tmp_path_factory.mktemp("authors-layout")
    make_sketchy_authors_layout(authors, CLASSES, *COUNTS["sketchy-authors"])
    sake = make_sketchy_sake_layout(
        tmp_path_factory.mktemp("sake-layout"), CLASSES, *COUNTS["sketchy-sake"]
    )
    return {"sketchy-authors": authors, "sketchy-sake": sake}


@dataclass
class Run:
    layout: str
    data: Path
    out: Path
    args: list[str]  # the train command line


@pytest.fixture(scope="module", params=list(COUNTS))
def run(
    request: pytest.FixtureRequest,
    datasets: dict[str, Path],
    test_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    """``train`` on one layout's training classes, 30 steps, one validation class."""
    layout = request.param
    data, out = datasets[layout], tmp_path_factory.mktemp("runs") / layout
    args = [
        "train",
        "--data",
        str(data),
        "--test-classes",
        str(test_file),
        "--out",
        str(out),
        *TRAIN_ARGS,
    ]
    assert main(args) == 0
    return Run(layout, data, out, args)


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --- train -> evaluate -> baselines ----------------------------------------------------------


@pytest.mark.slow
def test_train_writes_a_complete_run(run: Run) -> None:
    for name in ("model.safetensors", "run.json", "checkpoint.pt", "log.jsonl"):
        assert (run.out / name).is_file(), name
    info = json.loads((run.out / "run.json").read_text())
    assert info["test_classes"] == TEST
    assert len(info["val_classes"]) == 1
    assert sorted(info["train_classes"] + info["val_classes"]) == TRAIN
    assert info["steps"] == 30
    assert info["selected_step"] in (10, 20, 30)
    assert [h["step"] for h in info["val_history"]] == [10, 20, 30]
    assert all(0.0 <= h["val_map_all"] <= 1.0 for h in info["val_history"])
    assert info["feature_backbone"] == "efficientnet-lite0"
    # every layout here has images: photos are read with their pseudo-sketches
    assert info["config"]["pseudo_sketch"] and info["scaling"]["pseudo_sketch"]
    assert info["iiae"]["input_dim_x"] == 1280 and info["iiae"]["input_dim_y"] == 2 * 1280
    assert info["photo_backbone_fingerprint"] != info["backbone_fingerprint"]
    assert info["recipe"] == "recommended" and info["config"]["w_cls"] == 1.0
    check = info["validation"]
    assert check["model_map_all"] == max(h["val_map_all"] for h in info["val_history"])
    assert 0.0 <= check["baseline_map_all"] <= 1.0
    assert check["model_better"] == (check["model_map_all"] > check["baseline_map_all"])
    log = [json.loads(line) for line in _read_lines(run.out / "log.jsonl")]
    assert [entry["step"] for entry in log] == [10, 20, 30]
    assert all(np.isfinite(entry["total"]) for entry in log)


@pytest.mark.slow
def test_evaluate_writes_metrics_and_a_figure(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_out, figure = tmp_path / "metrics" / "result.json", tmp_path / "queries.png"
    code = main(
        [
            "evaluate",
            "--run",
            str(run.out),
            "--data",
            str(run.data),
            "--json",
            str(json_out),
            "--figure",
            str(figure),
            "--voc",
        ]
    )
    assert code == 0
    result = json.loads(json_out.read_text())
    for key in (*METRICS, "map_all_voc"):
        assert 0.0 <= result[key] <= 1.0, key
    sketches, photos = COUNTS[run.layout]
    assert result["n_queries"] == len(TEST) * sketches
    assert result["n_gallery"] == len(TEST) * photos
    assert result["test_classes"] == TEST
    assert "IIAE convention" in result["convention"]
    assert result["figure"] == str(figure)
    with Image.open(figure) as img:
        assert img.format == "PNG"
        assert img.width > 0 and img.height > 0
    printed = capsys.readouterr().out
    assert "map_all" in printed and f"{result['n_queries']} queries" in printed


@pytest.mark.slow
def test_evaluate_takes_another_head_over_the_run(run: Run) -> None:
    """A model given to evaluate_run is the one scored: the run's with no fusion and no
    category head scores as ``iiae_alone``, with the scaled features alone otherwise."""
    from index_builder.training.evaluate import evaluate_run
    from model.checkpoint import load_model

    model, _ = load_model(run.out)

    def at(fusion: float) -> dict:
        head = model.head.with_weights(fusion_weight=fusion, category_weight=0.0)
        return evaluate_run(run.out, run.data, model=model.with_head(head))

    alone = at(0.0)
    assert alone == evaluate_run(run.out, run.data, iiae_alone=True)
    assert at(1.0)["map_all"] != alone["map_all"]


@pytest.mark.slow
def test_baselines_score_the_raw_features(
    run: Run, test_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "baselines.json"
    code = main(
        ["baselines", "--data", str(run.data), "--test-classes", str(test_file), "--json", str(out)]
    )
    assert code == 0
    rows = json.loads(out.read_text())
    assert set(rows) == {
        "efficientnet-lite0 raw features",
        "efficientnet-lite0 standardized features",
        "efficientnet-lite0 power 0.5, whitened, shrinkage 30 features",
    }
    for metrics in rows.values():
        for key in METRICS:
            assert 0.0 <= metrics[key] <= 1.0, key
    assert "raw features" in capsys.readouterr().out


# --- resuming -------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_again_resumes_from_the_checkpoint(run: Run) -> None:
    model = (run.out / "model.safetensors").read_bytes()
    info = (run.out / "run.json").read_text()
    log = _read_lines(run.out / "log.jsonl")
    assert main(run.args) == 0
    assert (run.out / "model.safetensors").read_bytes() == model
    assert (run.out / "run.json").read_text() == info
    assert _read_lines(run.out / "log.jsonl") == log  # no step ran again
    state = torch.load(run.out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 30


@pytest.mark.slow
def test_training_again_with_another_config_is_refused(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    model = (run.out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*run.args, "--lr", "0.001"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "another configuration" in err and "--out" in err
    assert str(run.out / "checkpoint.pt") in err
    assert (run.out / "model.safetensors").read_bytes() == model


# --- the authors' released features ---------------------------------------------------------


@pytest.mark.slow
def test_authors_features_end_to_end(
    tmp_path: Path, test_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_authors_features(tmp_path / "released", 1, CLASSES, 4, test_classes=TEST)
    out, json_out = tmp_path / "run", tmp_path / "result.json"
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--test-classes",
            str(test_file),
            "--out",
            str(out),
            *TRAIN_ARGS,
        ]
    )
    assert code == 0
    info = json.loads((out / "run.json").read_text())
    assert info["feature_backbone"] == "vgg16-authors"
    assert info["iiae"]["input_dim_x"] == 512
    assert info["test_classes"] == TEST
    assert main(["evaluate", "--run", str(out), "--data", str(data), "--json", str(json_out)]) == 0
    result = json.loads(json_out.read_text())
    for key in METRICS:
        assert 0.0 <= result[key] <= 1.0, key
    assert result["n_queries"] == result["n_gallery"] == len(TEST) * 4
    assert "trained 30 steps on 4 classes" in capsys.readouterr().out


# --- bad inputs -----------------------------------------------------------------------------


def _train_error(capsys: pytest.CaptureFixture[str], data: Path, test: Path, out: Path) -> str:
    capsys.readouterr()
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--test-classes",
            str(test),
            "--out",
            str(out),
            "--steps",
            "1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ")
    return captured.err


def test_cli_names_a_missing_data_folder(
    tmp_path: Path, test_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-data"
    err = _train_error(capsys, missing, test_file, tmp_path / "run")
    assert str(missing) in err and "does not exist" in err
    assert not (tmp_path / "run").exists()


def test_cli_names_an_unknown_test_class(
    datasets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "test_classes.txt"
    bad.write_text("bell\nunicorn\n")
    err = _train_error(capsys, datasets["sketchy-sake"], bad, tmp_path / "run")
    assert "'unicorn'" in err and str(bad) in err
    assert "'bell'" not in err


def test_cli_names_a_class_without_photos(
    tmp_path: Path, test_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_sketchy_authors_layout(tmp_path / "data", CLASSES, 1, 1)
    empty = base / SKETCHY_PHOTOS / "cup"
    shutil.rmtree(empty)
    empty.mkdir()  # the folder is there, but holds no photo
    err = _train_error(capsys, tmp_path / "data", test_file, tmp_path / "run")
    assert "'cup' has sketches but no photos" in err
    assert str(empty) in err


def test_cli_names_a_missing_run(
    datasets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-run"
    code = main(["evaluate", "--run", str(missing), "--data", str(datasets["sketchy-sake"])])
    assert code == 2
    assert str(missing) in capsys.readouterr().err


# --- learning -------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_learns_the_seen_classes(datasets: dict[str, Path], test_file: Path) -> None:
    """On classes that are easy to tell apart, sketch->photo mAP ends far above chance."""
    data = datasets["sketchy-authors"]
    train, _ = resolve_split(data_classes(data), None, test_file)
    # the training classes' features, from the cache the runs above filled
    sk, ph = feature_sets(data, train, "efficientnet-lite0", settings=BuilderSettings())
    cfg = recipe(steps=150, seed=0)
    model = build_model(cfg, sk, ph, train)

    def seen_map() -> float:
        zx, zy = embed(model, sk.clean, "sketch"), embed(model, ph.clean, "photo")
        return retrieval_metrics(zx, sk.labels, zy, ph.labels)["map_all"]

    gallery = np.asarray(ph.labels)
    chance = float(np.mean([(gallery == label).mean() for label in sk.labels]))
    assert chance == pytest.approx(1 / len(train))
    before = seen_map()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    fit(model, ClassPairSampler(sk, ph, train, cfg), opt, cfg.steps, progress=False)
    after = seen_map()
    assert after >= chance + 0.5, (chance, before, after)
    assert after >= before + 0.2, (chance, before, after)


def test_train_prints_validation_beside_the_baseline_and_warns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    info = {
        "val_classes": ["a", "b"],
        "selected_step": 300,
        "validation": {"model_map_all": 0.25, "baseline_map_all": 0.3125, "model_better": False},
    }
    _print_validation(info)
    out, err = capsys.readouterr()
    assert "model 0.2500 (step 300), standardised backbone features 0.3125" in out
    assert "2 held-out" in out and err.startswith("warning: the model does not beat")
    info["validation"] = {"model_map_all": 0.5, "baseline_map_all": 0.25, "model_better": True}
    _print_validation(info)
    out, err = capsys.readouterr()
    assert "model 0.5000" in out and err == ""
    _print_validation({"validation": None})
    assert capsys.readouterr() == ("", "")


# --- the paper recipe on Sketchy as users have it -------------------------------------------

# Each arrangement is detected with each built-in split in test_datasets.py; end to end here on
# two (feature extraction is the slow part): the split's test classes plus 5 training classes.
E2E = {"sem-pcyc": "sketchy-split1", "sake": "sketchy-split1-sake"}


@pytest.mark.slow
@pytest.mark.parametrize("arrangement", list(E2E))
def test_paper_recipe_trains_on_published_arrangements_with_a_builtin_split(
    arrangement: str, tmp_path: Path
) -> None:
    split, out = E2E[arrangement], tmp_path / "run"
    test = read_class_list(split)
    classes = test + [c for c in SKETCHY_CLASSES if c not in test][:5]
    renamed = arrangement == "sem-pcyc"  # SEM-PCYC's script renames two classes
    names = sempcyc_names(classes) if renamed else classes
    root = make_sketchy_arrangement(tmp_path / "data", arrangement, names, 1, 1, 2)
    assert (
        main(
            [
                "train",
                "--data",
                str(root),
                "--test-classes",
                split,
                "--recipe",
                "paper",
                "--out",
                str(out),
                "--log-every",
                "1",
            ]
        )
        == 0
    )
    info = json.loads((out / "run.json").read_text())
    assert info["recipe"] == "paper" and info["config"]["standardize"] is False
    assert info["iiae"]["decoder_hidden_dims"] == [128] and info["iiae"]["init"] == "glorot"
    assert info["test_classes"] == sorted(names[:25]) and len(info["train_classes"]) == 5
    assert info["steps"] == 9  # 9 epochs of (training sketches // one per class) = 1 step
    assert info["validation"] is None
    gallery = "sake" if ARRANGEMENTS[arrangement][2] else "extended"
    result_file = tmp_path / "result.json"
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(out),
                "--data",
                str(root),
                "--gallery",
                gallery,
                "--json",
                str(result_file),
            ]
        )
        == 0
    )
    result = json.loads(result_file.read_text())
    assert result["n_gallery"] == 25 * (3 if gallery == "sake" else 1)
    assert result["model"].startswith("IIAE (efficientnet-lite0)")


@pytest.mark.slow
def test_paper_recipe_on_the_feature_files_with_no_class_list(
    tmp_path: Path, datasets: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_authors_features(tmp_path / "released", 1, CLASSES, 4, test_classes=TEST)
    out, result_file = tmp_path / "run", tmp_path / "result.json"
    assert main(["train", "--data", str(data), "--recipe", "paper", "--out", str(out)]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["test_classes"] == TEST and info["data"] == str(data / "SketchyVGG" / "split1")
    assert info["steps"] == 9 * (len(TRAIN) * 4 // len(TRAIN))
    assert (
        main(["evaluate", "--run", str(out), "--data", str(data), "--json", str(result_file)]) == 0
    )
    assert json.loads(result_file.read_text())["model"].startswith("IIAE (vgg16-authors)")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--data", str(datasets["sketchy-sake"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "trained on the IIAE authors' feature files" in err


@pytest.mark.slow
def test_evaluate_refuses_feature_files_for_an_image_run(
    run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_authors_features(tmp_path / "released", 1, CLASSES, 2, test_classes=TEST)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run.out), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "trained on images through efficientnet-lite0" in err and str(data) in err
