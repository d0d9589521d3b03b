"""Recall-first metrics for a binary defect screen (positive class = defect).

The operating threshold is chosen on validation scores and then applied unchanged
to the test split: choosing it on test would overstate recall.
"""

import math
import re

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from scipy.stats import t as student_t
from sklearn.metrics import average_precision_score, f1_score, recall_score, roc_auc_score, roc_curve


def choose_threshold(scores, labels, target_recall):
    """The highest threshold t with recall(score >= t) >= target_recall on these scores.

    Higher thresholds flag fewer parts, so this is the operating point with the fewest
    false alarms that still catches the target share of defects.
    """
    pos = np.sort(np.asarray(scores)[np.asarray(labels) == 1])[::-1]
    if len(pos) == 0:
        raise ValueError("no defect images in the validation split: cannot pick a threshold")
    k = math.ceil(target_recall * len(pos) - 1e-9)  # defects that must score >= t
    return float(pos[k - 1])


def binary_metrics(scores, labels, threshold):
    """Counts and rates at `threshold`, plus threshold-free AUROC."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    pred = scores >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    tn = int(np.sum(~pred & (labels == 0)))
    recall = tp / (tp + fn) if tp + fn else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both_classes = len(np.unique(labels)) == 2
    return {
        "threshold": round(float(threshold), 6),
        "recall": round(recall, 4),
        "fnr": round(1.0 - recall, 4),
        "precision": round(precision, 4),
        "f1": round(f1, 4),
        "accuracy": round((tp + tn) / len(labels), 4),
        "auroc": round(float(roc_auc_score(labels, scores)), 4) if both_classes else float("nan"),
        "fpr": round(fp / (fp + tn), 4) if fp + tn else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "n_images": len(labels),
    }


def roc_points(scores, labels):
    fpr, tpr, thr = roc_curve(labels, scores)
    return pd.DataFrame({"fpr": fpr.round(5), "tpr": tpr.round(5), "threshold": np.clip(thr, 0, 1).round(5)})


def pr_points(scores, labels):
    """Precision/recall at every distinct score, from the most to the least strict threshold."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order] == 1)
    fp = np.cumsum(labels[order] == 0)
    last = np.r_[np.diff(scores[order]) != 0, True]  # keep one point per distinct score
    recall = tp[last] / max(1, tp[-1])
    precision = tp[last] / (tp[last] + fp[last])
    return pd.DataFrame({"recall": recall.round(5), "precision": precision.round(5)})


def average_precision(scores, labels):
    return round(float(average_precision_score(labels, scores)), 4)


def pct_name(stem, fraction):
    """'recall_at_fpr', 0.01 -> 'recall_at_fpr_1pct'; 'fpr_at_recall', 0.95 -> 'fpr_at_recall_95pct'."""
    return f"{stem}_{round(100 * fraction, 4):g}pct"


def parse_curve_name(name):
    """('recall_at_fpr' | 'fpr_at_recall', fraction) for a name made by pct_name, else None."""
    m = re.fullmatch(r"(recall_at_fpr|fpr_at_recall)_([0-9.]+)pct", name)
    return (m.group(1), float(m.group(2)) / 100) if m else None


