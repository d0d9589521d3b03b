"""Choosing the variant to deploy under constraints, from validation metrics and the benchmark only.

Test metrics never enter the decision; they are reported afterwards as the honest estimate of the pick.
Only variants that deploy as one ONNX file (runtime onnxruntime or openvino) are candidates: the bundle and
`screen` run that file in its runtime without PyTorch. PyTorch variants are listed with the reason they are not.
"""

from stages.lib.deploy import DEPLOYABLE
from stages.lib.metrics import speed
from stages.lib.params import ParamError, check_int, check_range

OBJECTIVES = {
    "latency": "among the ONNX variants (ONNX Runtime or OpenVINO) that meet every constraint, the fastest at "
    "batch 1; variants not distinguishably slower than the fastest (paired speed-up interval over benchmark rounds includes 1x, "
    "at the steadier thread count) tie with it, and a tie goes to quality: the lower validation FPR at the "
    "target recall, then the higher validation AUROC, then the name",
    "auroc": "among the ONNX variants (ONNX Runtime or OpenVINO) that meet every constraint, the highest "
    "validation AUROC; ties go to the lower batch-1 latency, then the name",
}
# constraint -> (the value it is checked against, "min" or "max", unit for messages)
CONSTRAINTS = {
    "min_recall": ("val_recall_bound", "min", ""),
    "max_fpr": ("val_fpr", "max", ""),
    "max_latency_ms": ("latency_ms_p50", "max", " ms"),
    "max_size_mb": ("size_mb", "max", " MB"),
    "max_peak_rss_mb": ("peak_rss_mb", "max", " MB"),
}


def check(sel, task):
    """select.* knobs: each constraint null (off) or a number in its range."""
    for key in ("min_recall", "max_fpr"):
        if sel[key] is not None:
            check_range(f"select.{key}", sel[key], 0, 1)
    for key in ("max_latency_ms", "max_size_mb", "max_peak_rss_mb"):
        if sel[key] is not None:
            check_range(f"select.{key}", sel[key], 0, 1e9, lo_inclusive=False)
    if task != "binary" and sel["max_fpr"] is not None:
        raise ParamError(f"select.max_fpr={sel['max_fpr']!r} applies to binary tasks only; expected null here")
    check_int("select.screen_images", sel["screen_images"], 1)
    if sel["objective"] not in OBJECTIVES:
        raise ParamError(f"select.objective={sel['objective']!r} is not allowed; expected one of {sorted(OBJECTIVES)}")
    return sel


def observed(ev, bench):
    """The numbers a variant is judged on: validation metrics and its benchmark entry.

    val_recall_bound: binary, the one-sided 95 % lower bound of validation recall at its threshold;
    multi-class, the validation macro recall (argmax, no threshold).
    """
    val = ev["val"]
    return {
        "val_recall": val["recall"],
        "val_recall_bound": val.get("recall_lower_bound", val["recall"]),
        "val_fpr": val.get("fpr"),
        "val_auroc": val["auroc"],
        "latency_ms_p50": bench["latency_ms_p50"],
        "size_mb": bench["size_mb"],
        "peak_rss_mb": bench["peak_rss_mb"],
    }


def assess(bench_variants, evaluations, sel):
    """Every variant: its numbers, whether it qualified, and each failed constraint with by how much."""
    out = {}
    for name, bench in bench_variants.items():
        if name not in evaluations:
            raise FileNotFoundError(f"variant {name!r} is in the benchmark but has no evaluate metrics")
        entry = {"runtime": bench["runtime"], "model_file": bench["model_file"], **observed(evaluations[name], bench)}
        failed, margins = {}, {}
        if bench["runtime"] not in DEPLOYABLE:
            failed["runtime"] = {"value": bench["runtime"], "limit": list(DEPLOYABLE)}
        for key, (field, kind, _) in CONSTRAINTS.items():
            limit, value = sel[key], entry[field]
            if limit is None:
                continue
            by = (limit - value) if kind == "min" else (value - limit)
            margins[key] = round(-by, 4)  # > 0: inside the constraint by this much
            if by > 0:
                failed[key] = {"value": value, "limit": limit, "by": round(by, 4)}
        out[name] = {**entry, "qualified": not failed, "failed": failed, "margins": margins}
    return out


