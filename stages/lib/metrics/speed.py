"""Which variant is faster, at the resolution the benchmark can resolve.

Batch-1 latency on a shared VM moves between processes (9-28 % at 2 threads, 1-9 % at 1 thread here), so a
point median cannot rank two variants that do the same work. Two rules follow:

- decide on the **steadier thread count**: the one whose p50 latencies have the lower median coefficient of
  variation over rounds among the variants being ranked (the main thread count, `base.threads`, on a tie);
- a variant is **slower** than the fastest only when the fastest's paired speed-up over it (within-round
  ratios, `metrics.paired_ratio`) has a 95 % interval above 1x; otherwise the two **tie**, and the caller
  breaks the tie on quality.

The interval needs at least `MIN_ROUNDS` common rounds. With two, its width rests on one degree of freedom:
the standard deviation of two log ratios, which swings by an order of magnitude between reruns, so the same
models came out "distinguishably slower" in one benchmark run and tied in the next (seen in CI: the pick
flipped between two variants on a re-measure). Below `MIN_ROUNDS` everything ties and quality decides.
"""

import math

import numpy as np

from stages.lib.metrics import paired_ratio

MIN_ROUNDS = 3  # common benchmark rounds needed before a speed difference can rank two variants

RULE = (
    "timings are compared at the thread count whose batch-1 p50 was steadier over rounds (lower median CoV); "
    "a variant is slower than the fastest only when the paired speed-up interval over rounds excludes 1x, "
    f"otherwise they tie (with fewer than {MIN_ROUNDS} rounds everything ties)"
)


def suffix(n, main_threads):
    """benchmark.json's key suffix for `n` threads: none for the main count, `_1t` for one thread."""
    return "" if n == main_threads else f"_{n}t"


def steady_threads(variants, names, main_threads):
    """(threads, {threads: median CoV %}): the thread count whose p50 latencies were steadier over `names`.

    `variants` is benchmark.json's `variants`; a thread count without CoVs (one round) is not a candidate.
    """
    covs = {}
    for n in sorted({1, main_threads}):
        values = [variants[v].get(f"latency_ms_p50{suffix(n, main_threads)}_cov_pct") for v in names]
        values = [x for x in values if x is not None and not math.isnan(x)]
        if values:
            covs[n] = round(float(np.median(values)), 2)
    if not covs:
        return main_threads, covs
    return min(covs, key=lambda n: (covs[n], n != main_threads)), covs


def per_round(rounds, variant, threads):
    """p50 latency per round (index: round) of `variant` at `threads` (benchmark's rounds.csv)."""
    rows = rounds[(rounds["variant"] == variant) & (rounds["threads"].astype(str) == str(threads))]  # also "gpu" rows
    return rows.set_index("round")["latency_ms_p50"].sort_index()


def latency_ties(rounds, names, threads):
    """Every one of `names` against the fastest at `threads`: median p50, the fastest's paired speed-up over it
    with its 95 % interval, and whether it ties with the fastest (the interval does not lie above 1x).

    The fastest is the lowest median p50 (then the name). With fewer than `MIN_ROUNDS` common rounds nothing
    is ranked, so everything ties: the benchmark cannot tell the variants apart (the interval is still shown).
    """
    latency = {v: per_round(rounds, v, threads) for v in names}
    missing = sorted(v for v, s in latency.items() if s.empty)
    if missing:
        raise ValueError(f"variants {missing} have no benchmark rounds at {threads} thread(s)")
    fastest = min(names, key=lambda v: (float(latency[v].median()), v))
    out = {}
    for v in names:
        common = latency[v].index.intersection(latency[fastest].index)
        if v == fastest:
            ratio, ci = 1.0, [1.0, 1.0]
        else:
            ratio, ci = paired_ratio(latency[v][common].to_numpy(), latency[fastest][common].to_numpy())
        out[v] = {
            "latency_ms_p50": round(float(latency[v].median()), 4),
            "fastest_speedup_x": round(ratio, 3),
            "fastest_speedup_x_ci95": [round(x, 3) for x in ci],
            "tie": len(common) < MIN_ROUNDS or not ci[0] > 1.0,  # a nan bound (one round) is no evidence either
        }
    return fastest, out
