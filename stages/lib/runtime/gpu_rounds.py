"""The benchmark's GPU rounds: each variant on the CUDA device in a fresh process (lib/runtime/gpu), rounds in a
seeded shuffled order, and what they add to the results: a `gpu` dict per variant in benchmark.json and rows
with threads = `gpu_<dtype>` in rounds.csv (so paired speed-ups work on them as on the CPU rows).

The benchmark runs them after its CPU rounds, only where a probe process sees a CUDA device; the CPU rounds and
their numbers are the same with or without a GPU. torch.compile runs in round 1 only, for the variants named in
`benchmark.gpu_compile` (a cold compile costs ~15-20 s per batch size on an H100), so the compiled sweep has
one measurement, not a median over rounds.
"""

import json
import subprocess
import sys

import numpy as np
import pandas as pd

from stages.lib import errors, metrics, params
from stages.lib.runtime import gpu

# What the GPU rounds do while params.yaml has no benchmark.gpu_* keys (the keys, when present, win).
DEFAULTS = {
    "gpu_rounds": 3,  # fresh processes per variant: a median, a CoV and an interval, ~13 s each on an H200
    "gpu_batches": [1, 32, 256, 1024],  # throughput sweep: one image to what fills an H100 at 128 px
    "gpu_dtypes": ["float32", "float16", "bfloat16"],  # batch-1 latency per dtype; float16 is the headline
    "gpu_compile": ["student_kd_torch_fp32"],  # torch.compile sweep (round 1): the distilled Lite0 the targets name
}
HEADLINE = gpu.SWEEP_DTYPE


def knobs(b):
    """The GPU knobs of params `benchmark` (DEFAULTS for those it lacks), checked."""
    k = {key: b.get(key, default) for key, default in DEFAULTS.items()}
    params.check_int("benchmark.gpu_rounds", k["gpu_rounds"], 1)
    for n in k["gpu_batches"]:
        params.check_int("benchmark.gpu_batches[]", n, 1)
    for d in k["gpu_dtypes"]:
        params.check_choice("benchmark.gpu_dtypes[]", d, gpu.DTYPES)
    if HEADLINE not in k["gpu_dtypes"] or not k["gpu_batches"]:
        raise params.ParamError(
            f"benchmark.gpu_dtypes={k['gpu_dtypes']}, gpu_batches={k['gpu_batches']}: expected {HEADLINE!r} among the "
            "dtypes (the headline and the sweep's dtype) and at least one batch size"
        )
    return k


