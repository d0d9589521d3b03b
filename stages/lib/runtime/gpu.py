"""One variant on the GPU, the way a GPU runs it fast; one fresh process per variant per GPU round.

    python -m stages.lib.runtime.gpu torch artifacts/variants/student_kd_torch_fp32/model.pt --image-size 128 \
        --batches 1 32 256 1024 --dtypes float32 float16 bfloat16 --seconds 0.5 --min-calls 20 --warmup 10 --compile

PyTorch variants in inference_mode, channels_last, per dtype: batch-1 latency host to host (a pinned host image
copied in, a captured CUDA graph replayed, the logits copied back to pinned memory, synchronized: the copies are
timed). Then FP16 img/s over the batch sweep, input on the device, one CUDA graph per batch size; with `--compile`
also through torch.compile, each batch's compile seconds apart from its run. Peak GPU memory per block. ONNX
variants run on ORT's CUDA provider when onnxruntime-gpu is installed. One JSON line out, as timing prints.
`--device cpu` runs the same code with graph capture and compile skipped, each with its reason: what the tests
exercise without a GPU (the numbers are then CPU eager numbers, labelled so).
"""

import argparse
import copy
import json
import subprocess
import time

import numpy as np

from stages.lib import errors, runtime
from stages.lib.runtime import timing

DTYPES = ("float32", "float16", "bfloat16")
SWEEP_DTYPE = "float16"  # tensor-core math; BF16 runs at the same rate on Ampere and newer
COMPILE = {"mode": "default", "dynamic": False}  # one static graph per batch size; CUDA graphs are ours
WARM_S = 0.3  # untimed calls for at least this long first: clocks ramp up, allocators settle
NO_CUDA = "no CUDA device: CUDA graphs and torch.compile are measured on a GPU only"


def device_info():
    """What the GPU numbers depend on: name, compute capability, memory, driver, CUDA, cuDNN, torch."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": NO_CUDA}
    p = torch.cuda.get_device_properties(0)
    return {
        "name": p.name,
        "capability": f"{p.major}.{p.minor}",
        "memory_gib": round(p.total_memory / 2**30, 1),
        "driver": driver_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
    }


def driver_version():
    """The NVIDIA driver's version from nvidia-smi; None where it cannot say."""
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split("\n")[0].strip() or None


def percentiles(t_ms):
    return {f"latency_ms_p{q}": round(float(np.percentile(t_ms, q)), 4) for q in (50, 90, 99)}


def by_block(peak):
    """A block's peak memory as a list: one value (a dtype's batch 1) or one per batch size (a sweep)."""
    return list(peak.values()) if isinstance(peak, dict) else [peak]


class Device:
    """The device and its clock: synchronize, peak memory and graph capture where it is CUDA."""

    def __init__(self, torch, name):
        self.torch, self.name, self.cuda = torch, name, name != "cpu"
        torch.backends.cudnn.benchmark = self.cuda  # static shapes: cuDNN times its algorithms once, in warm-up

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def synced(self, run):
        """call(_) -> runs `run()` and waits for the device: one timed call."""
        return lambda _: (run(), self.sync())

    def peak_mb(self):
        return round(self.torch.cuda.max_memory_allocated() / 2**20, 1) if self.cuda else None


