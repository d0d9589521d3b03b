"""report: the comparison table, what each step bought and cost, Pareto plots, and REPORT.md.

    python -m stages.report metrics/evaluate metrics/benchmark.json plots/benchmark/rounds.csv \
        artifacts/predictions metrics/prepare.json data/prepared plots/report metrics/report.json \
        metrics/headline.json REPORT.md metrics/quantize --models teacher student_kd --recipes ort_fp32 int8_static_pc

Quality deltas are paired over test images, speed-ups over benchmark rounds (see lib/comparison).
The Pareto plots rank variants on a threshold-free quality (`report.quality`, AUROC by default,
with its interval), so a variant reaches the front by ranking defects better, not by a luckier
threshold. `metrics/headline.json` is the few numbers `dvc exp show` lists; the rest stays in
`metrics/report.json` and the CSVs. Only the variants of `--models` x `--recipes` (params `compare`)
are reported; a step whose variants are not among them is left out. "Which precision?" is
lib/precision.
"""

import argparse
import logging
import os
from pathlib import Path

import matplotlib
import pandas as pd

from stages.lib import data, errors, metrics, params
from stages.lib.outputs import read_json, write_json, write_text
from stages.lib.report import comparison, deployment, formatting, gpu, precision, summary, sweep, writeup

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

log = logging.getLogger("report")


def read_dir(folder, suffix=".json"):
    read = read_json if suffix == ".json" else pd.read_csv
    return {f.stem: read(f) for f in sorted(Path(folder).glob(f"*{suffix}"))}


def check(p, ev):
    """(quality, guards, steps): steps whose variants are not in this run (params `compare`) are left out."""
    r = p["report"]
    ev.check_variant("report.reference", r["reference"])
    if not isinstance(r["steps"], dict):
        raise params.ParamError(f"report.steps={r['steps']!r}; expected a mapping name: [before, after]")
    steps = {}
    for name, pair in r["steps"].items():
        if not (isinstance(pair, list) and len(pair) == 2):
            raise params.ParamError(f"report.steps.{name}={pair!r}; expected [before_variant, after_variant]")
        missing = [v for v in pair if v not in ev.evaluated]
        if missing:
            log.warning("report.steps.%s left out: %s not among this run's variants (params compare)", name, missing)
        else:
            steps[name] = pair
    if ev.task == "binary":
        ranking = ["auroc", *(n for n in ev.ci_names if metrics.parse_curve_name(n))]
        params.check_choice("report.quality", r["quality"], set(ranking))
        return r["quality"], ["auroc", metrics.pct_name("fpr_at_recall", p["evaluate"]["target_recall"])], steps
    return comparison.MULTICLASS_QUALITY, [comparison.MULTICLASS_QUALITY], steps


