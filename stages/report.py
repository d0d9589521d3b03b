"""report: join evaluate and benchmark for every variant; deltas vs the reference; Pareto plots.

python -m stages.report metrics/evaluate metrics/benchmark plots/report metrics/report.json
"""

import argparse
import json
import logging
from pathlib import Path

import matplotlib
import pandas as pd

from stages.lib import params
from stages.lib.outputs import write_json

matplotlib.use("Agg")
import matplotlib.pyplot as plt

log = logging.getLogger("report")

COLUMNS = ["recall", "fnr", "precision", "f1", "auroc", "threshold", "latency_ms_p50", "latency_ms_p90",
           "throughput_img_s", "size_mb", "param_count", "peak_rss_mb", "cost_usd_per_1m_images"]  # fmt: skip


def read_dir(folder):
    return {f.stem: json.loads(f.read_text()) for f in sorted(Path(folder).glob("*.json"))}


def build_table(evaluated, benchmarked, reference):
    missing = sorted(set(evaluated) ^ set(benchmarked))
    if missing:
        raise ValueError(f"variants {missing} have evaluate or benchmark metrics but not both")
    if reference not in evaluated:
        raise ValueError(
            f"report.reference={reference!r} is not an evaluated variant; expected one of {sorted(evaluated)}"
        )
    hashes = {v: m["manifest_sha256"] for v, m in evaluated.items()}
    if len(set(hashes.values())) != 1:
        raise ValueError(f"variants were evaluated on different test manifests: {hashes}")
    rows = {v: {**evaluated[v], **benchmarked[v]} for v in evaluated}
    table = pd.DataFrame.from_dict(rows, orient="index")[COLUMNS]
    ref = table.loc[reference]
    table["recall_delta_pt"] = ((table["recall"] - ref["recall"]) * 100).round(2)
    table["f1_delta_pt"] = ((table["f1"] - ref["f1"]) * 100).round(2)
    table["speedup_x"] = (ref["latency_ms_p50"] / table["latency_ms_p50"]).round(2)
    table["size_ratio"] = (table["size_mb"] / ref["size_mb"]).round(3)
    table.index.name = "variant"
    return table


def pareto_front(table, cost):
    """Variants no other variant beats on both recall and `cost` (lower is better)."""
    front = []
    for v, row in table.iterrows():
        dominated = ((table["recall"] >= row["recall"]) & (table[cost] <= row[cost])
                     & ((table["recall"] > row["recall"]) | (table[cost] < row[cost]))).any()  # fmt: skip
        if not dominated:
            front.append(v)
    return front


def plot(table, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, cost, label in ((axes[0], "latency_ms_p50", "CPU latency, batch 1 (ms, median)"),
                            (axes[1], "size_mb", "model file size (MB)")):  # fmt: skip
        front = pareto_front(table, cost)
        ax.scatter(table[cost], table["recall"], c=["C3" if v in front else "C0" for v in table.index])
        for v, row in table.iterrows():
            ax.annotate(v, (row[cost], row["recall"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        pts = table.loc[front].sort_values(cost)
        ax.step(pts[cost], pts["recall"], where="post", color="C3", alpha=0.5, label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("test defect recall")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle("Defect recall vs cost (threshold chosen on validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluate_dir")
    parser.add_argument("benchmark_dir")
    parser.add_argument("out_dir", help="comparison.csv, comparison.md, pareto.png")
    parser.add_argument("metrics")
    args = parser.parse_args()
    p = params.load()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    table = build_table(read_dir(args.evaluate_dir), read_dir(args.benchmark_dir), p["report"]["reference"])
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv")
    (out / "comparison.md").write_text(table.to_markdown(floatfmt="g") + "\n")
    plot(table, out / "pareto.png")
    write_json(args.metrics, table.to_dict(orient="index"))
    log.info("\n%s", table[["recall", "precision", "auroc", "latency_ms_p50", "size_mb", "speedup_x"]].to_string())


if __name__ == "__main__":
    main()
