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


def model_alone(scr):
    """The deployed model's benchmark throughput at screen's threads, and at the benchmark's own where they differ."""
    t, main = scr.get("model_only_threads", scr["threads"]), scr.get("benchmark_threads")
    same = scr.get("model_only_throughput_img_s")
    out = f"the model alone in the benchmark at the same {t} thread(s): " + (
        f"{same:.1f} images/s" if same else "not measured"
    )
    if main and main != t:
        out += f"; at the benchmark's {main}: {scr['benchmark_throughput_img_s']:.1f} images/s"
    return out + f" (batch {scr['model_only_batch_size']}, median over rounds)"


def screen_limit(scr):
    """What bounds screen's end-to-end speed, from the run's own numbers: the model alone at screen's threads, the
    decoding threads (decoding CPU time an image), and the cores both share: cores / (the model's CPU time an image +
    decoding's), the model's taken as its threads busy at its benchmark throughput. The least of the three is the
    ceiling (first-order: each assumed to scale with what it gets)."""
    model_only = scr.get("model_only_throughput_img_s")
    if not (scr.get("images") and scr.get("cpu_count") and model_only):
        return []
    decode_ms = 1000 * scr["decode_seconds"] / scr["images"]
    model_ms = 1000 * min(scr["threads"], scr["cpu_count"]) / model_only
    bounds = {
        "the model alone": model_only,
        f"{scr['workers']} decoding thread(s)": 1000 * max(scr["workers"], 1) / decode_ms,
        f"{scr['cpu_count']} cores shared by both": 1000 * scr["cpu_count"] / (model_ms + decode_ms),
    }
    limit = min(bounds, key=bounds.get)
    share = lambda v: f"{100 * v / model_only:.0f} %"  # noqa: E731
    spinning = scr.get("runtime_settings", {}).get("intra_op_allow_spinning")
    return [
        "",
        f"End to end is {share(scr['images_per_s'])} of the model alone at the same {scr['threads']} thread(s). "
        f"What limits it: decoding and resizing take {decode_ms:.2f} ms of CPU an image, the model {model_ms:.2f} ms; "
        + ", ".join(f"{name} allow{'s' if name == 'the model alone' else ''} ~{v:.0f}" for name, v in bounds.items())
        + f" images/s: at most ~{bounds[limit]:.0f} ({share(bounds[limit])}), set by {limit}."
        + (
            " ONNX Runtime's threads do not spin-wait (they would take the decoders' CPU time)."
            if spinning is False
            else ""
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
        f"({scr['threads']} model thread(s), {scr['workers']} decoding, batch {scr['batch_size']}; "
        f"{scr['model_seconds']:.2f} s of {scr['seconds']:.2f} s in the model{screen_runs(scr)}); {model_alone(scr)}. "
        "Measured by the select stage.",
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
