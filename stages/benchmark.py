"""benchmark: every variant measured side by side in one run - latency, throughput, size, peak memory.

    python -m stages.benchmark metrics/fingerprint.json artifacts/variants metrics/benchmark.json \
        plots/benchmark/rounds.csv --models teacher student_kd --recipes ort_fp32 int8_static_pc

The variants are every <model>_<recipe> (DVC unpacks params `compare` into the two lists); each is
the folder artifacts/variants/<variant> with its model file and variant.json (runtime, file).

`benchmark.warmup_rounds` unrecorded rounds, then `benchmark.rounds` rounds; in each, every
variant runs once in its own fresh process (`stages.lib.runtime.timing`), in a seeded shuffled order,
after warm-up calls: batch-1 latency p50/p90/p99 and batch-N throughput at 1 thread and at
`base.threads`. Per variant this writes the median
over rounds, the coefficient of variation and a 95 % interval; the per-round rows go to a CSV
so the report can compute paired speed-ups (both variants measured in the same rounds).
The result names the machine fingerprint it was measured on; a new fingerprint re-measures all.

Where the fingerprint lists a GPU and torch sees CUDA, GPU rounds follow (lib/runtime/gpu_rounds): FP16/BF16
channels_last, batch-1 host-to-host latency through CUDA graphs, a throughput sweep, torch.compile, peak GPU
memory; a `gpu` dict per variant. `--gpu-only` skips the CPU rounds (a lent GPU machine without DVC, on copied
artifacts: docs/scaling.md#the-gpu-benchmark); without `--models`/`--recipes` the variants are params `compare`.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.lib import errors, metrics, params, runtime
from stages.lib.outputs import read_json, write_json
from stages.lib.runtime import gpu_rounds, timing

log = logging.getLogger("benchmark")


def check(p):
    params.check_base(p["base"])
    b = p["benchmark"]
    params.check_int("benchmark.rounds", b["rounds"], 2)  # a CoV and an interval need two
    params.check_int("benchmark.warmup_rounds", b["warmup_rounds"], 0)
    params.check_range("benchmark.seconds", b["seconds"], 0, 60, lo_inclusive=False)
    params.check_int("benchmark.min_calls", b["min_calls"], 1)
    params.check_int("benchmark.warmup", b["warmup"], 0)
    params.check_int("benchmark.batch_size", b["batch_size"], 1)
    params.check_range("benchmark.core_hour_usd", b["core_hour_usd"], 0, 100)
    return b


def parse_variants(extra, variants_dir):
    """`--models a b --recipes x y` (DVC's unpacking of params `compare`) -> {<model>_<recipe>: spec}."""
    lists = argparse.ArgumentParser(prog="benchmark variants", add_help=False)
    lists.add_argument("--models", nargs="+", required=True)
    lists.add_argument("--recipes", nargs="+", required=True)
    lists.add_argument("--openvino", nargs="+", default=[])  # kind openvino recipes (params compare.openvino)
    try:
        compare, rest = lists.parse_known_args(extra)
    except SystemExit:
        compare, rest = None, extra
    if compare is None or rest:
        raise params.ParamError(f"compare: expected '--models m1 m2 ... --recipes r1 r2 ...', got {extra}")
    variants = {}
    for model in compare.models:
        for recipe in compare.recipes + compare.openvino:
            name = f"{model}_{recipe}"
            path, runtime_name, info = runtime.read_variant(Path(variants_dir) / name)
            if not path.is_file():
                raise errors.damaged(path, f"variant {name!r} has no model file")
            variants[name] = {"model": str(path), "runtime": runtime_name, "options": info.get("runtime_options")}
    return variants


def worker(spec, threads, image_size, b, channels_last):
    """Measure one variant in a fresh Python process; returns its JSON result."""
    cmd = [
        sys.executable,
        "-m",
        timing.__name__,
        spec["runtime"],
        spec["model"],
        "--threads",
        *map(str, threads),
        "--image-size",
        str(image_size),
        "--batch-size",
        str(b["batch_size"]),
        "--seconds",
        str(b["seconds"]),
        "--min-calls",
        str(b["min_calls"]),
        "--warmup",
        str(b["warmup"]),
    ]
    if channels_last:
        cmd.append("--channels-last")
    if spec.get("options"):
        cmd += ["--options", json.dumps(spec["options"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == errors.EXIT_USER_ERROR:  # a damaged model file: the worker's one line says which
        raise errors.InputError(proc.stderr.strip().splitlines()[-1].removeprefix("timing: "))
    if proc.returncode != 0:
        raise RuntimeError(f"timing {spec['model']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_rounds(variants, threads, image_size, b, seed, channels_last):
    """Tidy rows: one per (round, variant, thread count), plus the last result of each variant.

    Rounds numbered 0 and below are warm-up rounds: run the same way, not recorded. They absorb
    what earlier stages leave behind (dirty pages being written back, model files and libraries
    not yet in the page cache), which otherwise lands on the first measured round.
    """
    os.sync()  # earlier stages' outputs go to disk now, not while we time
    rng = np.random.default_rng(seed)
    rows, last = [], {}
    names = list(variants)
    bar = tqdm(total=(b["warmup_rounds"] + b["rounds"]) * len(names), desc="benchmark", leave=False)
    for r in range(1 - b["warmup_rounds"], b["rounds"] + 1):
        for position, name in enumerate(rng.permutation(names)):
            res = worker(variants[name], threads, image_size, b, channels_last)
            bar.update()
            if r < 1:
                continue
            last[name] = res
            for n in threads:
                rows.append(
                    {
                        "round": r,
                        "position": position,
                        "variant": name,
                        "threads": n,
                        **{k.removeprefix(f"t{n}_"): res[k] for k in res if k.startswith(f"t{n}_")},
                        "peak_rss_mb": res["peak_rss_mb"],
                    }
                )
        log.info("round %d/%d done%s", r, b["rounds"], " (warm-up, not recorded)" if r < 1 else "")
    bar.close()
    return pd.DataFrame(rows), last


def summary(rows, last, variants, threads, b, fingerprint_id):
    """Per variant: medians over rounds, CoV and 95 % intervals, size, params, memory, cost proxy."""
    out = {}
    main_threads = threads[-1]
    for name, spec in variants.items():
        mine = rows[rows["variant"] == name]
        entry = {}
        for n, suffix in ((main_threads, ""), (1, "_1t")):
            if suffix and main_threads == 1:
                continue
            at = mine[mine["threads"] == n]
            p50 = metrics.summarise(at["latency_ms_p50"])
            thr = metrics.summarise(at["throughput_img_s"])
            entry |= {
                f"latency_ms_p50{suffix}": round(p50["median"], 4),
                f"latency_ms_p50{suffix}_cov_pct": round(p50["cov_pct"], 2),
                f"latency_ms_p50{suffix}_ci95": [round(x, 4) for x in p50["ci95"]],
                f"latency_ms_p90{suffix}": round(float(at["latency_ms_p90"].median()), 4),
                f"latency_ms_p99{suffix}": round(float(at["latency_ms_p99"].median()), 4),
                f"throughput_img_s{suffix}": round(thr["median"], 1),
                f"throughput_img_s{suffix}_cov_pct": round(thr["cov_pct"], 2),
            }
        core_hours = 1e6 / entry["throughput_img_s"] / 3600 * main_threads
        entry |= {
            "size_mb": round(Path(spec["model"]).stat().st_size / 2**20, 3),
            "param_count": param_count(spec, last[name]),
            "peak_rss_mb": round(float(mine["peak_rss_mb"].median()), 1),
            "cost_usd_per_1m_images": round(core_hours * b["core_hour_usd"], 4),
            "threads": main_threads,
            "runtime": spec["runtime"],
            "runtime_options": spec.get("options"),  # e.g. OpenVINO's precision: screen loads the bundle with it
            "model_file": spec["model"],  # select and deploy find the variant's file here
            "torch_imported": last[name]["torch_imported"],
            "onnxruntime_imported": last[name]["onnxruntime_imported"],
            "settings": last[name]["settings"],
            "fingerprint_id": fingerprint_id,
        }
        out[name] = entry
    return out


def param_count(spec, result):
    """The worker's count where its runner holds the model (PyTorch), else the ONNX file's weights, counted here:
    ONNX Runtime and OpenVINO workers run the file without parsing it, as a deployed process would."""
    return result["param_count"] if "param_count" in result else runtime.onnx_param_count(spec["model"])


def gpu_only_summary(variants, fingerprint_id):
    """`--gpu-only`: per variant what needs no CPU round (file, size, runtime); the GPU rounds add the rest."""
    return {
        name: {
            "size_mb": round(Path(spec["model"]).stat().st_size / 2**20, 3),
            "runtime": spec["runtime"],
            "model_file": spec["model"],
            "fingerprint_id": fingerprint_id,
        }
        for name, spec in variants.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fingerprint", help="machine fingerprint JSON (the fingerprint stage)")
    parser.add_argument("variants_dir", help="one folder per variant (the quantize stage's outputs)")
    parser.add_argument("metrics", help="per-variant summary JSON")
    parser.add_argument("rounds_csv", help="one row per round, variant and thread count")
    parser.add_argument("--gpu-only", action="store_true", help="GPU rounds only, no CPU rounds (a lent GPU machine)")
    args, extra = parser.parse_known_args()
    p = params.load("base", "benchmark", "compare")
    b = check(p)
    k = gpu_rounds.knobs(b)
    if not extra:  # outside DVC: the variants of params `compare`, as dvc.yaml passes them
        extra = ["--models", *p["compare"]["models"], "--recipes", *p["compare"]["recipes"]]
        extra += ["--openvino", *p["compare"]["openvino"]] if p["compare"].get("openvino") else []
    variants = parse_variants(extra, args.variants_dir)
    fingerprint = read_json(args.fingerprint)
    base = p["base"]
    threads = sorted({1, base["threads"]})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    if args.gpu_only:
        rows, result = pd.DataFrame(), gpu_only_summary(variants, fingerprint["id"])
    else:
        log.info(
            "%d variants x %d rounds on %s (%s), threads %s",
            len(variants),
            b["rounds"],
            fingerprint["cpu"],
            fingerprint["id"],
            threads,
        )
        rows, last = run_rounds(variants, threads, base["image_size"], b, base["seed"], base["channels_last"])
        result = summary(rows, last, variants, threads, b, fingerprint["id"])
    gpu_rows, gpu, gpu_run = gpu_rounds.phase(
        variants, base["image_size"], base["seed"], b, k, fingerprint, args.gpu_only, log
    )
    for name, entry in gpu.items():
        result[name]["gpu"] = entry
    Path(args.rounds_csv).parent.mkdir(parents=True, exist_ok=True)
    (rows if gpu_rows is None else pd.concat([rows, gpu_rows], ignore_index=True)).to_csv(args.rounds_csv, index=False)
    write_json(
        args.metrics,
        {
            "variants": result,
            "fingerprint": fingerprint,
            "rounds": 0 if args.gpu_only else b["rounds"],  # CPU rounds
            "threads": threads,
            "image_size": base["image_size"],
            "batch_size": b["batch_size"],
        }
        | ({"gpu": gpu_run} if gpu_run else {}),  # only where a GPU ran: a CPU machine's file is as it was
    )
    for name, e in result.items():
        if not args.gpu_only:
            log.info(
                "%-26s p50 %8.3f ms (CoV %4.1f %%)  %8.1f img/s  %7.2f MB",
                name,
                e["latency_ms_p50"],
                e["latency_ms_p50_cov_pct"],
                e["throughput_img_s"],
                e["size_mb"],
            )
        if "gpu" in e:
            log.info("%-26s GPU %s", name, gpu_rounds.headline(e["gpu"]))


if __name__ == "__main__":
    errors.run(main, "benchmark")
