"""The comparison table: every variant's quality and cost, and paired differences between variants.

Quality deltas are paired over the test images (both models scored on the same bootstrap
resamples); speed-ups are paired over benchmark rounds (both variants timed in the same
round). A difference is *distinguishable* when its paired 95 % interval excludes 0 (or 1
for a speed-up ratio); anything else is reported as no detectable change.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.lib import metrics
from stages.lib.errors import ParamError
from stages.lib.metrics import speed

# Table columns by task. Binary screens are judged at matched recall: the operating point is the
# validation-chosen threshold (recall, FPR), and the threshold-free columns say how well a model
# ranks defects above good parts, which is what a luckier threshold cannot fake.
OPERATING = {
    "binary": ["recall", "fpr", "precision", "f1", "threshold"],
    "multiclass": ["macro_recall", "accuracy", "macro_f1"],
}
THRESHOLD_FREE = {"binary": ["auroc", "ap"], "multiclass": ["macro_auroc"]}
# Multi-class decisions are an argmax, with no threshold to be lucky with: macro recall is the Pareto quality.
MULTICLASS_QUALITY = "macro_recall"


def lower_is_better(name):
    return name.startswith("fpr") or name in ("fnr", "latency_ms_p50", "size_mb")


@dataclass
class Evidence:
    """Everything the report compares: evaluate and benchmark results, per-round timings, per-image predictions."""

    evaluated: dict  # variant -> evaluate metrics
    benchmarked: dict  # variant -> benchmark summary
    rounds: pd.DataFrame  # one row per round, variant and thread count (benchmark's rounds.csv)
    predictions: dict  # variant -> DataFrame(sha256, label, pred, score)
    draws: int = 1000
    seed: int = 0
    threads: int = 1  # the benchmark's main thread count (base.threads): speed-ups without a suffix

    def __post_init__(self):
        missing = sorted(set(self.evaluated) ^ set(self.benchmarked))
        if missing:
            raise ValueError(f"variants {missing} have evaluate or benchmark metrics but not both")
        hashes = {v: m["test_sha256"] for v, m in self.evaluated.items()}
        if len(set(hashes.values())) != 1:
            raise ValueError(f"variants were evaluated on different test sets (test_sha256): {hashes}")
        first = next(iter(self.evaluated.values()))
        self.task = first["task"]
        self.ci_names = [k.removesuffix("_ci95") for k in first if k.endswith("_ci95")]

    def check_variant(self, key, name):
        if name not in self.evaluated:
            raise ParamError(f"{key}={name!r} is not an evaluated variant; expected one of {sorted(self.evaluated)}")

    def latencies(self, variant, threads):
        """p50 latency per round (index: round) at `threads` threads."""
        rows = self.rounds[(self.rounds["variant"] == variant) & (self.rounds["threads"].astype(str) == str(threads))]
        return rows.set_index("round")["latency_ms_p50"].sort_index()

    def compare(self, after, before):
        """Paired differences after - before: quality deltas in points with intervals, speed-up, size ratio."""
        out = {}
        ea, eb = self.evaluated[after], self.evaluated[before]
        for name in self.ci_names:
            out[f"{name}_delta_pt"] = round((ea[name] - eb[name]) * 100, 2)
        pa, pb = self.predictions.get(after), self.predictions.get(before)
        if pa is not None and pb is not None:
            if not (pa["sha256"].to_numpy() == pb["sha256"].to_numpy()).all():
                raise ValueError(f"{after}, {before}: predictions are not in the same image order")
            num_classes = int(max(pa["label"].max(), pb["label"].max())) + 1
            ci = metrics.paired_delta_ci(
                pa, pb, pb["label"].to_numpy(), self.ci_names, self.draws, self.seed, num_classes
            )
            for name, (lo, hi) in ci.items():
                out[f"{name}_delta_pt_ci95"] = [round(lo * 100, 2), round(hi * 100, 2)]
                out[f"{name}_delta_pt_verdict"] = verdict(name, (lo, hi))
        for n, suffix in ((self.threads, ""), (1, "_1t")):
            la, lb = self.latencies(after, n), self.latencies(before, n)
            common = la.index.intersection(lb.index)
            if len(common) == 0 or (suffix and self.threads == 1):
                continue
            speedup, ci = metrics.paired_ratio(lb[common].to_numpy(), la[common].to_numpy())
            key = f"speedup_x{suffix}"
            out[key], out[f"{key}_ci95"] = round(speedup, 3), [round(x, 3) for x in ci]
            out[f"{key}_verdict"] = verdict("speedup_x", ci)
        out["size_ratio"] = round(self.benchmarked[after]["size_mb"] / self.benchmarked[before]["size_mb"], 3)
        return out


def verdict(name, interval):
    """'better' / 'worse' when the paired interval excludes no change, else 'same' (not distinguishable)."""
    lo, hi = interval
    neutral = 1.0 if name == "speedup_x" else 0.0
    if not (lo > neutral or hi < neutral):  # also when the interval is undefined (nan)
        return "same"
    higher = lo > neutral
    return "worse" if higher == lower_is_better(name) else "better"


def build_table(ev, reference):
    """One row per variant, the reference first: quality with intervals, cost, paired deltas vs `reference`."""
    ev.check_variant("report.reference", reference)
    rows = {}
    for v, m in ev.evaluated.items():
        b = ev.benchmarked[v]
        row = {k: m[k] for k in OPERATING[ev.task] + THRESHOLD_FREE[ev.task] + ev.ci_names if k in m}
        for name in ev.ci_names:
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = m[f"{name}_ci95"]
        # flat numbers and names only: nested settings (runtime_options) stay in metrics/benchmark.json
        row |= {k: b[k] for k in b if not isinstance(b[k], (dict, list, type(None))) and k != "fingerprint_id"}
        row["latency_ms_p50_ci_low"], row["latency_ms_p50_ci_high"] = b["latency_ms_p50_ci95"]
        delta = ev.compare(v, reference)
        for k, value in delta.items():
            if isinstance(value, list):
                row[f"{k.removesuffix('_ci95')}_ci_low"], row[f"{k.removesuffix('_ci95')}_ci_high"] = value
            else:
                row[k] = value
        rows[v] = row
    order = [reference, *sorted(v for v in rows if v != reference)]
    table = pd.DataFrame.from_dict(rows, orient="index").loc[order]
    table.index.name = "variant"
    return table


def pareto_front(table, cost, quality):
    """Variants no other variant beats on both `quality` and `cost` (lower cost is better)."""
    q = -table[quality] if lower_is_better(quality) else table[quality]
    c = table[cost]
    front = []
    for v in table.index:
        dominated = ((q >= q[v]) & (c <= c[v]) & ((q > q[v]) | (c < c[v]))).any()
        if not dominated:
            front.append(v)
    return front


def recommend(table, guards, ev):
    """The fastest variant whose `guards` metrics are not distinguishably worse than the reference's, judged as
    `select` judges latency (lib/metrics/speed): variants that tie with the fastest go to the better first guard.

    Returns (variant, rule text).
    """
    ok = np.ones(len(table), dtype=bool)
    for g in guards:
        col = f"{g}_delta_pt_verdict"
        if col in table:
            ok &= (table[col] != "worse").to_numpy()
    candidates = list(table.index[ok])
    threads, _ = speed.steady_threads(ev.benchmarked, candidates, ev.threads)
    _, ties = speed.latency_ties(ev.rounds, candidates, threads)
    sign = 1 if lower_is_better(guards[0]) else -1
    tied = [v for v in candidates if ties[v]["tie"]]
    best = min(tied, key=lambda v: (sign * table.loc[v, guards[0]], v))  # within noise, latency is no tie-break
    rule = (
        f"among variants whose {' and '.join(guards)} are not distinguishably worse than the reference's (paired "
        f"95 % intervals), the fastest at batch 1, where {speed.RULE} (here {threads} thread(s)); a tie goes to "
        f"the better {guards[0]}"
    )
    return best, rule
