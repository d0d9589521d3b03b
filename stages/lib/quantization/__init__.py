"""Export to ONNX, and the ONNX Runtime recipes: static INT8 (QDQ), dynamic INT8, FP16.

Static QDQ quantization: weights INT8 (per output channel or per tensor), activations
UINT8 with ranges calibrated on real training images; the ranges are written as JSON (the
calibration cache), so re-quantizing with other layers kept in float costs no recalibration.
QDQ keeps the graph readable and is what ORT's CPU kernels and most edge runtimes
(TensorRT, OpenVINO) consume. Dynamic INT8 quantizes weights only and computes activation
ranges at every call (CNN convs become ConvInteger). FP16 halves weights and compute,
keeping float32 inputs and outputs.
"""

import copy
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.quantize import save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from stages.lib.quantization.entropy import entropy_ranges

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
WEIGHT_TYPES = ACTIVATION_TYPES


def export_onnx(model, path, image_size, opset=18):
    """FP32 ONNX with a dynamic batch axis; input 'image' (N,3,S,S) in [0,1], output 'logits'.

    Exported from a copy whose in-place activations compute out of place (`out_of_place`): the same ops, but
    torch.export's decomposition under the symbolic batch runs each in-place op (timm's ReLU6(inplace=True))
    through Python reference implementations, ~35 % of Lite0's export time (8.0 -> 5.2 s at 64 px)."""
    model.eval()  # not chained: a converted PT2E graph's eval() (QAT's route) returns None
    model = out_of_place(model)
    example = (torch.rand(2, 3, image_size, image_size),)  # not 1: torch.export specialises size-1 dims (ConvNeXt)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    strip_debug_info(path)
    return Path(path)


