"""'Which precision?': every recipe of every model against the same model in ONNX Runtime FP32.

For each model in `compare.models` and each recipe in `compare.recipes`: quality at matched recall
and threshold-free, with paired test intervals against the model's `ort_fp32` twin (same weights,
same runtime, only the precision differs); latency ratio against that twin and against the report's
reference (the FP32 teacher in PyTorch); size; peak memory. "Did PTQ hurt?" applies the rule in
params (`quantize.max_drop_pt`) to the paired *validation* deltas the quantize stage measured, so
the verdict never reads the test split.
"""

import pandas as pd

from stages.lib.report import formatting

TWIN = "ort_fp32"
PTQ_KINDS = {"ort_static", "ort_auto", "ort_dynamic", "pt2e"}  # post-training INT8: what QAT is measured against
NOTES = {
    "ort_dynamic": "dynamic INT8: convolutions become ConvInteger, which ONNX Runtime's CPU kernels do not optimise "
    "(and activation ranges are computed at every call); expect it slower than FP32 for CNNs. ConvInteger also "
    "keeps one weight scale per tensor even when per-channel is asked for (metrics/quantize: weight_scales), so "
    "depthwise CNNs lose accuracy as with per-tensor static INT8.",
    "onnx_fp16": "FP16: most x86 CPUs have no FP16 arithmetic, so ONNX Runtime casts around its kernels; expect it "
    "slower than FP32 on CPU (a GPU runs it natively: see the GPU columns when one was present).",
    "cluster": "weight clustering: the palettised size (indices + codebook) is what shrinks; the dense kernels "
    "run the same float weights, so latency does not change.",
}


def kinds(quantize_metrics):
    return {v: m.get("kind") for v, m in quantize_metrics.items()}


def rows(ev, table, models, recipes, reference, guards, quantize_metrics):
    """One row per (model, recipe) present in the table: the 'Which precision?' numbers."""
    out = []
    for model in models:
        twin = f"{model}_{TWIN}"
        for recipe in recipes:
            v = f"{model}_{recipe}"
            if v not in table.index:
                continue
            r = table.loc[v]
            row = {"model": model, "recipe": recipe, "variant": v, "kind": quantize_metrics.get(v, {}).get("kind")}
            for g in guards:
                row[g] = r[g]
                row[f"{g}_ci95"] = [r.get(f"{g}_ci_low"), r.get(f"{g}_ci_high")]
            if twin in table.index and v != twin:
                d = ev.compare(v, twin)
                for g in guards:
                    row[f"{g}_vs_fp32_pt"] = d[f"{g}_delta_pt"]
                    row[f"{g}_vs_fp32_pt_ci95"] = d.get(f"{g}_delta_pt_ci95")
                    row[f"{g}_vs_fp32_verdict"] = d.get(f"{g}_delta_pt_verdict", "same")
                row["speedup_vs_fp32_x"] = d["speedup_x"]
                row["speedup_vs_fp32_x_ci95"] = d["speedup_x_ci95"]
                row["speedup_vs_fp32_verdict"] = d["speedup_x_verdict"]
            row["speedup_vs_reference_x"] = r["speedup_x"]
            row["speedup_vs_reference_x_ci95"] = [r["speedup_x_ci_low"], r["speedup_x_ci_high"]]
            row["speedup_vs_reference_verdict"] = r["speedup_x_verdict"]
            row |= {"size_mb": r["size_mb"], "peak_rss_mb": r["peak_rss_mb"], "latency_ms_p50": r["latency_ms_p50"]}
            q = quantize_metrics.get(v, {})
            if "size_mb_palettised" in q:  # clustered weights: indices + codebook, what a palette format stores
                row["size_mb_palettised"] = q["size_mb_palettised"]
            if "auto_fit" in q:  # accuracy-controlled INT8: what it kept in float to fit quantize.max_drop_pt
                row["auto"] = {k: q[k] for k in ("auto_fit", "fp32_layers_kept", "fp32_macs_pct") if k in q}
            if "ptq_hurt" in q:
                row["ptq_hurt"] = q["ptq_hurt"]
                row["val_deltas_pt"] = {
                    k.removeprefix("val_").removesuffix("_delta_pt"): q[k]
                    for k in q
                    if k.startswith("val_") and k.endswith("_delta_pt")
                }
            out.append(row)
    return out


def _cell(row, key, verdict_key, fmt):
    """A paired difference with its interval and mark; a dash where there is nothing to pair with."""
    if key not in row:
        return "—"
    return fmt(row[key], row.get(f"{key}_ci95"), row.get(verdict_key, "same"))


