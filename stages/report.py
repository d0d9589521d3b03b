"""report: join evaluate and benchmark for every variant; deltas vs the reference; Pareto plots.

python -m stages.report metrics/evaluate metrics/benchmark plots/report metrics/report.json
"""

import argparse
import json
import logging
from pathlib import Path

import matplotlib
import pandas as pd

from stages.lib import metrics, params
from stages.lib.outputs import write_json

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

log = logging.getLogger("report")

# The columns of the table, by task; the first is the primary metric (Pareto plots, deltas).
QUALITY = {
    "binary": ["recall", "fnr", "precision", "f1", "auroc", "ap", "threshold"],
    "multiclass": ["macro_recall", "accuracy", "macro_f1", "macro_auroc"],
}
COST = ["latency_ms_p50", "latency_ms_p90", "throughput_img_s", "size_mb", "param_count", "peak_rss_mb",
        "cost_usd_per_1m_images"]  # fmt: skip


def read_dir(folder, suffix=".json"):
    read = json.loads if suffix == ".json" else None
    return {f.stem: read(f.read_text()) if read else pd.read_csv(f) for f in sorted(Path(folder).glob(f"*{suffix}"))}


def build_table(evaluated, benchmarked, reference, predictions=None, draws=1000, seed=0):
    """One row per variant: quality with 95 % intervals, cost, and paired deltas vs `reference`."""
    missing = sorted(set(evaluated) ^ set(benchmarked))
    if missing:
        raise ValueError(f"variants {missing} have evaluate or benchmark metrics but not both")
    if reference not in evaluated:
        raise ValueError(
            f"report.reference={reference!r} is not an evaluated variant; expected one of {sorted(evaluated)}"
        )
    hashes = {v: m["test_sha256"] for v, m in evaluated.items()}
    if len(set(hashes.values())) != 1:
        raise ValueError(f"variants were evaluated on different test sets (test_sha256): {hashes}")
    task = evaluated[reference]["task"]
    quality = QUALITY[task]
    primary = quality[0]
    rows = {}
    for v in evaluated:
        ev = evaluated[v]
        row = {k: ev[k] for k in quality} | {k: benchmarked[v][k] for k in COST}
        for k, (lo, hi) in ((k[: -len("_ci95")], ev[k]) for k in ev if k.endswith("_ci95")):
            row[f"{k}_ci_low"], row[f"{k}_ci_high"] = lo, hi
        rows[v] = row
    order = [reference, *sorted(v for v in rows if v != reference)]  # the baseline first
    table = pd.DataFrame.from_dict(rows, orient="index").loc[order]
    ref = table.loc[reference]
    ci_names = metrics.BINARY_CI if task == "binary" else metrics.MULTICLASS_CI
    for name in ci_names:
        table[f"{name}_delta_pt"] = ((table[name] - ref[name]) * 100).round(2)
    if predictions is not None:
        labels = predictions[reference]["label"].to_numpy()
        num_classes = int(max(p["label"].max() for p in predictions.values())) + 1
        for v in table.index:
            if not (predictions[v]["sha256"] == predictions[reference]["sha256"]).all():
                raise ValueError(f"{v}: predictions are not in the reference's image order")
            ci = metrics.paired_delta_ci(
                predictions[v], predictions[reference], labels, ci_names, draws, seed, num_classes
            )
            for name, (lo, hi) in ci.items():
                table.loc[v, [f"{name}_delta_pt_ci_low", f"{name}_delta_pt_ci_high"]] = [
                    round(lo * 100, 2),
                    round(hi * 100, 2),
                ]
    table["speedup_x"] = (ref["latency_ms_p50"] / table["latency_ms_p50"]).round(2)
    table["size_ratio"] = (table["size_mb"] / ref["size_mb"]).round(3)
    table.index.name = "variant"
    table.attrs["primary"] = primary
    return table


