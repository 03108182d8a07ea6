"""Int8 variants of an exported encoder (ONNX Runtime's quantisation), for CPUs where they pay.

Only the convolutions (the backbone) are quantised: the heads are a sliver of the time
(BENCHMARKS.md section 5) and their small differences are what retrieval ranks by. ``static``:
int8 weights (per channel) and uint8 activations whose ranges come from calibration inputs
(QDQ format: ONNX Runtime runs QLinearConv); ``dynamic``: int8 weights, activation ranges
measured on every input (ConvInteger). Whether a variant keeps the model's accuracy is measured
by ``bench/export_accuracy.py``, never assumed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

Quantization = Literal["int8-static", "int8-dynamic"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
QUANTIZED_OPS = ["Conv"]


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = (
            {input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_encoder(
    path: Path,
    quantization: Quantization,
    calibration: Iterable[np.ndarray] = (),
    input_name: str = "image",
) -> None:
    """Replace the float ONNX encoder at ``path`` by its ``quantization`` variant;
    ``calibration``: batches of encoder inputs (``int8-static`` needs them)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose {QUANTIZATIONS}")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "out.onnx"
        quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
        if quantization == "int8-dynamic":
            quantize_dynamic(pre, out, op_types_to_quantize=QUANTIZED_OPS)
        else:
            reader = _Batches(input_name, calibration)
            quantize_static(
                pre,
                out,
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZED_OPS,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        out.replace(path)
