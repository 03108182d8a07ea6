"""``python -m index_builder``: prepare data, train, evaluate, compare with baselines."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import types
import typing
from pathlib import Path

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from gallery_store.photos import printable
from index_builder.indexing.engines import ENGINES
from index_builder.training.config import BuilderSettings, TrainConfig, ignored_training_variables
from index_builder.training.datasets.sketchy import GALLERIES
from index_builder.training.recipes import DEFAULT_RECIPE, RECIPES, recipe

USER_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    FileNotFoundError,
    PermissionError,
    NotADirectoryError,
    RuntimeError,
)


def _flag_type(field: FieldInfo) -> type:
    ann = field.annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        ann = next(a for a in typing.get_args(ann) if a is not type(None))
    return ann  # type: ignore[return-value]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--recipe, and one --flag per other ``TrainConfig`` field; unset flags leave the
    recipe's value."""
    group = parser.add_argument_group("training configuration (flags override the recipe)")
    group.add_argument(
        "--recipe",
        choices=RECIPES,
        default=DEFAULT_RECIPE,
        help=f"named complete configuration (default: {DEFAULT_RECIPE})",
    )
    for name, field in TrainConfig.model_fields.items():
        if name == "recipe":
            continue
        flag = "--" + name.replace("_", "-")
        kind = _flag_type(field)
        values = ", ".join(f"{r} {getattr(c, name)}" for r, c in RECIPES.items())
        helptext = f"{field.description or name} ({values})"
        if kind is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=helptext
            )
        elif typing.get_origin(kind) is typing.Literal:
            group.add_argument(flag, choices=typing.get_args(kind), default=None, help=helptext)
        else:
            group.add_argument(flag, type=kind, default=None, help=helptext)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe named by ``--recipe`` with the flags given over it."""
    fields = [k for k in TrainConfig.model_fields if k != "recipe"]
    given = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    return recipe(args.recipe, **given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m index_builder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="turn ../shared/data into the folder layout")
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--photo-table",
        type=Path,
        default=None,
        help="class<TAB>source<TAB>path table of the photos (default: the curated "
        "index_builder/training/data/photo_map.tsv; the shared folder's "
        "tuxpaint_photos.tsv with --shared-table)",
    )
    p.add_argument(
        "--shared-table",
        action="store_true",
        help="only the shared folder's tuxpaint_photos.tsv (78 classes)",
    )
    p.add_argument("--stroke-width", type=float, default=3.0)
    p.add_argument("--margin", type=float, default=0.1)

    p = sub.add_parser("render-quickdraw", help="render Quick, Draw! .ndjson to sketch images")
    p.add_argument(
        "--ndjson",
        type=Path,
        nargs="+",
        required=True,
        help=".ndjson files (each named after its category: cat.ndjson) or folders of them",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--stroke-width", type=float, default=3.0)
    p.add_argument("--margin", type=float, default=0.1)

    p = sub.add_parser("train", help="train IIAE on the training classes")
    _data_args(p)
    p.add_argument("--out", type=Path, required=True, help="run directory")
    add_config_flags(p)

    p = sub.add_parser("evaluate", help="zero-shot retrieval metrics of a run")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--test-classes", help="file or built-in split (default: the run's)")
    p.add_argument("--json", type=Path, help="write the metrics here")
    p.add_argument("--figure", type=Path, help="PNG of queries and their top photos")
    p.add_argument(
        "--figure-cell", type=int, default=160, help="pixels per picture of --figure (160)"
    )
    p.add_argument("--voc", action="store_true", help="also VOC-interpolated mAP")
    p.add_argument(
        "--gallery",
        choices=GALLERIES,
        default="extended",
        help="Sketchy photos searched: the extended photos (default), or SAKE's / "
        "ZSE-SBIR's set: those plus Sketchy's own photos",
    )

    p = sub.add_parser(
        "baselines",
        help="untrained backbone features: raw, standardised, and "
        "rooted and whitened as the recommended recipe's inputs",
    )
    _data_args(p)
    p.add_argument("--backbone", default="efficientnet-lite0")
    p.add_argument(
        "--pseudo-sketch",
        action="store_true",
        help="also with photos read with their pseudo-sketches",
    )
    p.add_argument(
        "--holdout-sketches",
        type=float,
        default=recipe().holdout_sketches,
        help="share of the training classes' sketches left out of the statistics, as a run "
        f"holds them out (default: the {DEFAULT_RECIPE} recipe's, {recipe().holdout_sketches})",
    )
    p.add_argument("--json", type=Path)

    p = sub.add_parser("export-onnx", help="export a run's sketch and photo encoders to ONNX")
    p.add_argument("--run", type=Path, required=True, help="training run directory")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--quantize",
        choices=["int8-static", "int8-dynamic"],
        help="int8 photo encoder (BENCHMARKS.md section 5: measured, not the default)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help="data root whose training-class photos calibrate --quantize int8-static",
    )
    _gallery_parsers(sub)
    return parser


def _gallery_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-index",
        help="embed a photo gallery into a new index (FAISS, or Qdrant with SBIR_STORE=qdrant)",
    )
    p.add_argument("--model", type=Path, required=True, help="model directory (export-onnx)")
    p.add_argument("--photos", type=Path, required=True, help="folder tree or list file")
    p.add_argument(
        "--out",
        type=Path,
        help="index directory to create (the FAISS store; "
        "Qdrant's location is SBIR_QDRANT_URL or SBIR_QDRANT_PATH)",
    )
    _gallery_flags(p)
    p = sub.add_parser("rebuild", help="update a gallery index (only new and changed photos)")
    p.add_argument("--index", type=Path, help="index directory (the FAISS store)")
    p.add_argument("--photos", type=Path, help="folder tree or list file (default: as before)")
    p.add_argument("--model", type=Path, help="model directory (default: as before)")
    p.add_argument("--full", action="store_true", help="embed every photo again")
    _gallery_flags(p)


def _gallery_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by build-index and rebuild; unset ones take SBIR_GALLERY_* or defaults."""

    def at_least_one(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
        return value

    def share(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
        return value

    p.add_argument("--batch-size", type=at_least_one, help="photos per encoder batch (32)")
    p.add_argument(
        "--workers",
        type=at_least_one,
        help="lanes, each decoding then encoding a batch (default: min(8, cores) within a "
        "4 GB decode budget)",
    )
    p.add_argument("--keep", type=at_least_one, help="served index versions to keep (3)")
    p.add_argument(
        "--max-shrink",
        type=share,
        help="largest share of the served photos a build may drop without --allow-shrink (0.2)",
    )
    p.add_argument(
        "--allow-shrink",
        action="store_true",
        help="accept a build that drops more than --max-shrink, or that cannot read some folders",
    )
    p.add_argument("--allow-empty", action="store_true", help="accept a build with no photo")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        help="embedding engine: local (threads, "
        "ONNX Runtime in this process; default) or ray (Ray Data actors)",
    )
    p.add_argument(
        "--ray-address",
        help="with --engine ray: the Ray cluster (HOST:PORT, "
        "ray://HOST:PORT or auto; default: a local Ray sized to the cores)",
    )
    p.add_argument("--no-progress", action="store_true")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="data root (any supported layout)")
    p.add_argument("--train-classes", help="class list file or built-in split name")
    p.add_argument("--test-classes", help="class list file or built-in split name")


