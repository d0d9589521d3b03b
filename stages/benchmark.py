"""benchmark: latency, throughput, size and peak memory of one variant in its own runtime.

    python -m stages.benchmark student_kd_int8 onnxruntime artifacts/quantize/student_kd/int8.onnx \
        metrics/benchmark/student_kd_int8.json

Warm up, then time (as timm's benchmark does). CPU always; GPU too when the runtime sees one.
Peak memory is this process's peak RSS; torch is not imported for ONNX Runtime variants.
"""

import argparse
import logging
import platform
import resource
import time
from pathlib import Path

import numpy as np

from stages.lib import params, runtime
from stages.lib.outputs import write_json

log = logging.getLogger("benchmark")


def check(p):
    params.check_base(p["base"])
    b = p["benchmark"]
    params.check_int("benchmark.warmup", b["warmup"], 1)
    params.check_int("benchmark.iters", b["iters"], 5)
    params.check_int("benchmark.batch_size", b["batch_size"], 1)
    params.check_range("benchmark.core_hour_usd", b["core_hour_usd"], 0, 100)
    return b


def time_calls(fn, x, warmup, iters):
    """Seconds per call, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return np.array(times)


def measure(runner, size, b, prefix):
    rng = np.random.default_rng(0)
    one = rng.random((1, 3, size, size), dtype=np.float32)
    many = rng.random((b["batch_size"], 3, size, size), dtype=np.float32)
    t1 = time_calls(runner, one, b["warmup"], b["iters"]) * 1000
    tn = time_calls(runner, many, max(1, b["warmup"] // 5), max(3, b["iters"] // 10))
    return {
        f"{prefix}latency_ms_p50": round(float(np.median(t1)), 3),
        f"{prefix}latency_ms_p90": round(float(np.percentile(t1, 90)), 3),
        f"{prefix}throughput_img_s": round(b["batch_size"] / float(np.median(tn)), 1),
    }


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant")
    parser.add_argument("runtime", choices=runtime.RUNTIMES)
    parser.add_argument("model", help="model.pt (torch) or .onnx (onnxruntime)")
    parser.add_argument("metrics")
    args = parser.parse_args()
    p = params.load()
    b = check(p)
    threads, size = p["base"]["threads"], p["base"]["image_size"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    runner = runtime.load_runner(args.model, args.runtime, threads)
    result = measure(runner, size, b, prefix="")
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    # Cost proxy: CPU core-hours to screen one million images at the measured batch throughput.
    core_hours = 1e6 / result["throughput_img_s"] / 3600 * threads
    result.update(
        {
            "size_mb": round(Path(args.model).stat().st_size / 2**20, 3),
            "param_count": runner.param_count,
            "cost_usd_per_1m_images": round(core_hours * b["core_hour_usd"], 4),
            "threads": threads,
            "image_size": size,
            "cpu": cpu_name(),
            "runtime": args.runtime,
        }
    )
    if runtime.gpu_available(args.runtime):
        result.update(measure(runtime.load_runner(args.model, args.runtime, threads, "cuda"), size, b, "gpu_"))
    write_json(args.metrics, result)
    log.info("%s: %s", args.variant, {k: v for k, v in result.items() if "latency" in k or "throughput" in k})


if __name__ == "__main__":
    main()
