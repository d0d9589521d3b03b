"""Per-layer INT8 sensitivity, and which layers a mixed-precision recipe keeps in float.

Two measures, both on validation images:

`layer_sensitivity` (every static recipe reports its five lowest as sensitive_1..5; cheap): for each node
that computes in INT8 (Conv, MatMul, Gemm ...), the quantization noise it sees at its inputs: each
activation's QuantizeLinear -> DequantizeLinear round trip, applied to the activations the *FP32* graph
produces (ONNX Runtime's `qdq_loss_debug` exposes every intermediate tensor), and its weight's
(dequantized vs float). Each is a signal-to-quantization-noise ratio (SQNR, dB, against the value clipped
to the representable range, as the calibrated range clips it); the node's noise is their sum in linear
power, so its SQNR is

    sqnr_db = -10 log10(sum over inputs of 10^(-sqnr_i / 10)).

`output_sensitivity` (what `fp32_layers: k` keeps in float): the SQNR of the *logits* when that one layer
(with the activation fused into it) runs in INT8 and every other layer in float, with the recipe's own
settings and calibrated ranges: the layer's noise as the rest of the network carries it to the output.
The two disagree where the network amplifies noise. Measured (reports/int8_pruned has the numbers): on the
distilled and the pruned Lite0 students the input-noise ranking picks late convs whose own INT8 costs the
logits almost nothing, while the stem conv and its depthwise conv, not near the top by their inputs, are the
layers whose INT8 alone costs the logits most; keeping those two in float repaired the one pruned student
whose INT8 model had broken. It costs one re-quantization (from the calibration cache) and one
pass over the images per layer, so it runs only when a recipe keeps layers in float.

`keep_until_fit` (recipe kind `ort_auto`) picks how many by the accuracy they cost: it keeps in float the next
layer by the output ranking until the paired validation deltas against the FP32 model fit `quantize.max_drop_pt`
(the rule "PTQ hurt" applies to every variant: a point delta, so that the two agree), or a cap is reached.

Only layers with weights (Conv, MatMul, Gemm) are ranked: excluding one keeps its weights and arithmetic
float. A weightless op (a residual Add) between quantized layers would still be fused into an INT8
kernel by ONNX Runtime (its inputs and output are quantized for its neighbours), so it cannot fall back.
"""

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from stages.lib import quantization

log = logging.getLogger(__name__)


def sqnr_db(reference, noisy):
    """SQNR in dB over every value of the paired arrays (inf when identical)."""
    ref = np.concatenate([np.asarray(a, np.float64).ravel() for a in reference])
    err = ref - np.concatenate([np.asarray(a, np.float64).ravel() for a in noisy])
    noise = float(np.sum(err**2))
    return math.inf if noise == 0 else 10 * math.log10(max(float(np.sum(ref**2)), 1e-30) / noise)


def _activation_qparams(graph):
    """{(node name, input index): (float tensor name, scale, zero point)} for activations a node reads dequantized."""
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in inits:
                zp = inits[q.input[2]] if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
                out[(node.name, i)] = (q.input[0], inits[q.input[1]], zp)
    return out


def fake_quant_sqnr(x, scale, zero_point):
    """SQNR (dB) of quantize -> dequantize on float values `x`, against `x` clipped to the representable range."""
    info = np.iinfo(zero_point.dtype)
    zp, scale = zero_point.astype(np.float64), np.asarray(scale, np.float64)
    x = np.asarray(x, np.float64)
    q = np.clip(np.round(x / scale) + zp, info.min, info.max)
    ref = np.clip(x, (info.min - zp) * scale, (info.max - zp) * scale)
    return sqnr_db([ref], [(q - zp) * scale])