def capture(torch, fn, static_in):
    """A CUDA graph of `fn(static_in)` and its static output. Warm-up runs on a side stream first (cuDNN
    and cuBLAS pick kernels and allocate there, as capture requires); `replay()` reruns the graph on
    whatever `static_in` holds then."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_in)
    return graph, static_out


def forward(torch, model, dtype):
    """float32 NCHW images in [0, 1] -> float32 logits; the cast and the NHWC layout change run on the device."""
    return lambda x: model(x.to(dtype).contiguous(memory_format=torch.channels_last)).float()


def program(torch, fn, batch, image_size, dev):
    """`run()` -> logits of whatever the static input holds: a CUDA graph replay on CUDA, eager on CPU."""
    static_in = torch.zeros(batch, 3, image_size, image_size, device=dev.name)
    if not dev.cuda:
        return static_in, lambda: fn(static_in)
    graph, static_out = capture(torch, fn, static_in)
    return static_in, lambda: (graph.replay(), static_out)[1]


def host_to_host(torch, fn, image_size, dev):
    """call(host image) -> host logits: copy in, run, copy out, synchronize, as a client sees it."""
    static_in, run = program(torch, fn, 1, image_size, dev)
    out = run()
    host_out = torch.empty(out.shape, dtype=out.dtype, pin_memory=dev.cuda)

    def call(x):
        static_in.copy_(x, non_blocking=dev.cuda)  # x is pinned: an asynchronous DMA copy
        host_out.copy_(run(), non_blocking=dev.cuda)
        dev.sync()
        return host_out

    return call


def latency(torch, model, dtype, image_size, dev, seconds, min_calls, warmup, reference):
    """Batch-1 host-to-host latency (ms) of `model` cast to `dtype`, its peak memory and logit error."""
    dev.reset_peak()
    m = copy.deepcopy(model).to(dev.name, getattr(torch, dtype), memory_format=torch.channels_last)
    call = host_to_host(torch, forward(torch, m, getattr(torch, dtype)), image_size, dev)
    x = reference["image"].pin_memory() if dev.cuda else reference["image"]
    diff = float((call(x) - reference["logits"]).abs().max())
    timing.time_calls(call, x, WARM_S, warmup)
    t = timing.time_calls(call, x, seconds, min_calls) * 1000
    out = {
        **percentiles(t),
        "calls": len(t),
        "peak_gpu_mem_mb": dev.peak_mb(),
        "logit_max_abs_diff": round(diff, 5),  # vs FP32 eager on the CPU, same image
    }
    del call, m
    return out


def compiled_program(torch, fn, batch, image_size, dev):
    """(run, compile seconds): torch.compile of `fn` for one batch size, the first call's time as its compile."""
    torch._dynamo.reset()  # each batch size compiles on its own: its compile seconds are its own
    compiled = torch.compile(fn, **COMPILE)
    x = torch.rand(batch, 3, image_size, image_size, device=dev.name)
    t0 = time.perf_counter()
    compiled(x)
    dev.sync()
    return (lambda: compiled(x)), round(time.perf_counter() - t0, 2)


def sweep(torch, model, batches, image_size, dev, seconds, compiled=False):
    """img/s per batch size, input already on the device (FP16, channels_last): a CUDA graph replay per
    batch (eager on CPU), or torch.compile with the compile seconds recorded apart from the run."""
    dtype = getattr(torch, SWEEP_DTYPE)
    fn = forward(torch, copy.deepcopy(model).to(dev.name, dtype, memory_format=torch.channels_last), dtype)
    out = {"throughput_img_s": {}, "peak_gpu_mem_mb": {}} | ({"compile_s": {}} if compiled else {})
    for n in batches:
        dev.reset_peak()
        if compiled:
            run, out["compile_s"][str(n)] = compiled_program(torch, fn, n, image_size, dev)
        else:
            x, run = program(torch, fn, n, image_size, dev)
            x.copy_(torch.rand(n, 3, image_size, image_size))
        call = dev.synced(run)
        timing.time_calls(call, None, WARM_S, 3)
        t = timing.time_calls(call, None, seconds, 3)
        out["throughput_img_s"][str(n)] = round(n / float(np.median(t)), 1)
        out["peak_gpu_mem_mb"][str(n)] = dev.peak_mb()
        del run, call  # this batch's graph or compiled program goes before the next one's peak is read
    return out


def guarded(step, *args, **kw):
    """A measurement that may fail on this GPU/driver (capture, compile): its result, or the reason it failed."""
    try:
        return step(*args, **kw)
    except Exception as e:  # one failed step must not lose the rest of a lent GPU's run
        return {"skipped": f"failed: {errors.reason(e)}"}