def quality_key(e):
    """Better quality sorts first: lower validation FPR at the target recall, then higher validation AUROC."""
    auroc = e["val_auroc"] if e["val_auroc"] == e["val_auroc"] else float("-inf")  # NaN (a class missing) last
    return (e["val_fpr"] if e["val_fpr"] is not None else 0.0, -auroc)


def pick(assessed, objective="latency", ties=None):
    """The qualified variant by OBJECTIVES[objective], or None.

    `ties` (metrics.speed.latency_ties over the qualified variants) says which tie with the fastest; without
    it, latency is compared on the point median (a test shortcut, not what the stage does).
    """
    qualified = [name for name, e in assessed.items() if e["qualified"]]
    if not qualified:
        return None
    if objective == "auroc":
        return min(qualified, key=lambda n: (quality_key(assessed[n])[1], assessed[n]["latency_ms_p50"], n))
    if ties is None:
        fastest = min(assessed[n]["latency_ms_p50"] for n in qualified)
        tied = [n for n in qualified if assessed[n]["latency_ms_p50"] == fastest]
    else:
        tied = [n for n in qualified if ties[n]["tie"]]
    return min(tied, key=lambda n: (*quality_key(assessed[n]), n))  # within noise, latency is no tie-break


def decide(assessed, objective, variants, rounds, main_threads):
    """The pick and how latency was judged: (variant or None, timing record for metrics/select.json).

    Latency is compared at the steadier thread count among the qualified variants, with paired intervals
    (lib/metrics/speed); every qualified variant gets its speed entry in `assessed`.
    """
    qualified = [name for name, e in assessed.items() if e["qualified"]]
    if not qualified:
        return None, None
    threads, covs = speed.steady_threads(variants, qualified, main_threads)
    fastest, ties = speed.latency_ties(rounds, qualified, threads)
    for name in qualified:
        assessed[name]["speed"] = ties[name]
    timing = {"threads": threads, "median_cov_pct": covs, "fastest": fastest, "rule": speed.RULE}
    return pick(assessed, objective, ties), timing


def describe_failures(failed):
    parts = []
    for key, f in failed.items():
        if key == "runtime":
            parts.append(f"runtime {f['value']}: not deployable as one ONNX file")
            continue
        parts.append(f"{key}: {f['value']} vs {f['limit']} (off by {f['by']:g}{CONSTRAINTS[key][2]})")
    return "; ".join(parts)


def relative_miss(failed):
    """How far a failed constraint misses, as a share of its limit (runtime: 1, it cannot be relaxed)."""
    if "by" not in failed:
        return 1.0
    return failed["by"] / abs(failed["limit"]) if failed["limit"] else float("inf")


def closest(assessed):
    """When nothing qualifies: the deployable variant nearest to qualifying and the constraint that binds it.

    Nearest = fewest failed constraints, then the smallest relative miss of the worst one; the binding
    constraint is that worst one. None when no variant is deployable at all (runtime)."""
    deployable = {n: e for n, e in assessed.items() if "runtime" not in e["failed"]}
    if not deployable:
        return None

    def distance(name):
        misses = [relative_miss(f) for f in deployable[name]["failed"].values()]
        return (len(misses), max(misses, default=0.0), name)

    name = min(deployable, key=distance)
    failed = deployable[name]["failed"]
    binding = max(failed, key=lambda k: relative_miss(failed[k]))
    return {"variant": name, "binding": binding, **failed[binding], "failed": failed}


def none_qualified_message(assessed, sel):
    active = {k: v for k, v in sel.items() if k in CONSTRAINTS and v is not None}
    near = closest(assessed)
    lines = [
        f"no variant meets every constraint {active}; nothing is deployed. Relax one in params.yaml select.* "
        "(null = off):"
    ]
    if near:
        lines.append(f"  closest: {near['variant']}, bound by {near['binding']} ({near['value']} vs {near['limit']})")
    lines += [f"  {name}: {describe_failures(e['failed'])}" for name, e in assessed.items()]
    return "\n".join(lines)
