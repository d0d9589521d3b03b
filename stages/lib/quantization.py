"""Export to ONNX and post-training static INT8 quantization with ONNX Runtime.

Static QDQ quantization: weights INT8 (per output channel by default), activations
UINT8 with ranges calibrated on real training images. QDQ keeps the graph readable
and is what ORT's CPU kernels and most edge runtimes (TensorRT, OpenVINO) consume.
"""

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}  # fmt: skip
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


def export_onnx(model, path, image_size, opset=18):
    """FP32 ONNX with a dynamic batch axis; input 'image' (N,3,S,S) in [0,1], output 'logits'."""
    model.eval()
    example = (torch.rand(1, 3, image_size, image_size),)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), input_names=["image"], output_names=["logits"],
                          dynamic_shapes={"x": {0: batch}}, opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)  # fmt: skip
    strip_debug_info(path)
    return Path(path)


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
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    prepped = int8_path.with_name(int8_path.stem + "_prep.onnx")
    quant_pre_process(str(fp32_path), str(prepped))  # shape inference + graph fusions ORT recommends
    quantize_static(
        str(prepped),
        str(int8_path),
        ImageReader(np.ascontiguousarray(calib_x, dtype=np.float32)),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=ACTIVATION_TYPES[activation_type],
        weight_type=QuantType.QInt8,
        calibrate_method=CALIBRATION_METHODS[calibrate_method],
    )
    prepped.unlink()
    return int8_path