def out_of_place(model):
    """`model`, or a copy of it whose modules with `inplace=True` (activations, dropout) compute out of place."""
    if not any(getattr(m, "inplace", None) is True for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for m in model.modules():
        if getattr(m, "inplace", None) is True:
            m.inplace = False
    return model


def strip_debug_info(path):
    """Drop what the exporter records for debugging (source file paths, stack traces, FX node text).

    Those strings hold absolute paths, so the same model.pt exported from two clones gave two
    different files, and DVC re-ran everything downstream. Without them the export is byte-identical.
    """
    model = onnx.load(str(path))
    for nodes in [model.graph.node, *(f.node for f in model.functions)]:
        _strip_nodes(nodes)
    model.graph.doc_string = ""
    del model.metadata_props[:]
    onnx.save(model, str(path))


def _strip_nodes(nodes):
    for node in nodes:
        del node.metadata_props[:]
        node.doc_string = ""
        for attr in node.attribute:  # control-flow subgraphs (If, Loop, Scan)
            for graph in [attr.g, *attr.graphs]:
                _strip_nodes(graph.node)


class ImageReader(CalibrationDataReader):
    """Feeds calibration images to ORT's calibrator in batches."""

    def __init__(self, x_float, batch_size=16):
        self.batches = iter([{"image": x_float[i : i + batch_size]} for i in range(0, len(x_float), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(fp32_path, int8_path, calib_x, per_channel=True, calibrate_method="minmax", activation_type="uint8"):
    """Static INT8 (QDQ) version of an FP32 ONNX model, calibrated on `calib_x` (N,3,S,S float32)."""
    return quantize_static_qdq(
        fp32_path,
        int8_path,
        calib_x,
        per_channel=per_channel,
        calibrate_method=calibrate_method,
        activation_type=activation_type,
    )


def preprocess(fp32_path, out_path):
    """Shape inference + the graph fusions ORT recommends before quantizing."""
    quant_pre_process(str(fp32_path), str(out_path))
    return Path(out_path)


def quantize_static_qdq(
    fp32_path,
    int8_path,
    calib_x=None,
    cache=None,
    per_channel=True,
    calibrate_method="minmax",
    activation_type="uint8",
    weight_type="int8",
    reduce_range=False,
    op_types=None,
    exclude=(),
    only=None,
    preprocessed=False,
):
    """Static INT8 (QDQ) of an FP32 ONNX model.

    Ranges come from `calib_x` (N,3,S,S float32), or from `cache` (calibration JSON) when that file
    exists; with `cache` given, freshly computed ranges are written there. `exclude`: node names kept
    in float; `only`: node names, the only ones quantized (None: all). `op_types`: the op types to
    quantize (None = all ORT can); when given, their outputs stay float too (ORT quantizes a MatMul's
    output by default, which would hand the Softmax, LayerNorm or residual Add after it quantized inputs:
    DQ -> MatMul then runs as MatMulIntegerToFloat). `preprocessed`: `fp32_path` already went through
    `preprocess` (node names then match the graph a sensitivity analysis ran on).
    """
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    prepped = int8_path.with_name(int8_path.stem + "_prep.onnx")
    if preprocessed:
        prepped.write_bytes(fp32_path.read_bytes())
    else:
        preprocess(fp32_path, prepped)
    reader = None if calib_x is None else ImageReader(np.ascontiguousarray(calib_x, dtype=np.float32))
    scratch = tempfile.TemporaryDirectory()
    if calibrate_method == "entropy" and not (cache is not None and Path(cache).is_file()):
        if reader is None:
            raise ValueError("entropy calibration needs calibration images or an existing calibration cache")
        cache = Path(scratch.name) / "calibration.json" if cache is None else cache
        save_tensors_data(entropy_ranges(prepped, reader, op_types, Path(scratch.name)), cache)
    quantize_static(
        str(prepped),
        str(int8_path),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types,
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=ACTIVATION_TYPES[activation_type],
        weight_type=WEIGHT_TYPES[weight_type],
        nodes_to_exclude=list(exclude),
        nodes_to_quantize=None if only is None else list(only),
        calibrate_method=CALIBRATION_METHODS[calibrate_method],
        calibration_cache_path=None if cache is None else str(cache),
        extra_options=None if op_types is None else {"OpTypesToExcludeOutputQuantization": list(op_types)},
    )
    scratch.cleanup()
    prepped.unlink()
    if cache is not None:
        canonical_json(cache)
    return int8_path


def canonical_json(path):
    """Rewrite a JSON file with sorted keys. ORT writes the calibration cache in the iteration order of a set of
    tensor names, which changes with the process's string hash seed: the same ranges gave different bytes in
    every run, and DVC re-ran evaluate and everything after it for an unchanged model."""
    path = Path(path)
    text = path.read_text()
    canonical = json.dumps(json.loads(text), sort_keys=True)
    if text != canonical:
        path.write_text(canonical)


def quantize_dynamic_int8(
    fp32_path, int8_path, per_channel=True, weight_type="int8", reduce_range=False, op_types=None
):
    """Dynamic INT8: weights quantized offline, activation ranges computed at every call."""
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    prepped = int8_path.with_name(int8_path.stem + "_prep.onnx")
    preprocess(fp32_path, prepped)
    quantize_dynamic(
        str(prepped),
        str(int8_path),
        op_types_to_quantize=op_types,
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=WEIGHT_TYPES[weight_type],
    )
    prepped.unlink()
    return int8_path


def to_fp16(fp32_path, fp16_path):
    """FP16 weights and compute; the graph keeps float32 input and output (casts at both ends)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(fp16_path))
    return Path(fp16_path)


def op_counts(path):
    """How many nodes of each op type the graph holds (QuantizeLinear, ConvInteger, Softmax ...)."""
    counts = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def weight_scales(path):
    """How the graph's INT8 weights are scaled: 'per_channel', 'per_tensor', 'mixed', or None (no INT8 weights).

    Read from the graph, not the recipe: dynamic INT8 (ConvInteger) keeps one scale per weight tensor
    even when asked for per-channel scales.
    """
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    scales = [
        numpy_helper.to_array(t).size
        for t in graph.initializer
        if t.name.endswith("_scale") and t.name.removesuffix("_scale").endswith("weight")
    ]
    found = {"per_channel" if n > 1 else "per_tensor" for n in scales}
    return None if not found else found.pop() if len(found) == 1 else "mixed"


def int8_nodes(path):
    """{node name: op type} of the nodes that run in INT8 in a QDQ graph.

    ORT fuses DequantizeLinear -> op -> QuantizeLinear into an integer kernel: every input dequantized and
    every output quantized. MatMul/Gemm also run in INT8 with a float output (MatMulIntegerToFloat).
    A node kept in float may still read dequantized activations (its producers' outputs are quantized
    for other consumers), but its weights and its arithmetic stay float.
    """
    return int8_nodes_of(onnx.load(str(path), load_external_data=False).graph)


def int8_nodes_of(graph):
    """`int8_nodes` of a loaded graph."""
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    out = {}
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or not all(i in dq for i in n.input if i):
            continue
        if n.op_type in ("MatMul", "Gemm") or all(o in quantized for o in n.output):
            out[n.name] = n.op_type
    return out