def run_command(args: argparse.Namespace) -> int:
    settings = BuilderSettings()
    settings.apply_torch_threads()
    if args.command == "prepare":
        from index_builder.training.prepare import PHOTO_MAP, prepare_shared_data

        table = None if args.shared_table else (args.photo_table or PHOTO_MAP)
        report = prepare_shared_data(
            args.shared,
            args.out,
            stroke_width=args.stroke_width,
            margin=args.margin,
            photo_table=table,
        )
        print(report.summary())
    elif args.command == "render-quickdraw":
        from index_builder.training.datasets.quickdraw import render_quickdraw

        n = render_quickdraw(
            args.ndjson,
            args.out,
            size=args.size,
            stroke_width=args.stroke_width,
            margin=args.margin,
        )
        print(f"rendered {n} drawings into {args.out}")
    elif args.command == "train":
        from index_builder.training.run import train_run

        cfg = config_from_args(args)
        if ignored := ignored_training_variables():
            print(
                f"note: {', '.join(ignored)} not read: training settings are the recipe's "
                "and flags",
                file=sys.stderr,
            )
        info = train_run(args.data, args.out, cfg, args.train_classes, args.test_classes, settings)
        print(
            f"trained {info['steps']} steps on {len(info['train_classes'])} classes "
            f"(recipe {cfg.recipe}) -> {args.out}"
        )
        _print_validation(info)
    elif args.command == "evaluate":
        from index_builder.training.evaluate import evaluate_run, format_table

        result = evaluate_run(
            args.run,
            args.data,
            args.test_classes,
            args.json,
            args.figure,
            args.voc,
            settings,
            args.gallery,
            figure_cell_px=args.figure_cell,
        )
        rows = {f"unseen test classes: {result['model']}": result}
        held = result.get("heldout")
        if held is not None:
            rows[held["queries"]] = held
        print(format_table(rows))
        print(
            f"unseen: {result['n_queries']} queries, {result['n_gallery']} photos; "
            + (
                f"held-out: {held['n_queries']} queries, {held['n_gallery']} photos of the "
                "run's classes; "
                if held
                else ""
            )
            + result["convention"]
        )
    elif args.command == "baselines":
        _baselines(args, settings)
    elif args.command == "export-onnx":
        from model.export import Int8Photo, export_onnx

        int8 = (
            Int8Photo(quantization=args.quantize, data=args.calibration) if args.quantize else None
        )
        meta = export_onnx(args.run, args.out, args.opset, int8)
        variant = f", {meta.quantization}" if meta.quantization else ""
        print(
            f"exported {meta.backbone} sketch and photo encoders -> {args.out} "
            f"(fingerprint {meta.fingerprint[:16]}{variant})"
        )
    elif args.command in ("build-index", "rebuild"):
        _gallery(args)
    return 0


