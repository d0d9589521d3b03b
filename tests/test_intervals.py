import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from stages.lib import metrics

BINARY_CI = metrics.binary_ci_names(0.95, [1, 5])


def sample(n, seed=0, sep=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = 1 / (1 + np.exp(-rng.normal(sep * (2 * y - 1), 1.0)))
    return y, s


def test_draws_on_identity_resample_match_the_point_metrics():
    y, s = sample(400)
    pred = (s >= 0.5).astype(int)
    idx = np.arange(len(y))[None]
    d = metrics.resampled(y, pred, s, idx, BINARY_CI, 2)
    point = metrics.binary_metrics(s, y, 0.5)
    for k in ("recall", "fpr", "precision", "f1"):
        assert d[k][0] == pytest.approx(point[k], abs=1e-4)
    assert d["auroc"][0] == pytest.approx(roc_auc_score(y, s))
    assert d["fpr_at_recall_95pct"][0] == pytest.approx(metrics.fpr_at_recall(s, y, 0.95), abs=1e-4)
    assert d["recall_at_fpr_5pct"][0] == pytest.approx(metrics.recall_at_fpr(s, y, 0.05), abs=1e-4)


def test_auroc_draws_handle_ties_like_sklearn():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    s = np.array([0.1, 0.5, 0.5, 0.9, 0.5, 0.2, 0.3, 0.5])
    d = metrics.resampled(y, (s > 0.4).astype(int), s, np.arange(8)[None], ("auroc",), 2)
    assert d["auroc"][0] == pytest.approx(roc_auc_score(y, s))


def test_interval_contains_estimate_and_shrinks_with_more_images():
    widths = []
    for n in (200, 3200):
        y, s = sample(n, seed=1)
        pred = (s >= 0.5).astype(int)
        ci = metrics.bootstrap_ci(y, pred, s, ("recall", "auroc"), draws=500, seed=0)
        point = metrics.binary_metrics(s, y, 0.5)
        assert ci["recall"][0] <= point["recall"] <= ci["recall"][1]
        assert ci["auroc"][0] <= point["auroc"] <= ci["auroc"][1]
        widths.append(ci["recall"][1] - ci["recall"][0])
    assert widths[1] < widths[0] / 2.5  # ~1/sqrt(16) = 1/4 in theory


def test_bootstrap_is_seeded():
    y, s = sample(300)
    pred = (s >= 0.5).astype(int)
    a = metrics.bootstrap_ci(y, pred, s, BINARY_CI, 200, seed=3)
    assert a == metrics.bootstrap_ci(y, pred, s, BINARY_CI, 200, seed=3)
    assert a != metrics.bootstrap_ci(y, pred, s, BINARY_CI, 200, seed=4)


def test_paired_delta_is_zero_for_identical_models_and_positive_for_a_strictly_better_one():
    y, s = sample(500)
    pred = (s >= 0.6).astype(int)
    same = metrics.paired_delta_ci({"pred": pred, "score": s}, {"pred": pred, "score": s}, y, ("recall",), 300, 0)
    assert same["recall"] == [0.0, 0.0]
    better = pred.copy()
    missed = np.flatnonzero((y == 1) & (pred == 0))[:15]
    better[missed] = 1  # catches 15 more defects, nothing else changes
    ci = metrics.paired_delta_ci({"pred": better, "score": s}, {"pred": pred, "score": s}, y, ("recall",), 300, 0)
    assert ci["recall"][0] > 0
    # the unpaired intervals of the two models overlap, the paired one still excludes 0
    a = metrics.bootstrap_ci(y, better, s, ("recall",), 300, 0)["recall"]
    b = metrics.bootstrap_ci(y, pred, s, ("recall",), 300, 0)["recall"]
    assert a[0] < b[1]


def test_multiclass_metrics_and_draws_agree():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 2.0 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = metrics.multiclass_metrics(p, y, ["a", "b", "c", "d"])
    pred = p.argmax(1)
    d = metrics.resampled(y, pred, p.max(1), np.arange(300)[None], metrics.MULTICLASS_CI, 4)
    assert d["accuracy"][0] == pytest.approx(m["accuracy"], abs=1e-4)
    assert d["macro_recall"][0] == pytest.approx(m["macro_recall"], abs=1e-4)
    assert d["macro_f1"][0] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-4)
    assert set(m["per_class_recall"]) == {"a", "b", "c", "d"}


def test_recall_at_fixed_fpr():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.3, 0.85, 0.35, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert metrics.recall_at_fpr(s, y, 0.0) == 0.25  # only the 0.9 defect before the first false alarm
    assert metrics.recall_at_fpr(s, y, 0.1) == 0.75  # one false alarm (0.85) of 10 allowed: threshold 0.4
    assert metrics.recall_at_fpr(s, y, 0.2) == 1.0


def test_fpr_at_matched_recall():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.3, 0.85, 0.35, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert metrics.fpr_at_recall(s, y, 0.5) == 0.1  # 0.9 and 0.8 caught at threshold 0.8: one false alarm (0.85)
    assert metrics.fpr_at_recall(s, y, 0.75) == 0.1  # threshold 0.4
    assert metrics.fpr_at_recall(s, y, 1.0) == 0.2  # threshold 0.3 also flags 0.35


def test_curve_metrics_only_use_thresholds_between_distinct_scores():
    # a defect and a good part tie at 0.5: no threshold catches the defect without the false alarm
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.5, 0.5, 0.2, 0.1])
    assert metrics.recall_at_fpr(s, y, 0.0) == 0.5
    assert metrics.fpr_at_recall(s, y, 1.0) == pytest.approx(1 / 3, abs=1e-4)


def test_curve_metrics_agree_with_sklearn_roc_on_random_scores():
    from sklearn.metrics import roc_curve

    y, s = sample(300, seed=5)
    s = np.round(s, 2)  # plenty of ties
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    for x in (0.01, 0.05, 0.2):
        assert metrics.recall_at_fpr(s, y, x) == pytest.approx(tpr[fpr <= x].max(), abs=1e-4)
    for r in (0.8, 0.95):
        assert metrics.fpr_at_recall(s, y, r) == pytest.approx(fpr[tpr >= r].min(), abs=1e-4)


def test_breakdown_by_attribute():
    table = pd.DataFrame({"defect_type": ["good", "good", "crack", "crack", "spot", "spot"]})
    labels = np.array([0, 0, 1, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 0, 1])
    out = metrics.breakdown(table, ["defect_type"], labels, pred, "binary")
    assert out["defect_type"]["crack"] == {"n": 2, "recall": 1.0}
    assert out["defect_type"]["spot"] == {"n": 2, "recall": 0.5}
    assert out["defect_type"]["good"] == {"n": 2, "fpr": 0.5}