def measure_torch(path, image_size, batches, dtypes, seconds, min_calls, warmup, compiled, device):
    """Everything the GPU path measures for one PyTorch variant (see the module docstring)."""
    import torch

    from stages.lib import models

    dev = Device(torch, device)
    model, _ = models.load(path)
    image = torch.from_numpy(np.random.default_rng(0).random((1, 3, image_size, image_size), dtype=np.float32))
    with torch.inference_mode():
        reference = {"image": image, "logits": model(image).float()}
        result = {
            "runtime": "torch",
            "device": device_info() if dev.cuda else {"name": "cpu"},
            "b1_mode": "host to host, CUDA graph replay" if dev.cuda else "host to host, eager (no CUDA graph)",
            "dtypes": {
                d: guarded(latency, torch, model, d, image_size, dev, seconds, min_calls, warmup, reference)
                for d in dtypes
            },
            "sweep": {
                "mode": "cuda_graph" if dev.cuda else "eager",
                "dtype": SWEEP_DTYPE,
                **guarded(sweep, torch, model, batches, image_size, dev, seconds),
            },
        }
        if not compiled:
            result["compiled"] = {"skipped": "not in benchmark.gpu_compile"}
        elif not dev.cuda:
            result["compiled"] = {"skipped": NO_CUDA}
        else:
            result["compiled"] = {
                **COMPILE,
                "dtype": SWEEP_DTYPE,
                **guarded(sweep, torch, model, batches, image_size, dev, seconds, compiled=True),
            }
    blocks = [*result["dtypes"].values(), result["sweep"], result["compiled"]]
    peaks = [v for b in blocks for v in by_block(b.get("peak_gpu_mem_mb")) if v is not None]
    result["peak_gpu_mem_mb"] = max(peaks, default=None)  # every allocation falls in a block after its reset
    result["settings"] = {"channels_last": True, "cudnn_benchmark": dev.cuda, "torch": torch.__version__}
    return result


def measure_onnx(path, image_size, batches, seconds, min_calls, warmup, device):
    """An ONNX variant on ORT's CUDA provider (host to host, numpy in and out), or why it was not run."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" not in providers:
        return {"skipped": f"onnxruntime-gpu not installed (providers: {', '.join(providers)})"}
    runner = runtime.OrtRunner(path, 1, device=device)
    rng = np.random.default_rng(0)
    one = rng.random((1, 3, image_size, image_size), dtype=np.float32)
    timing.time_calls(runner, one, WARM_S, warmup)
    t = timing.time_calls(runner, one, seconds, min_calls) * 1000
    throughput = {}
    for n in batches:
        x = rng.random((n, 3, image_size, image_size), dtype=np.float32)
        timing.time_calls(runner, x, WARM_S, 3)
        throughput[str(n)] = round(n / float(np.median(timing.time_calls(runner, x, seconds, 3))), 1)
    return {
        "runtime": "onnxruntime",
        "b1_mode": "host to host, ONNX Runtime session.run",
        "dtypes": {"float32": {**percentiles(t), "calls": len(t)}},
        "sweep": {"mode": "session.run, host to host", "dtype": "float32", "throughput_img_s": throughput},
        "compiled": {"skipped": "ONNX Runtime variant"},
        "settings": runner.settings,
    }


def probe():
    """What a GPU round can run here: the CUDA device (or why none) and ONNX Runtime's providers."""
    import onnxruntime as ort

    return {"device": device_info(), "ort_providers": ort.get_available_providers()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runtime", choices=(*runtime.RUNTIMES, "probe"))
    parser.add_argument("model", nargs="?")
    for flag, kind in (("--image-size", int), ("--seconds", float), ("--min-calls", int), ("--warmup", int)):
        parser.add_argument(flag, type=kind)
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES)
    parser.add_argument("--compile", action="store_true", help="also the torch.compile sweep (GPU only)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    a = parser.parse_args()
    if a.runtime == "probe":
        print(json.dumps(probe()))
        return
    timed = (a.seconds, a.min_calls, a.warmup)
    if a.runtime == "torch":
        result = measure_torch(a.model, a.image_size, a.batches, a.dtypes, *timed, a.compile, a.device)
    elif a.runtime == "onnxruntime":
        result = measure_onnx(a.model, a.image_size, a.batches, *timed, a.device)
    else:
        result = {"skipped": f"runtime {a.runtime}: a CPU-only program (X86 Inductor INT8)"}
    print(json.dumps(result))


if __name__ == "__main__":
    errors.run(main, "gpu")
