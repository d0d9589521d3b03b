"""Recall-first metrics for a binary defect screen (positive class = defect).

The operating threshold is chosen on validation scores and then applied unchanged
to the test split: choosing it on test would overstate recall.
"""

import math

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve


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
