"""Timing one variant in a fresh process, and the statistics over repeated rounds.

The benchmark stage starts `python -m stages.lib.runtime.timing ...` once per variant per round,
so every measurement gets a cold process (no allocator or cache state carried over from
another variant) and ONNX Runtime variants never import torch. The process prints one
JSON line: batch-1 latency percentiles and batch-N throughput at each thread count,
peak RSS, and the runtime settings it used. Statistics over rounds are in lib/metrics.
These processes are CPU only; GPU rounds run lib/runtime/gpu (lib/runtime/gpu_rounds).

Call sets are time-boxed (at least `min_calls` calls and `seconds` of calls), so the
benchmark's wall time grows linearly with the number of variants, not with their speed.
"""

import argparse
import json
import resource
import sys
import time

import numpy as np

from stages.lib import errors, runtime


def time_calls(fn, x, seconds, min_calls, max_calls=100_000):
    """Seconds per call: calls until both `seconds` have passed and `min_calls` were made."""
    times = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return np.array(times)


def measure(runner, image_size, batch_size, seconds, min_calls, warmup, prefix=""):
    """Batch-1 latency p50/p90/p99 (ms) and batch-N throughput (img/s) of one loaded runner."""
    rng = np.random.default_rng(0)
    one = rng.random((1, 3, image_size, image_size), dtype=np.float32)
    many = rng.random((batch_size, 3, image_size, image_size), dtype=np.float32)
    for _ in range(warmup):
        runner(one)
    runner(many)  # first call at a new shape: ORT/oneDNN pick kernels, allocate
    t1 = time_calls(runner, one, seconds, min_calls) * 1000
    tn = time_calls(runner, many, seconds, 3)
    return {
        f"{prefix}latency_ms_p50": round(float(np.median(t1)), 4),
        f"{prefix}latency_ms_p90": round(float(np.percentile(t1, 90)), 4),
        f"{prefix}latency_ms_p99": round(float(np.percentile(t1, 99)), 4),
        f"{prefix}throughput_img_s": round(batch_size / float(np.median(tn)), 2),
        f"{prefix}calls": len(t1),
    }


def run_variant(
    model, runtime_name, threads, image_size, batch_size, seconds, min_calls, warmup, channels_last, options=None
):
    """Everything measured for one variant in this process: one block per thread count (the GPU path is
    lib/runtime/gpu, in processes of its own). `options`: the variant's runtime_options (variant.json)."""
    result = {"runtime": runtime_name}
    for n in threads:
        runner = runtime.load_runner(model, runtime_name, n, channels_last=channels_last, options=options)
        result.update(measure(runner, image_size, batch_size, seconds, min_calls, warmup, prefix=f"t{n}_"))
        if hasattr(runner, "param_count"):  # PyTorch runners hold the model; the benchmark counts ONNX files
            result["param_count"] = runner.param_count
        result["settings"] = runner.settings
        del runner
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    result["torch_imported"] = "torch" in sys.modules  # ONNX Runtime and OpenVINO variants must run without it
    result["onnxruntime_imported"] = "onnxruntime" in sys.modules  # OpenVINO variants run without ORT as well
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runtime", choices=runtime.RUNTIMES)
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, nargs="+", required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--min-calls", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--options", type=json.loads, default=None, help="runtime_options as JSON")
    a = parser.parse_args()
    result = run_variant(
        a.model,
        a.runtime,
        a.threads,
        a.image_size,
        a.batch_size,
        a.seconds,
        a.min_calls,
        a.warmup,
        a.channels_last,
        a.options,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    errors.run(main, "timing")
