"""REPORT.md's deployment section: what `select` picked under its constraints and rule, every variant's margins,
the pick's honest test estimate, `screen`'s end-to-end speed and the skew check (from metrics/select.json)."""

from stages.lib.deploy import selection


def none_qualified_line(sel_result):
    """One sentence for when no variant met every constraint: the closest one and what binds it."""
    near = sel_result.get("closest")
    if near is None:
        return "no variant runs in a deployable runtime (ONNX Runtime); add an ONNX recipe to compare.recipes."
    unit = selection.CONSTRAINTS.get(near["binding"], ("", "", ""))[2]
    return (
        f"the closest, `{near['variant']}`, misses `select.{near['binding']}` by {near['by']:g}{unit} "
        f"({near['value']} vs {near['limit']}); `artifacts/deploy/` holds no model and `screen` refuses it. "
        "Relax that constraint or improve the model."
    )


def ci(value, interval):
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def screen_runs(scr):
    """', the median of N runs (low-high)' when select ran screen more than once."""
    runs = scr.get("images_per_s_runs") or []
    return f"; the median of {len(runs)} runs, {min(runs):.1f}-{max(runs):.1f}" if len(runs) > 1 else ""


def screen_limit(scr):
    """What bounds screen's end-to-end speed: decoding and the model share the CPU cores. The ceiling is
    cores / (the model's CPU time an image + decoding's), the model's taken as its threads busy at the benchmark's
    throughput: a first-order bound that assumes both scale with the cores they get."""
    if not (scr.get("images") and scr.get("cpu_count") and scr.get("model_only_throughput_img_s")):
        return []
    decode_ms = 1000 * scr["decode_seconds"] / scr["images"]
    model_ms = 1000 * min(scr["threads"], scr["cpu_count"]) / scr["model_only_throughput_img_s"]
    ceiling = 1000 * scr["cpu_count"] / (model_ms + decode_ms)
    share = lambda v: f"{100 * v / scr['model_only_throughput_img_s']:.0f} %"  # noqa: E731
    spinning = scr.get("runtime_settings", {}).get("intra_op_allow_spinning")
    return [
        "",
        f"End to end is {share(scr['images_per_s'])} of the model alone. What limits it: decoding and resizing take "
        f"{decode_ms:.2f} ms of CPU an image and the model {model_ms:.2f} ms ({scr['threads']} threads at its "
        f"benchmark throughput), on {scr['cpu_count']} cores they share: at most ~{ceiling:.0f} images/s "
        f"({share(ceiling)} of the model alone) however the work is overlapped. {scr['workers']} decoding thread(s)"
        + (
            ", ONNX Runtime's threads not spin-waiting (they would take the decoders' CPU time)."
            if spinning is False
            else "."
        ),
    ]


def report_section(sel_result, evaluations):
    """REPORT.md lines: the constraints and rule, every variant's verdict, the pick's honest test estimate,
    the screen command's end-to-end speed next to the model-only benchmark, the skew check, and the
    effect of each threshold rule."""
    c = {k: v for k, v in sel_result["constraints"].items() if v is not None}
    chosen, timing = sel_result["selected"], sel_result.get("timing")
    out = [
        "",
        "## Deployment: the selected variant",
        "",
        f"Constraints (params `select.*`, null = off): {c or 'none'}. Rule: {sel_result['rule']}. "
        "Decided on validation metrics and the benchmark only; `min_recall` is checked against the one-sided "
        "95 % lower bound of validation recall at the variant's threshold (multi-class: validation macro recall).",
    ]
    if timing:
        covs = ", ".join(f"{n} thread(s) {cov:g} %" for n, cov in timing["median_cov_pct"].items())
        out += [
            "",
            f"Latency was judged at **{timing['threads']} thread(s)**, the steadier setting (median CoV of batch-1 "
            f"p50 over rounds among the qualified variants: {covs}). The last columns: that p50 and the fastest "
            f"qualified variant's (`{timing['fastest']}`) paired speed-up over each, with its 95 % interval over "
            "rounds; *tie*: the interval includes 1x, so the benchmark cannot tell the two apart.",
        ]
    out += [
        "",
        "| variant | runtime | val recall (95 % lower bound) | val FPR | val AUROC | p50 ms | MB | peak RSS MB | "
        "margin to each constraint | qualified | p50 ms, judged | fastest's speed-up over it |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in sel_result["variants"].items():
        failures = selection.describe_failures(e["failed"])
        verdict = "**selected**" if name == chosen else ("yes" if e["qualified"] else failures)
        fpr = "" if e["val_fpr"] is None else f"{e['val_fpr']:.3f}"
        margins = ", ".join(f"{k} {m:+g}" for k, m in e.get("margins", {}).items())
        s = e.get("speed")
        judged = "" if s is None else f"{s['latency_ms_p50']:.3f}"
        ratio = (
            "" if s is None else ci(s["fastest_speedup_x"], s["fastest_speedup_x_ci95"]) + (" tie" if s["tie"] else "")
        )
        out.append(
            f"| {name} | {e['runtime']} | {e['val_recall']:.3f} ({e['val_recall_bound']:.3f}) | {fpr} | "
            f"{e['val_auroc']:.3f} | {e['latency_ms_p50']:.3f} | {e['size_mb']:.2f} | {e['peak_rss_mb']:.0f} | "
            f"{margins} | {verdict} | {judged} | {ratio} |"
        )
    if chosen is None:
        return [*out, "", "**No variant qualified, so nothing is deployed**: " + none_qualified_line(sel_result)]
    test, scr, sk = sel_result["test"], sel_result["screen"], sel_result["skew"]
    out += [
        "",
        f"**{chosen}** ships in `artifacts/deploy/` (model sha256 `{sel_result['model_sha256'][:16]}...`). "
        "Its test metrics, the honest estimate (test played no part in the choice): "
        + (
            f"recall {ci(test['recall'], test.get('recall_ci95'))}, FPR {ci(test['fpr'], test.get('fpr_ci95'))}, "
            f"AUROC {ci(test['auroc'], test.get('auroc_ci95'))} at threshold {test['threshold']:.4g} "
            f"({test['threshold_rule']} rule{', fallback' if test['threshold_fallback'] else ''})."
            if "recall" in test
            else f"macro recall {ci(test['macro_recall'], test.get('macro_recall_ci95'))}."
        ),
        "",
        f"`python -m stages.screen artifacts/deploy <images or folders>` on {scr['images']} raw images of the "
        f"data set, decoding included, in a fresh process without PyTorch: **{scr['images_per_s']:.1f} images/s** "
        f"({scr['threads']} threads, batch {scr['batch_size']}; {scr['model_seconds']:.2f} s of {scr['seconds']:.2f} s "
        f"in the model{screen_runs(scr)}); the model alone in the benchmark: {scr['model_only_throughput_img_s']:.1f} images/s "
        f"(batch {scr['model_only_batch_size']}, median over rounds). Measured by the select stage.",
        *screen_limit(scr),
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
                f"| {name} | {h['threshold']:.4g} | {ci(h['recall'], h['recall_ci95'])} | {h['fpr']:.3f} | "
                f"{lb['threshold']:.4g}{flag} | {lb['val_recall_lower_bound']:.3f} | "
                f"{ci(lb['recall'], lb['recall_ci95'])} | {lb['fpr']:.3f} |"
            )
    return out
