"""Run any variant the same way: float32 NCHW images in [0, 1] -> logits, on CPU or GPU (eager; the
benchmark's GPU path, with CUDA graphs and torch.compile, is lib/runtime/gpu).

torch is imported only for PyTorch variants, so a process that runs an ONNX Runtime
variant holds ORT's memory alone, as it would in deployment; an OpenVINO variant (lib/runtime/openvino)
imports neither torch nor ONNX Runtime. Neither parses the file with the `onnx` package (it would add ~0.7 s
and a second copy of the weights to the process): the benchmark counts an ONNX file's weights itself
(`onnx_param_count`). Each runner records the runtime settings it used (`settings`), so a benchmark result
says how it was measured.
"""

from pathlib import Path

import numpy as np

from stages.lib import errors
from stages.lib.outputs import read_json

# torch_pt2e: a torchao PT2E INT8 program, Inductor-compiled; openvino: an ORT variant's ONNX file in OpenVINO
RUNTIMES = ("torch", "onnxruntime", "torch_pt2e", "openvino")

# ONNX Runtime CPU settings for every session (evaluate and benchmark alike). Intra-op threads
# spin-wait between operators (ORT's default): lower, steadier batch-1 latency at the price of
# CPU time burnt while waiting. One inter-op thread: operators run in sequence.
ORT_CPU = {
    "inter_op_num_threads": 1,
    "execution_mode": "sequential",
    "graph_optimization": "all",
    "intra_op_allow_spinning": True,
}


class TorchRunner:
    def __init__(self, path, threads, device="cpu", channels_last=False):
        import torch

        from stages.lib import models

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)  # only settable once per process, before parallel work
        except RuntimeError:
            pass
        self.torch, self.device, self.dtype = torch, device, torch.float32
        self.model, self.card = models.load(path)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(device, memory_format=self.memory_format)
        self.param_count = models.param_count(self.model)
        self.settings = {
            "threads": threads,
            "interop_threads": torch.get_num_interop_threads(),
            "channels_last": channels_last,
            "mode": "eager, inference_mode",
            "device": device,
            "torch": torch.__version__,
        }

    def __call__(self, x):
        with self.torch.inference_mode():
            xt = self.torch.from_numpy(x).to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
            out = self.model(xt)
            if self.device != "cpu":
                self.torch.cuda.synchronize()
            return out.float().cpu().numpy()


class OrtRunner:
    """`spinning`: intra-op threads spin-wait between operators (ORT_CPU). `screen` turns it off while its decoding
    threads share the cores: spinning threads would take the CPU time the decoders need."""

    def __init__(self, path, threads, device="cpu", channels_last=False, spinning=ORT_CPU["intra_op_allow_spinning"]):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = ORT_CPU["inter_op_num_threads"]
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        check_file(path)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except ort_load_errors() as e:  # a truncated or damaged file
            raise errors.damaged(path, errors.reason(e)) from e
        self.input = self.session.get_inputs()[0].name
        self.settings = {
            "threads": threads,
            **ORT_CPU,
            "intra_op_allow_spinning": spinning,
            "providers": self.session.get_providers(),
            "onnxruntime": ort.__version__,
        }

    def __call__(self, x):
        return self.session.run(None, {self.input: x})[0]


def onnx_param_count(path):
    """Weights in an ONNX file, counted from its initializers: quantization scales and zero points are
    bookkeeping, not parameters."""
    graph = read_onnx(path).graph
    return sum(int(np.prod(t.dims)) for t in graph.initializer if not t.name.endswith(("_scale", "_zero_point")))


def check_file(path):
    """A missing model file: the one line that names the stage making it (the runtimes' own messages do not)."""
    if not Path(path).is_file():
        raise errors.damaged(path, "not found")


def read_onnx(path):
    """The ONNX model, parsed; a missing or truncated file is an InputError naming the file and the stage
    that makes it. Not onnx.checker: it refuses graphs ONNX Runtime runs (the FP16 converter's are not
    topologically sorted); what ORT cannot load is caught where the session is made."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError) as e:
        raise errors.damaged(path, errors.reason(e)) from e


def ort_load_errors():
    """ONNX Runtime's exception types for a file it cannot load (they derive from Exception alone)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return state.Fail, state.InvalidArgument, state.InvalidGraph, state.InvalidProtobuf, state.NoSuchFile


def read_variant(variant_dir):
    """(model file path, runtime name, variant.json) of a variant folder written by the quantize stage."""
    folder = Path(variant_dir)
    info = read_json(folder / "variant.json")
    if info["runtime"] not in RUNTIMES:
        raise ValueError(f"{folder}/variant.json: runtime={info['runtime']!r}; expected one of {list(RUNTIMES)}")
    return folder / info["file"], info["runtime"], info


def load_runner(path, runtime, threads, device="cpu", channels_last=False, options=None):
    """The runner for `runtime`; `options`: keyword arguments of its runner: the variant's runtime_options
    (variant.json, e.g. OpenVINO's precision), or ONNX Runtime's `spinning`."""
    if runtime == "openvino":
        from stages.lib.runtime import openvino

        return openvino.OvRunner(path, threads, device, channels_last, **(options or {}))
    if runtime == "torch_pt2e":
        from stages.lib.quantization import pt2e

        return pt2e.Pt2eRunner(path, threads, device, channels_last)
    cls = {"torch": TorchRunner, "onnxruntime": OrtRunner}[runtime]
    return cls(path, threads, device, channels_last, **(options or {}))


def softmax(logits):
    """Class probabilities, computed stably in float64."""
    z = logits.astype(np.float64)
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def predict(runner, x_float, batch_size=64):
    """Class probabilities (N, num_classes) for float images in [0, 1]."""
    return np.concatenate([softmax(runner(x_float[i : i + batch_size])) for i in range(0, len(x_float), batch_size)])
