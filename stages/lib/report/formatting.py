"""How REPORT.md writes numbers: metric labels, intervals, paired deltas with their ▲/▼ marks, speed-ups."""

import pandas as pd

from stages.lib import metrics

MARK = {"better": " ▲", "worse": " ▼", "same": ""}


LEGEND = (
    "▲ / ▼: the paired 95 % interval excludes no change, so the difference is distinguishable "
    "(better / worse); no mark: not distinguishable on this test set."
)


SPEED_LEGEND = (
    "Speed-ups are paired: per-round ratios of the two variants' p50 latencies, then a 95 % t-interval of "
    "their logs over rounds; ▲ / ▼: the interval excludes 1x."
)


NAMES = {
    "fpr": "FPR %",
    "recall": "recall %",
    "auroc": "AUROC",
    "ap": "AP",
    "precision": "precision",
    "f1": "F1",
    "macro_recall": "macro recall %",
    "accuracy": "accuracy %",
    "macro_f1": "macro F1 %",
}


def label(name):
    if name in NAMES:
        return NAMES[name]
    kind, x = metrics.parse_curve_name(name)
    return f"FPR % at {x * 100:g} % recall" if kind == "fpr_at_recall" else f"recall % at {x * 100:g} % FPR"


def num(name, value):
    """Rates (recall, FPR, accuracy ...) in %; AUROC, AP, precision and F1 as fractions."""
    return f"{value:.3f}" if name in ("auroc", "ap", "precision", "f1") else f"{value * 100:.1f}"


def with_ci(name, value, interval):
    if interval is None or pd.isna(interval[0]):
        return num(name, value)
    return f"{num(name, value)} [{num(name, interval[0])}, {num(name, interval[1])}]"


def fmt_delta(value, interval=None, verdict="same", unit=""):
    """'-7.6 [-10.1, -5.0] ▼': a paired difference, its interval, and whether it is distinguishable."""
    if interval is None or pd.isna(interval[0]):
        return f"{value:+.1f}{unit}"
    return f"{value:+.1f} [{interval[0]:+.1f}, {interval[1]:+.1f}]{unit}{MARK[verdict]}"


def fmt_speedup(value, interval, verdict="same"):
    return f"{value:.2f}x [{interval[0]:.2f}, {interval[1]:.2f}]{MARK[verdict]}"


def interval(row, key):
    low = row.get(f"{key}_ci_low")
    return None if low is None else (low, row[f"{key}_ci_high"])


def ms(value):
    """Three significant digits, trailing zeros kept: 14.0, 9.92, 0.914."""
    return f"{value:#.3g}".rstrip(".")