def probe():
    """{"device": the CUDA device's facts or {"skipped": reason}, "ort_providers": [...]}, from a fresh process
    (the benchmark process itself imports neither torch nor ONNX Runtime)."""
    proc = subprocess.run([sys.executable, "-m", gpu.__name__, "probe"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"GPU probe failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def unrunnable(spec, found, device="cuda"):
    """Why a variant gets no GPU process here (None: it gets one)."""
    if spec["runtime"] == "torch_pt2e":
        return "runtime torch_pt2e: a CPU-only program (X86 Inductor INT8)"
    if spec["runtime"] == "onnxruntime" and device != "cpu" and "CUDAExecutionProvider" not in found["ort_providers"]:
        return f"onnxruntime-gpu not installed (providers: {', '.join(found['ort_providers'])})"
    return None


def worker(spec, image_size, b, k, compiled, device="cuda"):
    """Measure one variant on the GPU in a fresh Python process; returns its JSON result."""
    cmd = [sys.executable, "-m", gpu.__name__, spec["runtime"], spec["model"], "--image-size", str(image_size)]
    cmd += ["--batches", *map(str, k["gpu_batches"]), "--dtypes", *k["gpu_dtypes"], "--device", device]
    cmd += ["--seconds", str(b["seconds"]), "--min-calls", str(b["min_calls"]), "--warmup", str(b["warmup"])]
    if compiled:
        cmd.append("--compile")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == errors.EXIT_USER_ERROR:
        raise errors.InputError(proc.stderr.strip().splitlines()[-1].removeprefix("gpu: "))
    if proc.returncode != 0:
        raise RuntimeError(f"GPU timing of {spec['model']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def round_rows(res, r, position, name):
    """Tidy rows of one GPU process: one per dtype measured; the headline dtype's row carries the sweep."""
    rows = []
    for dtype, d in res["dtypes"].items():
        if "skipped" in d:
            continue
        row = {"round": r, "position": position, "variant": name, "threads": f"gpu_{dtype}"}
        row |= {key: d.get(key) for key in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "peak_gpu_mem_mb")}
        if dtype == res["sweep"]["dtype"]:
            row |= {f"throughput_img_s_b{n}": v for n, v in res["sweep"].get("throughput_img_s", {}).items()}
        rows.append(row)
    return rows


def run_rounds(variants, image_size, b, k, seed, found, device="cuda", log=None):
    """(rows, results): rows as `round_rows`, results = {variant: round 1's result or {"skipped": reason}}."""
    results = {n: {"skipped": why} for n, s in variants.items() if (why := unrunnable(s, found, device))}
    names = [n for n in variants if n not in results]
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(1, k["gpu_rounds"] + 1):
        for position, name in enumerate(rng.permutation(names)):
            res = worker(variants[name], image_size, b, k, r == 1 and name in k["gpu_compile"], device)
            results.setdefault(name, res)
            rows += round_rows(res, r, position, name)
        if log:
            log.info("GPU round %d/%d done", r, k["gpu_rounds"])
    return pd.DataFrame(rows), results


def estimate_s(n_variants, k, seconds):
    """Rough wall seconds of the GPU rounds on an H100/H200: ~6 s to start a process and load, then per dtype
    and per batch a capture, warm-up and the time box; a cold compile ~18 s per batch size."""
    per_process = (
        6 + len(k["gpu_dtypes"]) * (1 + gpu.WARM_S + seconds) + len(k["gpu_batches"]) * (1 + gpu.WARM_S + seconds)
    )
    compiles = len(k["gpu_compile"]) * len(k["gpu_batches"]) * (18 + gpu.WARM_S + seconds)
    return round(n_variants * k["gpu_rounds"] * per_process + compiles)


def interval(values, key):
    s = metrics.summarise(values)
    out = {key: round(s["median"], 4)}
    if len(values) >= 2:
        out |= {f"{key}_cov_pct": round(s["cov_pct"], 2), f"{key}_ci95": [round(x, 4) for x in s["ci95"]]}
    return out


def summary(rows, results, device):
    """Per variant its `gpu` dict: batch-1 host-to-host latency of the headline dtype (median, CoV, interval over
    rounds) and of every dtype, the sweep's img/s per batch (median over rounds), the compiled sweep and its
    compile seconds (round 1), peak GPU memory; or {"skipped": reason}."""
    out = {}
    for name, res in results.items():
        if "skipped" in res:
            out[name] = {"skipped": res["skipped"]}
            continue
        mine = rows[rows["variant"] == name]
        by_dtype = {t.removeprefix("gpu_"): g for t, g in mine.groupby("threads")}
        head = HEADLINE if HEADLINE in by_dtype else next(iter(by_dtype), None)
        entry = {"device": device.get("name"), "dtype": head, "b1_mode": res["b1_mode"]}
        if head is not None:
            h = by_dtype[head]
            entry |= interval(h["latency_ms_p50"], "latency_ms_p50_b1")
            entry |= {f"latency_ms_p{q}_b1": round(float(h[f"latency_ms_p{q}"].median()), 4) for q in (90, 99)}
            entry["peak_gpu_mem_mb_b1"] = median_or_none(h["peak_gpu_mem_mb"])
        entry["latency_ms_p50_b1_by_dtype"] = {
            d: round(float(g["latency_ms_p50"].median()), 4) for d, g in by_dtype.items()
        }
        entry["logit_max_abs_diff_by_dtype"] = {
            d: v["logit_max_abs_diff"] for d, v in res["dtypes"].items() if "logit_max_abs_diff" in v
        }
        sweep = res["sweep"]
        entry["throughput_mode"] = f"{sweep['mode']}, {sweep['dtype']}"
        sweep_rows = by_dtype.get(sweep["dtype"], pd.DataFrame())
        entry["throughput_img_s"] = {
            c.removeprefix("throughput_img_s_b"): round(float(sweep_rows[c].median()), 1)
            for c in sweep_rows
            if c.startswith("throughput_img_s_b") and sweep_rows[c].notna().any()
        }
        compiled = res["compiled"]
        if "skipped" in compiled:
            entry["compile_skipped"] = compiled["skipped"]
        else:
            entry |= {"throughput_img_s_compiled": compiled["throughput_img_s"], "compile_s": compiled["compile_s"]}
        entry["peak_gpu_mem_mb"] = res.get("peak_gpu_mem_mb")  # round 1's whole process: largest batch, compile too
        failed = {d: v["skipped"] for d, v in res["dtypes"].items() if "skipped" in v}
        if "skipped" in sweep:
            failed["sweep"] = sweep["skipped"]
        if failed:
            entry["failed"] = failed
        entry["settings"] = res["settings"]
        out[name] = entry
    return out


def median_or_none(series):
    return None if series.isna().all() else round(float(series.median()), 1)


def phase(variants, image_size, seed, b, k, fingerprint, gpu_only, log, device="cuda"):
    """The GPU rounds where a CUDA device is here: (rows, {variant: gpu dict}, run facts); (None, {}, None) where
    not. Without a GPU in the fingerprint nothing is started, so a CPU machine's benchmark is what it was.
    device="cpu": the tests' fake device, the same rounds on the CPU."""
    if not (fingerprint["gpus"] or gpu_only):
        return None, {}, None
    found = probe()
    if device == "cpu":
        found["device"] = {"name": "cpu", "driver": None, "cuda": None}
    elif "skipped" in found["device"]:
        if gpu_only:
            raise errors.UserError(f"--gpu-only: {found['device']['skipped']}; run without it for CPU numbers")
        log.info("GPU rounds skipped: %s (the fingerprint lists %s)", found["device"]["skipped"], fingerprint["gpus"])
        return None, {}, None
    if absent := sorted(set(k["gpu_compile"]) - set(variants)):
        log.warning("benchmark.gpu_compile names %s, not variants of this run: not compiled", absent)
    runnable = [n for n, s in variants.items() if not unrunnable(s, found, device)]
    log.info(
        "GPU rounds on %s (driver %s, CUDA %s): %d variants x %d rounds, batches %s, compile %s: about %d s",
        found["device"]["name"],
        found["device"]["driver"],
        found["device"]["cuda"],
        len(runnable),
        k["gpu_rounds"],
        k["gpu_batches"],
        [n for n in k["gpu_compile"] if n in runnable],
        estimate_s(len(runnable), {**k, "gpu_compile": [n for n in k["gpu_compile"] if n in runnable]}, b["seconds"]),
    )
    rows, results = run_rounds(variants, image_size, b, k, seed, found, device, log)
    return rows, summary(rows, results, found["device"]), {"device": found["device"], **k}


def headline(g):
    """One log line of a variant's `gpu` dict."""
    if "skipped" in g:
        return f"skipped: {g['skipped']}"
    top = max(g["throughput_img_s"], key=int, default=None)
    text = f"{g['dtype']} b1 p50 {g.get('latency_ms_p50_b1')} ms host to host"
    if top:
        text += f", {g['throughput_img_s'][top]} img/s at batch {top}"
    if "throughput_img_s_compiled" in g and top in g["throughput_img_s_compiled"]:
        text += f" ({g['throughput_img_s_compiled'][top]} compiled, {g['compile_s'][top]} s to compile)"
    return text + f", peak {g['peak_gpu_mem_mb']} MB"