def layer_sensitivity(float_path, qdq_path, x):
    """Per INT8 node, the SQNR (dB) of the quantization noise at its inputs on images `x`, lowest first.

    `float_path` must be the exact graph that was quantized (after `quantization.preprocess`), so that
    tensor and node names match. Returns a list of {"node", "op", "sqnr_db"}.
    """
    from onnxruntime.quantization import qdq_loss_debug as dbg

    x = np.ascontiguousarray(x, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="sensitivity.") as tmp:
        augmented = Path(tmp) / "float.onnx"
        dbg.modify_model_output_intermediate_tensors(str(float_path), str(augmented))
        acts = dbg.collect_activations(str(augmented), quantization.ImageReader(x))
    acts = {k: np.concatenate([np.ravel(a) for a in v]) for k, v in acts.items()}
    acts["image"] = x.ravel()
    weights = dbg.create_weight_matching(str(float_path), str(qdq_path))
    w_sqnr = {t: sqnr_db([m["float"]], [m["dequantized"]]) for t, m in weights.items()}

    qdq = onnx.load(str(qdq_path), load_external_data=False).graph
    qparams, int8 = _activation_qparams(qdq), quantization.int8_nodes_of(qdq)
    rows = []
    for node in qdq.node:
        weights = _weight_names(node, qdq)
        if node.name not in int8 or not weights:
            continue
        parts = [
            fake_quant_sqnr(acts[t], s, zp) for (n, _), (t, s, zp) in qparams.items() if n == node.name and t in acts
        ]
        parts += [w_sqnr[w] for w in weights if w in w_sqnr]
        noise = sum(10 ** (-s / 10) for s in parts if math.isfinite(s))
        sqnr = math.inf if noise == 0 else -10 * math.log10(noise)
        rows.append({"node": node.name, "op": node.op_type, "sqnr_db": round(sqnr, 2) if math.isfinite(sqnr) else None})
    return sorted(rows, key=lambda r: math.inf if r["sqnr_db"] is None else r["sqnr_db"])


def _weight_names(node, graph):
    """Float names of the weights a QDQ node reads (DequantizeLinear of '<name>_quantized' initializers)."""
    inits = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    names = []
    for i in node.input:
        dq = producer.get(i)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            names.append(dq.input[0].removesuffix("_quantized"))
    return names


def fused_activation(graph, name):
    """The Clip / Relu that is a Conv's only consumer: the quantizer folds it into the Conv's output range (the
    QDQ graph has no Clip; the Conv writes its tensor), so the two are quantized or kept in float together."""
    node = next(n for n in graph.node if n.name == name)
    after = [n for n in graph.node if node.output[0] in n.input]
    return (
        [after[0].name] if node.op_type == "Conv" and len(after) == 1 and after[0].op_type in ("Clip", "Relu") else []
    )


def output_sensitivity(float_path, nodes, x, threads, quantize_only):
    """Per node of `nodes`, the SQNR (dB) of the logits on images `x` when only that node (and its fused
    activation) is INT8, lowest first: [{"node", "fused", "sqnr_db"}].

    `float_path`: the preprocessed float graph the recipe quantized; `quantize_only(names, out_path)` writes it
    with only `names` quantized, with the recipe's settings and cached ranges.
    """
    from stages.lib import runtime

    def logits(path):
        return runtime.load_runner(path, "onnxruntime", threads)(np.ascontiguousarray(x, dtype=np.float32))

    graph = onnx.load(str(float_path), load_external_data=False).graph
    reference = logits(float_path)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sensitivity.") as tmp:
        for name in nodes:
            fused = fused_activation(graph, name)
            noisy = logits(quantize_only([name, *fused], Path(tmp) / "one.onnx"))
            sqnr = sqnr_db([reference], [noisy])
            rows.append({"node": name, "fused": fused, "sqnr_db": round(sqnr, 2) if math.isfinite(sqnr) else None})
    return sorted(rows, key=lambda r: math.inf if r["sqnr_db"] is None else r["sqnr_db"])


def most_sensitive(rows, k):
    """Names of the k most sensitive nodes (lowest SQNR) to keep in float, with their fused activations."""
    return [n for r in rows[:k] for n in (r["node"], *r.get("fused", []))]