def plot(table, quality, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, cost, label in (
        (axes[0], "latency_ms_p50", "CPU latency, batch 1 (ms, median over rounds)"),
        (axes[1], "size_mb", "model file size (MB)"),
    ):
        front = comparison.pareto_front(table, cost, quality)
        yerr = [table[quality] - table[f"{quality}_ci_low"], table[f"{quality}_ci_high"] - table[quality]]
        ax.errorbar(table[cost], table[quality], yerr=yerr, fmt="none", ecolor="0.7", capsize=2, label="95% CI")
        ax.scatter(table[cost], table[quality], c=["C3" if v in front else "C0" for v in table.index], zorder=3)
        for v, row in table.iterrows():
            ax.annotate(v, (row[cost], row[quality]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        pts = table.loc[front].sort_values(cost)
        ax.step(pts[cost], pts[quality], where="post", color="C3", alpha=0.5, label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # ticks 1, 2, 5, 10, ... labelled plainly
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label + ", log scale")
        ax.set_ylabel(f"test {formatting.label(quality)}")
        if comparison.lower_is_better(quality):
            ax.invert_yaxis()  # better is up
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right")
    fig.suptitle(f"{formatting.label(quality)} (threshold-free, 95% CI) vs cost on the shared test split")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def pareto_points(table, quality):
    """Tidy rows for the Vega Pareto template: fixed column names, whatever `report.quality` is."""
    fronts = {c: set(comparison.pareto_front(table, c, quality)) for c in ("latency_ms_p50", "size_mb")}
    return pd.DataFrame(
        {
            "variant": table.index,
            "runtime": table["runtime"],
            "quality_metric": quality,
            "quality": table[quality],
            "quality_ci_low": table[f"{quality}_ci_low"],
            "quality_ci_high": table[f"{quality}_ci_high"],
            "latency_ms_p50": table["latency_ms_p50"],
            "size_mb": table["size_mb"],
            "speedup_x": table["speedup_x"],
            "front_latency": [v in fronts["latency_ms_p50"] for v in table.index],
            "front_size": [v in fronts["size_mb"] for v in table.index],
        }
    )


def headline(table, reference, recommended, quality_cols):
    """The compact metrics `dvc exp show` lists (narrow enough for a 200-column terminal): the recommended
    variant's quality at its operating point, AUROC, latency and size, the reference's AUROC and latency."""
    rec, ref = table.loc[recommended], table.loc[reference]
    return {
        "recommended": recommended,
        "rec": {
            **{q: round(float(rec[q]), 4) for q in quality_cols},
            "ms": rec["latency_ms_p50"],
            "mb": rec["size_mb"],
        },
        "ref": {quality_cols[-1]: round(float(ref[quality_cols[-1]]), 4), "ms": ref["latency_ms_p50"]},
        "max_cov_pct": round(float(table["latency_ms_p50_cov_pct"].max()), 2),
    }


def pruning_section(ev, pruned, quality, guards, out, report_md):
    """Where pruning starts to hurt (lib/sweep): plots sweep.csv and sweep.png in `out`, markdown, summary."""
    table = sweep.sweep_table(ev, pruned, guards)
    first = sweep.first_degraded(table, guards) if not table.empty else {}
    table.to_csv(out / "sweep.csv", index=False)
    sweep.plot(table, quality if quality in guards else guards[0], out / "sweep.png")
    sparse = sweep.sparse_rows(pruned)
    text = sweep.markdown(table, first, guards, sparse, os.path.relpath(out / "sweep.png", Path(report_md).parent))
    return text, {"first_degraded_ratio_pct": first, "sparse": sparse}


def overlay_curves(curves_dir, variants, out):
    """One tidy CSV per curve kind (roc, pr) with every variant's points and a `variant` column, so
    `dvc plots show` draws one chart with all variants overlaid (evaluate writes a file per variant)."""
    columns = {
        "roc": ["point", "fpr", "tpr", "threshold", "variant"],
        "pr": ["point", "recall", "precision", "variant"],
    }
    for kind in ("roc", "pr"):
        files = [Path(curves_dir) / kind / f"{v}.csv" for v in sorted(variants)]
        parts = [pd.read_csv(f).assign(variant=f.stem).rename_axis("point").reset_index() for f in files if f.is_file()]
        # multi-class runs have no binary curves: an empty table keeps the declared output
        (pd.concat(parts) if parts else pd.DataFrame(columns=columns[kind])).to_csv(out / f"{kind}.csv", index=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in (
        "evaluate_dir",
        "benchmark",
        "rounds_csv",
        "predictions_dir",
        "prepare_metrics",
        "data_dir",
        "out_dir",
        "metrics",
        "headline",
        "report_md",
        "quantize_dir",
    ):
        parser.add_argument(name)
    parser.add_argument("--pruning", required=True, help="folder of pruning metrics (metrics/prune): sweep section")
    parser.add_argument("--select", help="metrics/select.json of the select stage: adds the deployment section")
    parser.add_argument("--curves", help="plots/evaluate of the evaluate stages: ROC and PR of every variant overlaid")
    parser.add_argument("--models", nargs="+", required=True, help="params compare.models")
    parser.add_argument("--recipes", nargs="+", required=True, help="params compare.recipes")
    parser.add_argument("--openvino", nargs="*", default=[], help="params compare.openvino: more recipes")
    args = parser.parse_args()
    p = params.load("report", "base", "evaluate", "compare", "quantize", "prepare")
    params.check_int("evaluate.bootstrap", p["evaluate"]["bootstrap"], 100)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    bench = read_json(args.benchmark)
    recipes = args.recipes + args.openvino
    wanted = {f"{m}_{r}" for m in args.models for r in recipes}

    def keep(found):  # older experiments' files may still lie in the folders: only this run's variants
        return {k: v for k, v in found.items() if k in wanted}

    ev = comparison.Evidence(
        keep(read_dir(args.evaluate_dir)),
        keep(bench["variants"]),
        pd.read_csv(args.rounds_csv),
        keep(read_dir(args.predictions_dir, ".csv")),
        p["evaluate"]["bootstrap"],
        p["base"]["seed"],
        bench["threads"][-1],
    )
    quality, guards, step_pairs = check(p, ev)
    reference = p["report"]["reference"]
    table = comparison.build_table(ev, reference)
    steps = {name: {"before": b, "after": a, "delta": ev.compare(a, b)} for name, (b, a) in step_pairs.items()}
    quantized = keep(read_dir(args.quantize_dir))
    prec = precision.rows(ev, table, args.models, recipes, reference, guards, quantized)
    recommended, rule = comparison.recommend(table, guards, ev)
    names = [n for n in ev.ci_names if n not in ("precision", "f1")]

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv")
    pareto_points(table, quality).to_csv(out / "pareto.csv", index=False)
    plot(table, quality, out / "pareto.png")
    if args.curves:
        overlay_curves(args.curves, ev.evaluated, out)
    section, pruning = pruning_section(ev, read_dir(args.pruning), quality, guards, out, args.report_md)
    write_json(
        args.metrics,
        {
            # a value one variant lacks is NaN in the table, which is not JSON: null instead
            "variants": table.astype(object).where(table.notna(), None).to_dict(orient="index"),
            "steps": steps,
            "recommended": recommended,
            "rule": rule,
            "quality": quality,
            "precision": prec,
            "pruning": pruning,
        },
    )
    quality_cols = ["recall", "fpr", "auroc"] if ev.task == "binary" else ["accuracy", "macro_recall"]
    head = headline(table, reference, recommended, quality_cols)
    selected = read_json(args.select) if args.select else None
    if selected:  # what select deployed under its constraints (`dvc exp show --keep deployed`)
        head["deployed"] = selected["selected"]
    write_json(args.headline, head)
    ctx = {
        "reference": reference,
        "guards": guards,
        "names": names,
        "steps": steps,
        "recommended": recommended,
        "rule": rule,
        "fingerprint": bench["fingerprint"],
        "bench": bench,
        "params": p,
        "prepared": read_json(args.prepare_metrics),
        "info": data.read_info(args.data_dir),
        "target_recall": p["evaluate"]["target_recall"],
    }
    which = precision.section(prec, reference, guards, p["quantize"]["max_drop_pt"])
    text = precision.insert(precision.insert(writeup.render(table, ctx), which), section)
    if gpu_lines := gpu.section(bench):  # only where the benchmark ran GPU rounds
        text = precision.insert(text, "\n".join(gpu_lines) + "\n")
    head, appendix = text.split("\n## ", 1)  # the answer first; the sections that back it follow
    text = f"{head}\n" + "\n".join(summary.render(table, ctx, selected)) + f"\n## {appendix}"
    if selected and selected["selected"] is None:  # the first thing a reader must see
        title, rest = text.split("\n", 1)
        banner = "> **Nothing deployed.** No variant met every `select.*` constraint: "
        text = f"{title}\n\n{banner}{deployment.none_qualified_line(selected)}\n{rest}"
    if selected:  # the deployed variant, screen's end-to-end speed, the skew check, the threshold rules
        text += "\n".join(deployment.report_section(selected, ev.evaluated)) + "\n"
    write_text(args.report_md, text)
    log.info("recommended: %s; report written to %s", recommended, args.report_md)


if __name__ == "__main__":
    errors.run(main, "report")
