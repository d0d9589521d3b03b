"""Choosing the variant to deploy under constraints, from validation metrics and the benchmark only.

Test metrics never enter the decision; they are reported afterwards as the honest estimate of the pick.
Only variants that deploy as one ONNX file (runtime onnxruntime) are candidates: the bundle and
`screen` run ONNX Runtime without PyTorch. PyTorch variants are listed with the reason they are not.
"""

from stages.lib.params import ParamError, check_int, check_range

OBJECTIVES = {
    "latency": "among the ONNX Runtime variants that meet every constraint, the lowest batch-1 latency "
    "(benchmark p50 at base.threads); ties go to the higher validation AUROC, then the name",
    "auroc": "among the ONNX Runtime variants that meet every constraint, the highest validation AUROC; "
    "ties go to the lower batch-1 latency, then the name",
}
DEPLOYABLE = "onnxruntime"
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
        if bench["runtime"] != DEPLOYABLE:
            failed["runtime"] = {"value": bench["runtime"], "limit": DEPLOYABLE}
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


def pick(assessed, objective="latency"):
    """The qualified variant by OBJECTIVES[objective], or None."""

    def key(name):
        e = assessed[name]
        auroc = (
            e["val_auroc"] if e["val_auroc"] == e["val_auroc"] else float("-inf")
        )  # NaN (a class missing) ranks last
        e = {**e, "val_auroc": auroc}
        return (
            (e["latency_ms_p50"], -e["val_auroc"], name)
            if objective == "latency"
            else (-e["val_auroc"], e["latency_ms_p50"], name)
        )

    qualified = [name for name, e in assessed.items() if e["qualified"]]
    return min(qualified, key=key) if qualified else None


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


def none_qualified_line(sel_result):
    """One sentence for when no variant met every constraint: the closest one and what binds it."""
    near = sel_result.get("closest")
    if near is None:
        return "no variant runs in a deployable runtime (ONNX Runtime); add an ONNX recipe to compare.recipes."
    unit = CONSTRAINTS.get(near["binding"], ("", "", ""))[2]
    return (
        f"the closest, `{near['variant']}`, misses `select.{near['binding']}` by {near['by']:g}{unit} "
        f"({near['value']} vs {near['limit']}); `artifacts/deploy/` holds no model and `screen` refuses it. "
        "Relax that constraint or improve the model."
    )


def _ci(value, interval):
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def report_section(sel_result, evaluations):
    """REPORT.md lines: the constraints and rule, every variant's verdict, the pick's honest test estimate,
    the screen command's end-to-end speed next to the model-only benchmark, the skew check, and the
    effect of each threshold rule."""
    c = {k: v for k, v in sel_result["constraints"].items() if v is not None}
    chosen = sel_result["selected"]
    out = [
        "",
        "## Deployment: the selected variant",
        "",
        f"Constraints (params `select.*`, null = off): {c or 'none'}. Rule: {sel_result['rule']}. "
        "Decided on validation metrics and the benchmark only; `min_recall` is checked against the one-sided "
        "95 % lower bound of validation recall at the variant's threshold (multi-class: validation macro recall).",
        "",
        "| variant | runtime | val recall (95 % lower bound) | val FPR | val AUROC | p50 ms | MB | peak RSS MB | "
        "margin to each constraint | qualified |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in sel_result["variants"].items():
        verdict = "**selected**" if name == chosen else ("yes" if e["qualified"] else describe_failures(e["failed"]))
        fpr = "" if e["val_fpr"] is None else f"{e['val_fpr']:.3f}"
        margins = ", ".join(f"{k} {m:+g}" for k, m in e.get("margins", {}).items())
        out.append(
            f"| {name} | {e['runtime']} | {e['val_recall']:.3f} ({e['val_recall_bound']:.3f}) | {fpr} | "
            f"{e['val_auroc']:.3f} | {e['latency_ms_p50']:.3f} | {e['size_mb']:.2f} | {e['peak_rss_mb']:.0f} | "
            f"{margins} | {verdict} |"
        )
    if chosen is None:
        return [*out, "", "**No variant qualified, so nothing is deployed**: " + none_qualified_line(sel_result)]
    test, scr, sk = sel_result["test"], sel_result["screen"], sel_result["skew"]
    out += [
        "",
        f"**{chosen}** ships in `artifacts/deploy/` (model sha256 `{sel_result['model_sha256'][:16]}...`). "
        "Its test metrics, the honest estimate (test played no part in the choice): "
        + (
            f"recall {_ci(test['recall'], test.get('recall_ci95'))}, FPR {_ci(test['fpr'], test.get('fpr_ci95'))}, "
            f"AUROC {_ci(test['auroc'], test.get('auroc_ci95'))} at threshold {test['threshold']:.4g} "
            f"({test['threshold_rule']} rule{', fallback' if test['threshold_fallback'] else ''})."
            if "recall" in test
            else f"macro recall {_ci(test['macro_recall'], test.get('macro_recall_ci95'))}."
        ),
        "",
        f"`python -m stages.screen artifacts/deploy <images or folders>` on {scr['images']} raw images of the "
        f"data set, decoding included, in a fresh process without PyTorch: **{scr['images_per_s']:.1f} images/s** "
        f"({scr['threads']} threads, batch {scr['batch_size']}; {scr['model_seconds']:.2f} s of {scr['seconds']:.2f} s "
        f"in the model); the model alone in the benchmark: {scr['model_only_throughput_img_s']:.1f} images/s "
        f"(batch {scr['model_only_batch_size']}, median over rounds). One run, measured by the select stage.",
        "",
        f"Skew check: screening the {sk['images']} raw test images reproduces evaluate's scores within "
        f"{sk['max_abs_score_diff']:.2g} (tolerance {sk['tolerance']:g}) with {sk['verdict_mismatches']} "
        "verdicts differing; the stage fails otherwise.",
    ]
    rules = {n: ev["by_rule"] for n, ev in evaluations.items() if "by_rule" in ev}
    if rules:
        out += [
            "",
            "### Threshold rule: highest vs lower_bound",
            "",
            "`highest`: the highest threshold whose validation recall reaches `evaluate.target_recall`; "
            "`lower_bound`: the highest whose one-sided 95 % Clopper-Pearson lower bound does (the margin). "
            "Test recall with its exact 95 % interval and test FPR at each rule's threshold.",
            "",
            "| variant | highest: threshold | test recall | test FPR | lower_bound: threshold | val recall bound "
            "| test recall | test FPR |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in rules.items():
            h, lb = r["highest"], r["lower_bound"]
            flag = " (fallback)" if lb["fallback"] else ""
            out.append(
                f"| {name} | {h['threshold']:.4g} | {_ci(h['recall'], h['recall_ci95'])} | {h['fpr']:.3f} | "
                f"{lb['threshold']:.4g}{flag} | {lb['val_recall_lower_bound']:.3f} | "
                f"{_ci(lb['recall'], lb['recall_ci95'])} | {lb['fpr']:.3f} |"
            )
    return out