def _print_validation(info: dict) -> None:
    """The model's validation mAP@all beside the training-free baseline; warn when not above."""
    check = info.get("validation")
    if not check:
        return
    # the baseline reads the model's inputs: photos with their pseudo-sketches where it does
    pseudo = info.get("config", {}).get("pseudo_sketch")
    with_pseudo = " (photos with pseudo-sketches)" if pseudo else ""
    baseline = f"standardised backbone features{with_pseudo} {check['baseline_map_all']:.4f}"
    print(
        f"validation ({len(info['val_classes'])} held-out training classes, mAP@all): "
        f"model {check['model_map_all']:.4f} (step {info['selected_step']}), "
        f"{baseline}"
    )
    if not check["model_better"]:
        print(
            "warning: the model does not beat the training-free standardised baseline on "
            "the validation classes; prefer the baseline or another recipe",
            file=sys.stderr,
        )


def _gallery(args: argparse.Namespace) -> None:
    from gallery_store.base import write_error
    from gallery_store.settings import StoreSettings
    from gallery_store.stores import open_store
    from index_builder.indexing.rebuild import (
        BuildOptions,
        GallerySettings,
        build_new_index,
        rebuild,
    )

    settings = GallerySettings()
    names = ("batch_size", "workers", "keep", "max_shrink", "engine", "ray_address")
    pick = {
        n: getattr(settings, n) if getattr(args, n) is None else getattr(args, n) for n in names
    }
    options = BuildOptions(
        **pick,
        progress=not args.no_progress,
        allow_shrink=args.allow_shrink,
        allow_empty=args.allow_empty,
    )
    flag, index_dir = (
        ("--out", args.out) if args.command == "build-index" else ("--index", args.index)
    )
    store_settings = StoreSettings()
    if store_settings.store == "faiss" and index_dir is None:
        raise ValueError(f"{flag} INDEX_DIR is required (the FAISS store's directory)")
    if store_settings.store == "qdrant" and index_dir is not None:
        raise ValueError(
            f"{flag} names a FAISS index directory, but SBIR_STORE=qdrant: "
            f"the store is SBIR_QDRANT_URL or _PATH; leave out {flag}"
        )
    store = open_store(store_settings, index_dir)
    try:
        if args.command == "build-index":
            result = build_new_index(args.model, args.photos, store, options)
        else:
            result = rebuild(store, args.photos, args.model, args.full, options)
    except OSError as err:  # a message, never a traceback: what failed where (and the space)
        if err.strerror is None:  # raised with a message of ours
            raise
        where = Path(err.filename) if err.filename else Path(index_dir or ".")
        raise write_error(err, args.command, where) from err
    finally:
        store.close()
    emit(result.summary())


def emit(text: str) -> None:
    """Print the result of work already done; a reader that went away (``| head -1``)
    does not undo it, so that ends quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _silence_output()


def _silence_output() -> None:
    """Point stdout and stderr at /dev/null: what is still buffered for a closed pipe would
    raise again when Python flushes it at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # not a real file: nothing to flush
            os.dup2(devnull, stream.fileno())


def _baselines(args: argparse.Namespace, settings: BuilderSettings) -> None:
    from index_builder.training.evaluate import evaluate_baselines, format_table
    from index_builder.training.recipes import input_scaling
    from index_builder.training.sources import data_split

    data, train, test = data_split(args.data, args.train_classes, args.test_classes)
    rows = evaluate_baselines(
        data,
        train,
        test,
        args.backbone,
        settings,
        args.pseudo_sketch,
        whiten=input_scaling(),
        holdout_sketches=args.holdout_sketches,
    )
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except BrokenPipeError:  # the output's reader went away mid-way: stop, without a traceback
        _silence_output()
        return 141  # as a process killed by SIGPIPE
    except ValidationError as err:
        print(f"error: invalid configuration: {err}", file=sys.stderr)
    except USER_ERRORS as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
    return 2