def keep_until_fit(target, reference, x, judge, rank, requantize, cap, threads):
    """Accuracy-controlled mixed precision (recipe kind `ort_auto`), as NNCF's quantize_with_accuracy_control:
    start from the all-INT8 graph at `target`; while `judge` finds its validation drop too large, keep in float
    the next layer by `rank` (output_sensitivity's rows, worst first); stop at the first graph that fits, or after
    `cap` layers, then keep the smallest drop found (the fewest layers on a tie) and say it did not fit.

    `reference`: the float graph the deltas are paired with (the same model in ONNX Runtime FP32); `x`: the
    validation images; `judge(ref_logits, logits)` -> (deltas, hurt), deltas holding `val_worst_drop_pt`;
    `rank()` is called only when the all-INT8 graph does not fit (it costs a pass per layer);
    `requantize(keep, path)` writes the recipe with the node names `keep` in float. The pick is written to
    `target`: when nothing needs float, `target` is left as it was, byte for byte the plain static recipe.
    """
    from stages.lib import runtime

    def logits(path):
        run = runtime.load_runner(path, "onnxruntime", threads)
        return np.concatenate([run(np.ascontiguousarray(x[i : i + 64], np.float32)) for i in range(0, len(x), 64)])

    ref = logits(reference)
    steps, ranked = [], []
    with tempfile.TemporaryDirectory(prefix="auto.") as tmp:
        path = Path(tmp) / "0.onnx"
        path.write_bytes(Path(target).read_bytes())
        for k in range(cap + 1):
            if k == 1:
                ranked = rank()
            if k > len(ranked):  # every ranked layer is float already
                break
            if k:
                path = requantize(most_sensitive(ranked, k), Path(tmp) / f"{k}.onnx")
            deltas, hurt = judge(ref, logits(path))
            kept = ranked[k - 1]["node"] if k else None
            steps.append({"fp32_layers": k, "added": kept, **_step_deltas(deltas), "fits": not hurt, "path": path})
            what = f"{k} layers in float (last {kept})" if k else "all-INT8"
            verdict = "over quantize.max_drop_pt" if hurt else "fits"
            log.info("%s: worst paired val drop %s pt, %s", what, deltas["val_worst_drop_pt"], verdict)
            if not hurt:
                break
        best = next((s for s in steps if s["fits"]), None) or min(steps, key=lambda s: s["val_worst_drop_pt"])
        if best["fp32_layers"]:
            Path(target).write_bytes(best["path"].read_bytes())
    kept = most_sensitive(ranked, best["fp32_layers"])
    return {
        "auto_fit": best["fits"],
        "auto_fp32_layers": best["fp32_layers"],  # ranked layers in float (fp32_layers_kept adds their activations)
        "auto_max_fp32_layers": cap,
        "fp32_layers_kept": kept,
        "fp32_macs_pct": float_macs_pct(reference, kept),
        "auto_steps": [{k: v for k, v in s.items() if k != "path"} for s in steps],
        **{f"output_sensitive_{i + 1}": r for i, r in enumerate(ranked[:5])},
    }


def _step_deltas(deltas):
    """What a step of keep_until_fit records: the paired deltas (points), their intervals and the worst drop."""
    return {k: v for k, v in deltas.items() if "_delta_pt" in k or k == "val_worst_drop_pt"}


def float_macs_pct(float_path, names):
    """Share (%) of the graph's multiply-accumulates (Conv, MatMul, Gemm, per image) in the nodes `names`: what
    keeping them in float costs, as a proxy (the benchmark stage measures the variant's latency itself)."""
    graph = onnx.load(str(float_path), load_external_data=False).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.value_info, *graph.output]}
    weights = {t.name: list(t.dims) for t in graph.initializer}
    macs = {}
    for node in graph.node:
        w, out = weights.get(node.input[1]) if len(node.input) > 1 else None, shapes.get(node.output[0])
        if node.op_type in ("Conv", "MatMul", "Gemm") and w and out:
            per_output = math.prod(w[1:]) if node.op_type == "Conv" else w[0]  # Gemm/MatMul: (in, out) or transB
            if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
                per_output = w[1]
            macs[node.name] = math.prod(out[1:]) * per_output
    total = sum(macs.values())
    return round(100 * sum(macs.get(n, 0) for n in names) / total, 2) if total else None
