"""Peak memory of decoding one gallery photo, per kind, and of four decoded at once.

    python -m bench.gallery_decode_memory [--work /tmp/gallery-decode-memory] [--json OUT]

Each case runs ``index_builder.indexing.embed.decode_photo`` (what ``build-index`` runs per
file) in a fresh subprocess and reports the growth of its peak resident memory (VmHWM, reset
through /proc/self/clear_refs after the imports) over its resident memory before, and the wall
time. The images are generated (smooth ramps,
so the files stay small, as a well-compressed large PNG does): a 100 MP JPEG (draft mode), a
32 MP RGBA PNG, 16-bit grey PNG and palette PNG with a transparent colour (the largest other
formats accepted), a 100 MP PNG and a 3 GB sparse file with a PNG header (both refused before
their bytes are read); then four 32 MP RGBA PNGs through four decoding threads at once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from index_builder.indexing.embed import (
    MAX_DECODE_PIXELS,
    MAX_PIXELS,
    PER_IMAGE_PEAK_BYTES,
    Decoded,
    decode_photo,
)
from index_builder.indexing.scan import sha256_file
from model.preprocess import Preprocessing


def ramp(width: int, height: int, channels: int) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    grey = ((x + y) / 2).astype(np.uint8)
    return np.repeat(grey[..., None], channels, -1) if channels > 1 else grey


def make_images(work: Path) -> dict[str, Path]:
    """The cases (generated once into ``work``)."""
    work.mkdir(parents=True, exist_ok=True)
    side = int(MAX_DECODE_PIXELS**0.5)
    jpeg_side = int(MAX_PIXELS**0.5)
    cases = {
        "jpeg-100mp": (lambda: Image.fromarray(ramp(jpeg_side, jpeg_side, 3)), "jpg"),
        "rgba-png-32mp": (lambda: Image.fromarray(ramp(side, side, 4), "RGBA"), "png"),
        "grey16-png-32mp": (
            lambda: Image.fromarray(ramp(side, side, 1).astype(np.uint16) * 257),
            "png",
        ),
        "palette-trns-png-32mp": (lambda: Image.fromarray(ramp(side, side, 3)).quantize(64), "png"),
        "png-100mp-refused": (lambda: Image.fromarray(ramp(jpeg_side, jpeg_side, 3)), "png"),
    }
    paths = {}
    for name, (make, ext) in cases.items():
        path = work / f"{name}.{ext}"
        if not path.exists():
            extra = {"transparency": 0} if name.startswith("palette") else {}
            make().save(path, compress_level=1, **extra) if ext == "png" else make().save(path)
        paths[name] = path
    sparse = work / "sparse-3gb.png"
    if not sparse.exists():
        with open(sparse, "wb") as f:
            f.write(paths["rgba-png-32mp"].read_bytes()[:64])
            f.truncate(3 * 2**30)
    paths["sparse-3gb-refused"] = sparse
    return paths


def measure(paths: list[Path]) -> dict:
    """Decode ``paths`` on one thread each, at once; peak memory growth and time."""
    from concurrent.futures import ThreadPoolExecutor

    prep = Preprocessing()
    hashes = [sha256_file(p) if p.stat().st_size < 2**30 else "0" * 64 for p in paths]
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status_kb("VmRSS")
    start = time.perf_counter()
    with ThreadPoolExecutor(len(paths)) as pool:
        results = list(
            pool.map(lambda ph: decode_photo(*ph, prep), zip(paths, hashes, strict=True))
        )
    seconds = time.perf_counter() - start
    peak_mb = (_status_kb("VmHWM") - base) / 1024
    outcome = [f"decoded {r.size}" if isinstance(r, Decoded) else r.error for r in results]
    return {"peak_mb": round(peak_mb), "seconds": round(seconds, 2), "outcome": outcome}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gallery-decode-memory"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", nargs="+", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the subprocess
        print(json.dumps(measure(args.measure)))
        return
    paths = make_images(args.work)
    runs = {name: [path] for name, path in paths.items()}
    runs["4x rgba-png-32mp at once"] = [paths["rgba-png-32mp"]] * 4
    rows = {}
    for name, files in runs.items():
        cmd = [sys.executable, "-m", "bench.gallery_decode_memory", "--measure", *map(str, files)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[name] = json.loads(done.stdout)
        print(
            f"{name:28s} peak +{rows[name]['peak_mb']:5d} MB  {rows[name]['seconds']:6.2f} s  "
            f"{rows[name]['outcome'][0]}"
        )
    print(f"bound used for the default workers: {PER_IMAGE_PEAK_BYTES / 2**20:.0f} MB an image")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
