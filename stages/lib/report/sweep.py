"""Where pruning starts to hurt: quality vs MACs and latency over the pruned models, paired against
the unpruned student, and what weight sparsity did (read by the report stage).

Inputs are the pruning metrics (one JSON per pruned model: prune, prune_sweep and sparsify stages
write `metrics/prune/<model>.json`) and the comparison `Evidence`. Variants are matched to models by
name: a variant is `<model>_<recipe>` (e.g. student_pruned_r30_int8), so each pruned model is compared
with the unpruned student in the same recipe (runtime, precision).
"""

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from stages.lib.report import comparison, formatting

SPARSE_NOTE = (
    "Unstructured and 2:4 sparse models are stored dense (zeros inside the weights): PyTorch and ONNX "
    "Runtime on this CPU compute every zero, so their latency and file size are the dense model's; "
    "what sparsity buys here is the compressed size below (and 2:4 speed on sparse tensor cores, GPU only)."
)


def split_variant(variant, models):
    """(model, recipe) for a variant named <model>_<recipe>, the longest matching model; None if none."""
    hits = [m for m in models if variant.startswith(f"{m}_")]
    if not hits:
        return None
    model = max(hits, key=len)
    return model, variant[len(model) + 1 :]


def compared_with(run):
    """The unpruned model a pruned one is judged against: the model it was pruned from (prune.source)."""
    return run.get("source_model", "student_kd")


def structured(pruned):
    """{model: metrics} of channel-pruned models (those with MACs) and the unpruned models they are judged against."""
    runs = {m: r for m, r in pruned.items() if "macs_after_m" in r}
    return runs, {compared_with(r) for r in runs.values()}


def sweep_table(ev, pruned, guards):
    """One row per (recipe, ratio): MACs, latency, quality with interval, paired deltas vs ratio 0."""
    runs, sources = structured(pruned)
    models = {**{s: None for s in sources}, **runs}
    rows = []
    for variant in ev.evaluated:
        split = split_variant(variant, models)
        if split is None:
            continue
        model, recipe = split
        run = runs.get(model)
        source = compared_with(run) if run else model
        baseline = f"{source}_{recipe}"
        if baseline not in ev.evaluated:
            continue
        first = next(iter(runs.values()), {})
        row = {
            "variant": variant,
            "model": model,
            "recipe": recipe,
            "baseline": baseline,
            "ratio_pct": round(run["ratio"] * 100) if run else 0,
            "macs_m": run["macs_after_m"] if run else first.get("macs_before_m"),
            "latency_ms_p50": ev.benchmarked[variant]["latency_ms_p50"],
        }
        for g in guards:
            row[g] = ev.evaluated[variant][g]
            row[f"{g}_ci_low"], row[f"{g}_ci_high"] = ev.evaluated[variant][f"{g}_ci95"]
        delta = ev.compare(variant, baseline) if variant != baseline else {}
        for g in guards:
            row[f"{g}_delta_pt"] = delta.get(f"{g}_delta_pt", 0.0)
            row[f"{g}_delta_pt_ci95"] = delta.get(f"{g}_delta_pt_ci95", [0.0, 0.0])
            row[f"{g}_delta_pt_verdict"] = delta.get(f"{g}_delta_pt_verdict", "same")
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["recipe", "ratio_pct", "variant"]).reset_index(drop=True)


def first_degraded(table, guards):
    """Per recipe: the lowest ratio (%) whose paired delta on any guard is distinguishably worse, or None."""
    out = {}
    for recipe, rows in table.groupby("recipe"):
        worse = rows[(rows[[f"{g}_delta_pt_verdict" for g in guards]] == "worse").any(axis=1)]
        out[recipe] = int(worse["ratio_pct"].min()) if len(worse) else None
    return out