def roc_rows(labels, scores):
    """Vectorised ROC: row-wise (tpr, fpr, operable) for 2-D labels/scores (one row per resample).

    Points are the cumulative counts after each image, most suspicious first; `operable` marks the
    last image of each group of tied scores, the only places a threshold can be put.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    y = np.take_along_axis(labels, order, 1)
    s = np.take_along_axis(scores, order, 1)
    tp, fp = np.cumsum(y == 1, 1), np.cumsum(y == 0, 1)
    operable = np.ones(s.shape, dtype=bool)
    operable[:, :-1] = s[:, :-1] != s[:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / tp[:, -1:], fp / fp[:, -1:], operable


def curve_metric(name, labels, scores):
    """Threshold-free operating points, row-wise: best recall at FPR <= x, or lowest FPR at recall >= r.

    `fpr_at_recall_95pct` is quality at matched recall: the false alarms a screen must accept to
    catch 95 % of the defects, whatever threshold that takes.
    """
    kind, x = parse_curve_name(name)
    tpr, fpr, operable = roc_rows(np.atleast_2d(labels), np.atleast_2d(scores))
    if kind == "recall_at_fpr":
        return np.where(operable & (fpr <= x + 1e-12), tpr, 0.0).max(1)  # no operable point: recall 0
    return np.where(operable & (tpr >= x - 1e-12), fpr, np.inf).min(1)  # the last point has recall 1


def recall_at_fpr(scores, labels, max_fpr):
    """Best defect recall among thresholds whose false-alarm rate stays <= max_fpr."""
    return round(float(curve_metric(pct_name("recall_at_fpr", max_fpr), labels, scores)[0]), 4)


def fpr_at_recall(scores, labels, min_recall):
    """Lowest false-alarm rate among thresholds that catch at least `min_recall` of the defects."""
    return round(float(curve_metric(pct_name("fpr_at_recall", min_recall), labels, scores)[0]), 4)


def multiclass_metrics(probs, labels, classes):
    """Argmax decision: accuracy, macro recall/F1, macro one-vs-rest AUROC, per-class recall."""
    labels = np.asarray(labels)
    pred = probs.argmax(1)
    recall = recall_score(labels, pred, labels=range(len(classes)), average=None, zero_division=0)
    present = np.unique(labels)
    auroc = (
        roc_auc_score(labels, probs, multi_class="ovr", labels=range(len(classes)))
        if len(present) == len(classes)
        else float("nan")
    )
    return {
        "accuracy": round(float(np.mean(pred == labels)), 4),
        "macro_recall": round(float(np.mean(recall)), 4),
        "macro_f1": round(
            float(f1_score(labels, pred, labels=range(len(classes)), average="macro", zero_division=0)), 4
        ),
        "macro_auroc": round(float(auroc), 4),
        "per_class_recall": {c: round(float(r), 4) for c, r in zip(classes, recall, strict=True)},
        "n_images": len(labels),
    }


# --- Bootstrap: resample test images with replacement, recompute, take the 2.5/97.5 percentiles ---

MULTICLASS_CI = ("macro_recall", "accuracy", "macro_f1")


def binary_ci_names(target_recall, fixed_fpr_pct):
    """What gets a bootstrap interval for a binary screen: the operating point (recall, FPR at the
    validation threshold), precision/F1, and the threshold-free AUROC, FPR at matched recall and
    recall at fixed false-alarm rates."""
    names = ["recall", "fpr", "precision", "f1", "auroc", pct_name("fpr_at_recall", target_recall)]
    return tuple(names + [pct_name("recall_at_fpr", pct / 100) for pct in fixed_fpr_pct])


def resampled(labels, pred, score, idx, names, num_classes):
    """Each metric in `names` on every resample (rows of idx): arrays of shape (draws,)."""
    y, p = labels[idx], pred[idx]
    out = {}
    if {"recall", "fpr", "precision", "f1"} & set(names):
        tp = ((p == 1) & (y == 1)).sum(1)
        fp = ((p == 1) & (y == 0)).sum(1)
        fn = ((p == 0) & (y == 1)).sum(1)
        tn = ((p == 0) & (y == 0)).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["recall"] = tp / (tp + fn)
            out["fpr"] = fp / (fp + tn)
            out["precision"] = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            out["f1"] = 2 * tp / (2 * tp + fp + fn)
    for name in names:
        if parse_curve_name(name):
            values = curve_metric(name, y, score[idx])
            has_both = (y == 1).any(1) & (y == 0).any(1)
            out[name] = np.where(has_both, values, np.nan)
    if "auroc" in names:
        ranks = rankdata(score[idx], axis=1)  # ties get their average rank, as in sklearn
        npos = y.sum(1)
        nneg = y.shape[1] - npos
        with np.errstate(invalid="ignore", divide="ignore"):
            out["auroc"] = ((ranks * y).sum(1) - npos * (npos + 1) / 2) / (npos * nneg)
    if "accuracy" in names:
        out["accuracy"] = (p == y).mean(1)
    if "macro_recall" in names or "macro_f1" in names:
        recalls, f1s = [], []
        for c in range(num_classes):
            tp = ((p == c) & (y == c)).sum(1)
            support, predicted = (y == c).sum(1), (p == c).sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                recalls.append(tp / support)
                f1s.append(np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0))
        out["macro_recall"] = np.nanmean(np.stack(recalls), 0)
        out["macro_f1"] = np.mean(np.stack(f1s), 0)
    return {k: out[k] for k in names}


def resample_index(n, draws, seed):
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))


def bootstrap_ci(labels, pred, score, names, draws, seed, num_classes=2):
    """95 % percentile intervals: {metric: [low, high]}. Draws where a metric is undefined are dropped."""
    idx = resample_index(len(labels), draws, seed)
    values = resampled(np.asarray(labels), np.asarray(pred), np.asarray(score), idx, names, num_classes)
    return {k: _interval(v) for k, v in values.items()}


def paired_delta_ci(a, b, labels, names, draws, seed, num_classes=2):
    """Interval for metric(a) - metric(b) on the same resampled images (a, b: dicts with pred, score).

    Pairing removes the shared image-sampling noise, so a small but consistent change is
    visible even when the two models' own intervals overlap.
    """
    labels = np.asarray(labels)
    idx = resample_index(len(labels), draws, seed)
    va = resampled(labels, np.asarray(a["pred"]), np.asarray(a["score"]), idx, names, num_classes)
    vb = resampled(labels, np.asarray(b["pred"]), np.asarray(b["score"]), idx, names, num_classes)
    return {k: _interval(va[k] - vb[k]) for k in names}


def _interval(values):
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return [float("nan"), float("nan")]
    return [round(float(np.percentile(values, 2.5)), 4), round(float(np.percentile(values, 97.5)), 4)]


def breakdown(table, attributes, labels, pred, task):
    """The primary metric for every value of every attribute (e.g. defect_type, cell_type).

    Binary: recall over the defects with that value (false-alarm rate for values with only good
    images, such as defect_type=good). Multi-class: accuracy.
    """
    labels, pred = np.asarray(labels), np.asarray(pred)
    out = {}
    for attr in attributes:
        values = table[attr].astype(str).to_numpy()
        out[attr] = {}
        for value in sorted(set(values)):
            m = values == value
            entry = {"n": int(m.sum())}
            if task == "binary":
                pos, neg = m & (labels == 1), m & (labels == 0)
                if pos.any():
                    entry["recall"] = round(float(np.mean(pred[pos] == 1)), 4)
                if neg.any():
                    entry["fpr"] = round(float(np.mean(pred[neg] == 1)), 4)
            else:
                entry["accuracy"] = round(float(np.mean(pred[m] == labels[m])), 4)
            out[attr][value] = entry
    return out


# --- Benchmark rounds: each round timed every variant once, in its own process ---


def t_quantile(n):
    """Two-sided 95 % Student t quantile for n observations (n - 1 degrees of freedom)."""
    return float(student_t.ppf(0.975, n - 1))


def summarise(values):
    """Median over rounds, coefficient of variation (%), and a 95 % t-interval of the mean."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return {"median": float(v[0]), "cov_pct": float("nan"), "ci95": [float("nan"), float("nan")]}
    mean, sd = v.mean(), v.std(ddof=1)
    half = t_quantile(len(v)) * sd / math.sqrt(len(v))
    return {"median": float(np.median(v)), "cov_pct": float(100 * sd / mean), "ci95": [mean - half, mean + half]}


def paired_ratio(before, after):
    """Speed-up before/after from per-round pairs: geometric mean and 95 % t-interval of log ratios.

    Both variants were measured in the same rounds, so a round where the machine was slow
    for everyone cancels out of the ratio.
    """
    r = np.log(np.asarray(before, dtype=float) / np.asarray(after, dtype=float))
    point = math.exp(r.mean())
    if len(r) < 2:
        return point, [float("nan"), float("nan")]
    half = t_quantile(len(r)) * r.std(ddof=1) / math.sqrt(len(r))
    return point, [math.exp(r.mean() - half), math.exp(r.mean() + half)]