def markdown(table):
    """The human table: primary metric and deltas with their 95 % intervals, then cost."""
    p = table.attrs["primary"]
    show = pd.DataFrame(index=table.index)

    def with_ci(col, scale=1.0, digits=3):
        lo, hi = table.get(f"{col}_ci_low"), table.get(f"{col}_ci_high")
        if lo is None:
            return table[col].map(lambda v: f"{v * scale:.{digits}f}")
        return [f"{v * scale:.{digits}f} [{a * scale:.{digits}f}, {b * scale:.{digits}f}]"
                for v, a, b in zip(table[col], lo, hi, strict=True)]  # fmt: skip

    show[f"{p} [95% CI]"] = with_ci(p)
    if f"{p}_delta_pt" in table:
        show[f"Δ{p} pt [paired 95% CI]"] = with_ci(f"{p}_delta_pt", digits=1)
    for extra in ("precision", "f1", "auroc", "accuracy", "macro_f1", "macro_auroc"):
        if extra in table:
            if f"{extra}_ci_low" in table:
                show[f"{extra} [95% CI]"] = with_ci(extra)
            else:
                show[extra] = table[extra].map(lambda v: f"{v:.3f}")
    show["latency ms (p50)"] = table["latency_ms_p50"].map(lambda v: f"{v:.2f}")
    show["speed-up"] = table["speedup_x"].map(lambda v: f"{v:.2f}x")
    show["throughput img/s"] = table["throughput_img_s"].map(lambda v: f"{v:.0f}")
    show["size MB"] = table["size_mb"].map(lambda v: f"{v:.2f}")
    show["params M"] = (table["param_count"] / 1e6).map(lambda v: f"{v:.2f}")
    show["peak RSS MB"] = table["peak_rss_mb"].map(lambda v: f"{v:.0f}")
    show["$ / 1M img"] = table["cost_usd_per_1m_images"].map(lambda v: f"{v:.3f}")
    return show.to_markdown() + "\n"


def pareto_front(table, cost, quality="recall"):
    """Variants no other variant beats on both `quality` (higher is better) and `cost` (lower is better)."""
    front = []
    q = table[quality]
    for v, row in table.iterrows():
        dominated = ((q >= row[quality]) & (table[cost] <= row[cost])
                     & ((q > row[quality]) | (table[cost] < row[cost]))).any()  # fmt: skip
        if not dominated:
            front.append(v)
    return front


def plot(table, path):
    q = table.attrs["primary"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, cost, label in ((axes[0], "latency_ms_p50", "CPU latency, batch 1 (ms, median)"),
                            (axes[1], "size_mb", "model file size (MB)")):  # fmt: skip
        front = pareto_front(table, cost, q)
        if f"{q}_ci_low" in table:
            yerr = [table[q] - table[f"{q}_ci_low"], table[f"{q}_ci_high"] - table[q]]
            ax.errorbar(table[cost], table[q], yerr=yerr, fmt="none", ecolor="0.7", capsize=2, label="95% CI")
        ax.scatter(table[cost], table[q], c=["C3" if v in front else "C0" for v in table.index], zorder=3)
        for v, row in table.iterrows():
            ax.annotate(v, (row[cost], row[q]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        pts = table.loc[front].sort_values(cost)
        ax.step(pts[cost], pts[q], where="post", color="C3", alpha=0.5, label="Pareto front")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # ticks 1, 2, 5, 10, ... labelled plainly
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(label + ", log scale")
        ax.set_ylabel(f"test {q}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right")
    fig.suptitle(f"{q} vs cost on the shared test split")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluate_dir")
    parser.add_argument("benchmark_dir")
    parser.add_argument("predictions_dir", help="per-image test predictions, for paired deltas")
    parser.add_argument("out_dir", help="comparison.csv, comparison.md, pareto.png")
    parser.add_argument("metrics")
    args = parser.parse_args()
    p = params.load()
    params.check_int("evaluate.bootstrap", p["evaluate"]["bootstrap"], 100)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    table = build_table(read_dir(args.evaluate_dir), read_dir(args.benchmark_dir), p["report"]["reference"],
                        read_dir(args.predictions_dir, ".csv"), p["evaluate"]["bootstrap"], p["base"]["seed"])  # fmt: skip
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv")
    (out / "comparison.md").write_text(markdown(table))
    plot(table, out / "pareto.png")
    write_json(args.metrics, table.to_dict(orient="index"))
    log.info("\n%s", markdown(table))


if __name__ == "__main__":
    main()