def plot(table, quality, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    if table.empty:  # the sweep is off: say so in the picture too
        for ax in axes:
            ax.text(0.5, 0.5, "no pruning sweep in this run (prune.sweep: [])", ha="center", va="center")
            ax.set_axis_off()
        fig.savefig(path, dpi=60)
        plt.close(fig)
        return
    for ax, cost, label in (
        (axes[0], "macs_m", "MACs per image (M)"),
        (axes[1], "latency_ms_p50", "CPU latency, batch 1 (ms, median over rounds)"),
    ):
        for i, (recipe, rows) in enumerate(table.groupby("recipe")):
            rows = rows.sort_values("ratio_pct")
            yerr = [rows[quality] - rows[f"{quality}_ci_low"], rows[f"{quality}_ci_high"] - rows[quality]]
            ax.errorbar(rows[cost], rows[quality], yerr=yerr, fmt="o-", capsize=2, color=f"C{i}", label=recipe)
            for _, r in rows.iterrows():
                ax.annotate(
                    f"{r['ratio_pct']}%", (r[cost], r[quality]), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        ax.set_xlabel(label)
        ax.set_ylabel(f"test {formatting.label(quality)} (95% CI)")
        if comparison.lower_is_better(quality):
            ax.invert_yaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Channel pruning: quality vs cost by share of channels removed (labels)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sparse_rows(pruned):
    """The weight-sparsity models: pattern, sparsity, sizes (dense, deflated, bitmask)."""
    keys = ("pattern", "sparsity_all_weights", "size_dense_mb", "size_deflate_mb", "size_bitmask_mb", "val_auroc")
    return {m: {k: r.get(k) for k in keys} | {"gpu_2_4": r.get("gpu_2_4")} for m, r in pruned.items() if "pattern" in r}


def markdown(table, first, guards, sparse, plot_name):
    """The REPORT.md section: the sweep table, where it first hurts, and the sparsity note."""
    lines = ["## Where pruning starts to hurt", ""]
    if table.empty:
        lines += [
            "Only the default pruning ratio was run. The sweep is off by default (each ratio is a fine-tune): "
            "`dvc exp run -S 'prune.sweep=[10,20,30,40,50,60,70]'` with the swept models added to the "
            "compared models.",
            "",
        ]
    else:
        head = ["recipe", "removed %", "MACs (M)", "ms p50"] + [f"Δ {formatting.label(g)}, pt [95% CI]" for g in guards]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in table.iterrows():
            cells = [r["recipe"], str(r["ratio_pct"]), f"{r['macs_m']:.1f}", f"{r['latency_ms_p50']:.2f}"]
            cells += [
                formatting.fmt_delta(r[f"{g}_delta_pt"], r[f"{g}_delta_pt_ci95"], r[f"{g}_delta_pt_verdict"])
                for g in guards
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Deltas are paired against the unpruned student in the same recipe. " + formatting.LEGEND, ""]
        for recipe, ratio in first.items():
            lines.append(
                f"- {recipe}: "
                + (
                    f"first distinguishably worse at **{ratio} %** of channels removed"
                    if ratio is not None
                    else "no swept ratio is distinguishably worse"
                )
            )
        lines += ["", f"![quality vs MACs and latency]({plot_name})", ""]
    if sparse:
        lines += [
            "### Weight sparsity (unstructured, 2:4)",
            "",
            SPARSE_NOTE,
            "",
            "| model | pattern | zero weights % | model.pt MB | deflated MB | bitmask + values MB | 2:4 on GPU |",
            "|---|---|---|---|---|---|---|",
        ]
        for m, r in sparse.items():
            gpu = r["gpu_2_4"] or {}
            gpu_text = (
                f"{gpu['speedup_x']}x GEMM ({gpu['device']})" if gpu.get("speedup_x") else "not measured (no GPU)"
            )
            lines.append(
                f"| {m} | {r['pattern']} | {100 * r['sparsity_all_weights']:.1f} | {r['size_dense_mb']} | "
                f"{r['size_deflate_mb']} | {r['size_bitmask_mb']} | {gpu_text if r['pattern'] == '2:4' else '-'} |"
            )
        lines.append("")
    return "\n".join(lines)
