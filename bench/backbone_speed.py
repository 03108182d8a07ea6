"""Image backbone speed on this CPU: PyTorch throughput and ONNX Runtime latency, side by side.

    python -m bench.backbone_speed [--backbones dinov2-vits14 efficientnet-lite0]
                                   [--threads 1 2] [--repeats 3] [--json OUT]

For each backbone, in the same run: PyTorch images/s at batch 32 and at batch 1 with each
``--threads`` count (median of ``--repeats`` timed calls after a warm-up), then the
backbone exported as ``model.export.export_module`` exports encoders (TorchScript exporter,
opset 17) and timed in ONNX Runtime at batch 1 (median latency of 10 runs per thread count).
Random inputs: the cost does not depend on the pixels. The load average is printed with the
machine: on a shared CPU the figures vary with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from model.backbones import load_backbone
from model.export import export_module

BATCHES = (32, 1)
ORT_RUNS = 10


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    load = os.getloadavg()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores (load {load:.1f}); torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}"
    )


def _median_seconds(call, repeats: int) -> float:  # type: ignore[no-untyped-def]
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _row(name: str, runtime: str, threads: int, batch: int, seconds: float) -> dict:
    return {
        "backbone": name,
        "runtime": runtime,
        "threads": threads,
        "batch": batch,
        "images_per_s": batch / seconds,
        "ms_per_batch": 1e3 * seconds,
    }


def measure(name: str, threads: list[int], repeats: int) -> list[dict]:
    backbone = load_backbone(name)
    size = backbone.preprocessing.image_size
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        for batch in BATCHES:
            x = torch.randn(batch, 3, size, size)
            with torch.inference_mode():
                seconds = _median_seconds(lambda x=x: backbone(x), repeats)
            rows.append(_row(name, "pytorch", n, batch, seconds))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        export_module(backbone, path, size, backbone.feature_dim, opset=17)
        x = torch.randn(1, 3, size, size).numpy()
        for n in threads:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = n
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            seconds = _median_seconds(lambda s=session: s.run(None, {"image": x}), ORT_RUNS)
            rows.append(_row(name, "onnxruntime", n, 1, seconds))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| backbone | runtime | threads | batch | images/s | ms per batch |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['runtime']} | {r['threads']} | {r['batch']} "
            f"| {r['images_per_s']:.1f} | {r['ms_per_batch']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["dinov2-vits14", "efficientnet-lite0"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = [r for name in args.backbones for r in measure(name, args.threads, args.repeats)]
    print(machine())
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
