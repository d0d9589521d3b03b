"""Per-layer INT8 sensitivity, and which layers a mixed-precision recipe keeps in float.

With ONNX Runtime's `qdq_loss_debug` tools, the FP32 graph and its QDQ version are run on the
same validation images with every intermediate tensor exposed. For each quantized node (Conv,
MatMul, Gemm ...), the quantization noise it sees is that of its inputs: the activation's
QuantizeLinear -> DequantizeLinear round trip (measured in the QDQ model on real images) and
its weight's (dequantized vs float). Both are signal-to-quantization-noise ratios in dB; the
node's noise is their sum in linear power, so its SQNR is

    sqnr_db = -10 log10(sum over inputs of 10^(-sqnr_i / 10)).

The lowest SQNR is the most sensitive node: `fp32_layers: k` keeps the k lowest in float.
"""

import math
import tempfile
from pathlib import Path

import numpy as np
import onnx

from stages.lib import quantization


def _sqnr(reference, noisy):
    """SQNR in dB over every value of the paired arrays (inf when identical)."""
    ref = np.concatenate([np.asarray(a, np.float64).ravel() for a in reference])
    err = ref - np.concatenate([np.asarray(a, np.float64).ravel() for a in noisy])
    noise = float(np.sum(err**2))
    return math.inf if noise == 0 else 10 * math.log10(max(float(np.sum(ref**2)), 1e-30) / noise)


def layer_sensitivity(float_path, qdq_path, x):
    """Per quantized node, the SQNR (dB) of the quantization noise at its inputs on images `x`, lowest first.

    `float_path` must be the exact graph that was quantized (after `quantization.preprocess`), so that
    tensor and node names match. Returns a list of {"node", "op", "sqnr_db"}.
    """
    from onnxruntime.quantization import qdq_loss_debug as dbg

    x = np.ascontiguousarray(x, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="sensitivity.") as tmp:
        aug_f, aug_q = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        dbg.modify_model_output_intermediate_tensors(str(float_path), str(aug_f))
        dbg.modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q))
        float_acts = dbg.collect_activations(str(aug_f), quantization.ImageReader(x))
        qdq_acts = dbg.collect_activations(str(aug_q), quantization.ImageReader(x))
    matching = dbg.create_activation_matching(qdq_acts, float_acts)
    act_sqnr = {t: _sqnr(m["pre_qdq"], m["post_qdq"]) for t, m in matching.items() if "post_qdq" in m}
    weights = dbg.create_weight_matching(str(float_path), str(qdq_path))
    w_sqnr = {t: _sqnr([m["float"]], [m["dequantized"]]) for t, m in weights.items()}

    ops = quantization.int8_nodes(qdq_path)
    graph = onnx.load(str(float_path), load_external_data=False).graph
    rows = []
    for node in graph.node:
        if node.name not in ops:
            continue
        parts = [act_sqnr[i] for i in node.input if i in act_sqnr] + [w_sqnr[i] for i in node.input if i in w_sqnr]
        noise = sum(10 ** (-s / 10) for s in parts if math.isfinite(s))
        sqnr = math.inf if noise == 0 else -10 * math.log10(noise)
        rows.append({"node": node.name, "op": node.op_type, "sqnr_db": round(sqnr, 2) if math.isfinite(sqnr) else None})
    return sorted(rows, key=lambda r: math.inf if r["sqnr_db"] is None else r["sqnr_db"])


def most_sensitive(rows, k):
    """Names of the k most sensitive nodes (lowest SQNR) to keep in float."""
    return [r["node"] for r in rows[:k]]
