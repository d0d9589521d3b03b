"""The operating threshold of a binary screen, chosen on validation, and exact binomial intervals.

Two rules (`evaluate.threshold_rule`):

- highest: the highest threshold whose validation recall reaches `evaluate.target_recall`. It sits
  exactly on the weakest validation defect it must catch, so with few validation defects it has no margin.
- lower_bound: the highest threshold at which the one-sided 95 % Clopper-Pearson lower confidence bound
  of validation recall reaches the target: the recall is shown to be >= target, not only observed.
  With n validation defects the best possible bound is 0.05 ** (1 / n), so a 95 % target needs
  n >= 59; when no threshold qualifies, the threshold falls back to the lowest validation defect
  score (every validation defect caught) and the result says so (`fallback: True`).

Multi-class tasks decide by argmax; neither rule applies to them.
"""

import numpy as np
from scipy.stats import beta

from stages.lib.metrics import choose_threshold

RULES = ("highest", "lower_bound")
CONFIDENCE = 0.95


def recall_lower_bound(caught, defects, confidence=CONFIDENCE):
    """One-sided Clopper-Pearson lower confidence bound of the rate caught / defects."""
    if caught == 0:
        return 0.0
    return float(beta.ppf(1 - confidence, caught, defects - caught + 1))


def clopper_pearson(k, n, confidence=CONFIDENCE):
    """Two-sided exact binomial interval [low, high] of the rate k / n (nan when n = 0)."""
    if n == 0:
        return [float("nan"), float("nan")]
    a = (1 - confidence) / 2
    low = beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    high = beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0
    return [round(float(low), 4), round(float(high), 4)]


def choose(scores, labels, target_recall, rule):
    """(threshold, fallback) by `rule` on validation scores; fallback is True only for lower_bound
    when no threshold's lower bound reaches the target."""
    if rule == "highest":
        return choose_threshold(scores, labels, target_recall), False
    pos = np.sort(np.asarray(scores)[np.asarray(labels) == 1])[::-1]
    if len(pos) == 0:
        raise ValueError("no defect images in the validation split: cannot pick a threshold")
    for k in range(1, len(pos) + 1):  # the bound grows with k: the first k that qualifies is the highest threshold
        caught = int(np.sum(pos >= pos[k - 1]))  # defects tied with the k-th score are caught too
        if recall_lower_bound(caught, len(pos)) >= target_recall:
            return float(pos[k - 1]), False
    return float(pos[-1]), True


def operating_point(scores, labels, threshold):
    """Recall and false-alarm rate at `threshold` with exact 95 % intervals and the one-sided recall bound."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    pred = scores >= threshold
    tp, defects = int(np.sum(pred & (labels == 1))), int(np.sum(labels == 1))
    fp, goods = int(np.sum(pred & (labels == 0))), int(np.sum(labels == 0))
    return {
        "recall": round(tp / defects, 4) if defects else float("nan"),
        "recall_ci95": clopper_pearson(tp, defects),
        "recall_lower_bound": round(recall_lower_bound(tp, defects), 4) if defects else float("nan"),
        "fpr": round(fp / goods, 4) if goods else float("nan"),
        "fpr_ci95": clopper_pearson(fp, goods),
        "defects": defects,
        "goods": goods,
    }