def section(prec_rows, reference, guards, max_drop_pt):
    """Markdown for REPORT.md: one table per model, the 'did PTQ hurt' verdicts, what to expect of each kind."""
    out = [
        "## Which precision?",
        "",
        f"Each model under every recipe, paired against the **same model in ONNX Runtime FP32** (`<model>_{TWIN}`: "
        "same weights and runtime, only the precision differs) on the same test images and benchmark rounds, and "
        f"against `{reference}` for latency. Speed-ups >1x mean faster. {formatting.LEGEND}",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in prec_rows):
        show = []
        for r in (r for r in prec_rows if r["model"] == model):
            line = {"recipe": r["recipe"]}
            for g in guards:
                line[f"{formatting.label(g)} [95% CI]"] = formatting.with_ci(g, r[g], r[f"{g}_ci95"])
                line[f"Δ {formatting.label(g)} vs FP32, pt"] = _cell(
                    r, f"{g}_vs_fp32_pt", f"{g}_vs_fp32_verdict", formatting.fmt_delta
                )
            for key, name in (("speedup_vs_fp32", "x vs ORT FP32"), ("speedup_vs_reference", f"x vs {reference}")):
                line[name] = _cell(r, f"{key}_x", f"{key}_verdict", formatting.fmt_speedup)
            line["p50 ms"] = formatting.ms(r["latency_ms_p50"])
            line["size MB"] = f"{r['size_mb']:.2f}"
            if any("size_mb_palettised" in x for x in prec_rows):
                line["palettised MB"] = f"{r['size_mb_palettised']:.2f}" if "size_mb_palettised" in r else "—"
            line["peak RSS MB"] = f"{r['peak_rss_mb']:.0f}"
            line["PTQ hurt (val)"] = {True: "yes", False: "no"}.get(r.get("ptq_hurt"), "—")
            show.append(line)
        out += [f"**{model}**", "", pd.DataFrame(show).set_index("recipe").to_markdown(), ""]
    hurt = [r for r in prec_rows if r.get("ptq_hurt")]
    out.append(
        f"**Did PTQ hurt?** Rule (`quantize.max_drop_pt` = {max_drop_pt} pt): a recipe hurt when its paired "
        "validation delta against the FP32 model is worse than that in "
        + " or ".join(formatting.label(g) for g in guards)
        + " (measured by the quantize stage on validation "
        "images, so the verdict does not read the test split). "
        + (
            "Hurt: " + ", ".join(f"`{r['variant']}` ({_fmt_val(r['val_deltas_pt'])})" for r in hurt) + "."
            if hurt
            else "No recipe crossed it in this run."
        )
    )
    auto = [r for r in prec_rows if "auto" in r]
    if auto:
        out.append(
            f"\n**Accuracy-controlled INT8** (`{auto[0]['recipe']}`): all-INT8 first; while the validation drop "
            f"exceeds `quantize.max_drop_pt`, the next layer by logit sensitivity stays in float. Kept in float:"
        )
        for r in auto:
            a = r["auto"]
            kept = ", ".join(f"`{x}`" for x in a.get("fp32_layers_kept", [])) or (
                "nothing: all INT8 fit" if a["auto_fit"] else "nothing"
            )
            share = f", {a['fp32_macs_pct']:g} % of MACs" if a.get("fp32_macs_pct") else ""
            fit = "" if a["auto_fit"] else " (**did not fit** at the cap: the smallest drop found)"
            out.append(f"- `{r['variant']}`: {kept}{share}{fit}.")
    for model in dict.fromkeys(r["model"] for r in prec_rows):
        mine = [r for r in prec_rows if r["model"] == model and "ptq_hurt" in r]
        qat_rows = [r for r in mine if r["kind"] == "qat"]
        ptq_hurt = [r["recipe"] for r in mine if r["kind"] in PTQ_KINDS and r["ptq_hurt"]]
        for r in qat_rows:
            verdict = ("recovered it" if not r["ptq_hurt"] else "did not recover it") if ptq_hurt else "was not needed"
            out.append(
                f"\n**QAT, {model}**: PTQ hurt in {', '.join(ptq_hurt) or 'no recipe'}; `{r['recipe']}` "
                f"{verdict} ({_fmt_val(r['val_deltas_pt'])} on validation vs FP32)."
            )
    seen = {r["kind"] for r in prec_rows}
    notes = [f"- {text}" for kind, text in NOTES.items() if kind in seen]
    if notes:
        out += ["", "What to expect of some recipes (the measured numbers above say what happened here):", *notes]
    return "\n".join(out) + "\n"


def _fmt_val(deltas):
    return ", ".join(f"{formatting.label(k)} {v:+.1f} pt" for k, v in deltas.items())


def insert(report_md, text, before="## Caveats"):
    """The section placed before `before` (at the end when that heading is absent)."""
    i = report_md.find(before)
    return report_md + "\n" + text if i < 0 else report_md[:i] + text + "\n" + report_md[i:]
