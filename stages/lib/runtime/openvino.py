"""OpenVINO on the CPU: the pipeline's ONNX files (FP32 and QDQ INT8) as they are, without torch or ONNX Runtime.

An OpenVINO variant runs the very file of an ONNX Runtime variant (quantize kind `openvino`), so the two runtimes
are compared on the same weights. OpenVINO chooses its own inference precision: on a CPU with BF16 (AVX-512 BF16,
AMX) its default for FP32 models is BF16, which moves logits by far more than FP32 rounding. So every runner asks
for its precision explicitly (INFERENCE_PRECISION_HINT) and records what the compiled model reports it runs
(`settings.inference_precision`); an f32 request that compiles to anything else is an error, and a bf16 request on
a CPU without BF16 is refused with the reason, never silently run in f32.

Settings mirror ONNX Runtime's (lib/runtime ORT_CPU): `threads` inference threads, one stream (one request at a
time: what a batch-1 screening line does), the LATENCY performance hint; batch-N throughput is the same compiled
model called with a batch of N (no extra streams), as ORT's session is.
"""

import numpy as np

from stages.lib import errors

PRECISIONS = {"f32": "f32", "bf16": "bf16"}  # recipe value -> INFERENCE_PRECISION_HINT
OV_CPU = {"num_streams": 1, "performance_hint": "LATENCY", "execution_mode_hint": "PERFORMANCE"}
# What the compiled model reports for INFERENCE_PRECISION_HINT (an ov.Type; str() varies by version).
REPORTED = {"float32": "f32", "f32": "f32", "bfloat16": "bf16", "bf16": "bf16", "float16": "f16", "f16": "f16"}


class PrecisionUnavailable(errors.UserError):
    """A requested inference precision this CPU cannot run (e.g. bf16 without AVX-512 BF16 or AMX)."""


def capabilities():
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU, e.g. ['FP32', 'INT8', 'BIN', 'EXPORT_IMPORT'] (+ 'BF16')."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def unavailable_reason(precision, caps):
    """Why `precision` cannot run on a CPU with these capabilities, or None when it can."""
    if precision not in PRECISIONS:
        return f"precision={precision!r} is not one of {sorted(PRECISIONS)}"
    if precision == "bf16" and "BF16" not in caps:
        return (
            f"this CPU has no BF16 (OpenVINO OPTIMIZATION_CAPABILITIES {caps}: needs AVX-512 BF16 or AMX); "
            "a bf16 variant here would run f32 under a bf16 name"
        )
    return None


def precision_name(reported):
    """The compiled model's INFERENCE_PRECISION_HINT (ov.Type or str) as f32 / bf16 / f16."""
    text = str(getattr(reported, "type_name", None) or reported).lower().removeprefix("<type: '").rstrip("'>")
    return REPORTED.get(text, text)


def compile_config(threads, precision):
    return {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": OV_CPU["num_streams"],
        "PERFORMANCE_HINT": OV_CPU["performance_hint"],
        "EXECUTION_MODE_HINT": OV_CPU["execution_mode_hint"],
        "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
    }


class OvRunner:
    """float32 NCHW images -> logits, one compiled OpenVINO model on the CPU (runtime.load_runner's interface)."""

    def __init__(self, path, threads, device="cpu", channels_last=False, precision="f32"):
        import openvino as ov

        from stages.lib import runtime

        if device != "cpu":
            raise errors.UserError(f"runtime openvino runs on the CPU here; device={device!r} is not supported")
        core = ov.Core()
        caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        reason = unavailable_reason(precision, caps)
        if reason:
            raise PrecisionUnavailable(f"OpenVINO precision {precision}: {reason}")
        runtime.check_file(path)
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", compile_config(threads, precision))
        except RuntimeError as e:  # OpenVINO's one exception type for a file it cannot read or compile (truncated)
            raise errors.damaged(path, errors.reason(e)) from e
        ran = precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if ran != precision:
            raise RuntimeError(f"OpenVINO compiled {path} for {ran} although {precision} was requested")
        self.request = self.compiled.create_infer_request()
        get = self.compiled.get_property
        self.settings = {
            "threads": threads,
            "inference_num_threads": int(get("INFERENCE_NUM_THREADS")),
            "num_streams": int(get("NUM_STREAMS")),
            "performance_hint": str(get("PERFORMANCE_HINT")),
            "execution_mode_hint": str(get("EXECUTION_MODE_HINT")).rsplit(".", 1)[-1],
            "requested_precision": precision,
            "inference_precision": ran,  # what the compiled model reports it computes in
            "execution_devices": list(get("EXECUTION_DEVICES")),
            "cpu_pinning": bool(get("ENABLE_CPU_PINNING")),
            "cpu_capabilities": caps,
            "openvino": ov.__version__.split("-")[0],
        }

    def __call__(self, x):
        # The output tensor is reused by the next call: copy it out.
        return np.array(self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[0], copy=True)


# How closely OpenVINO's class probabilities must match ONNX Runtime's on the same file (quantize records it; a test
# holds both runtimes to it). FP32: both compute in f32, only the order of sums differs (measured <= 2.5e-5 on this
# run's files). INT8 QDQ: the runtimes fuse and requantize differently (ORT's u8s8 kernels use 7-bit weights on CPUs
# without VNNI; OpenVINO keeps some quantized ops' outputs in f32), so single images move by a few output quantization
# steps (measured on this run's four INT8 static files, val and test: max 0.103, mean <= 0.0105, argmax agreement
# >= 98.7 %); what must agree is the bulk of the scores.
TOLERANCE = {
    "float": {"max_abs_score_diff": 1e-4, "mean_abs_score_diff": 1e-5, "argmax_agreement": 0.995},
    "int8": {"max_abs_score_diff": 0.2, "mean_abs_score_diff": 0.02, "argmax_agreement": 0.97},
}
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def agreement(p_ort, p_ov, path):
    """OpenVINO's class probabilities against ONNX Runtime's on the same images and file, and whether they are
    within TOLERANCE (INT8 when the graph holds quantized ops)."""
    from stages.lib import runtime

    graph = runtime.read_onnx(path).graph
    kind = "int8" if any(n.op_type in QUANTIZED_OPS for n in graph.node) else "float"
    diff = np.abs(p_ort - p_ov)
    seen = {
        "max_abs_score_diff": float(diff.max()),
        "mean_abs_score_diff": float(diff.mean()),
        "argmax_agreement": float(np.mean(p_ort.argmax(1) == p_ov.argmax(1))),
    }
    tol = TOLERANCE[kind]
    ok = all(seen[k] <= tol[k] for k in ("max_abs_score_diff", "mean_abs_score_diff"))
    ok = ok and seen["argmax_agreement"] >= tol["argmax_agreement"]
    return {f"val_{k}_vs_ort": round(v, 6) for k, v in seen.items()} | {
        "ort_agreement_tolerance": {"graph": kind, **tol},
        "ort_agreement_ok": bool(ok),
    }
