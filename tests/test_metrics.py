import numpy as np
import pytest

from stages.lib.metrics import binary_metrics, choose_threshold, pr_points, roc_points


def test_threshold_is_highest_that_reaches_target_recall():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05])
    assert choose_threshold(scores, labels, 0.75) == pytest.approx(0.6)  # 3 of 4 defects
    assert choose_threshold(scores, labels, 1.0) == pytest.approx(0.3)  # all defects
    assert choose_threshold(scores, labels, 0.5) == pytest.approx(0.8)
    assert choose_threshold(scores, labels, 0.51) == pytest.approx(0.6)  # ceil(0.51 * 4) = 3


def test_threshold_reaches_target_on_random_scores():
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.3).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    for target in (0.8, 0.9, 0.95, 0.99):
        t = choose_threshold(scores, labels, target)
        assert binary_metrics(scores, labels, t)["recall"] >= target
        # any higher threshold misses the target
        higher = np.min(scores[scores > t]) if (scores > t).any() else None
        if higher is not None:
            assert binary_metrics(scores, labels, higher)["recall"] < target


def test_threshold_needs_a_defect():
    with pytest.raises(ValueError, match="no defect"):
        choose_threshold(np.array([0.1, 0.2]), np.array([0, 0]), 0.9)


def test_binary_metrics_counts_and_rates():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05])
    m = binary_metrics(scores, labels, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 3)
    assert m["recall"] == 0.75 and m["fnr"] == 0.25 and m["precision"] == 0.75
    assert m["f1"] == 0.75 and m["accuracy"] == 0.75
    assert m["auroc"] == pytest.approx(14 / 16)


def test_curves_span_zero_to_one():
    rng = np.random.default_rng(1)
    labels = (rng.random(200) < 0.4).astype(int)
    scores = rng.random(200)
    roc = roc_points(scores, labels)
    assert roc["fpr"].iloc[0] == 0 and roc["tpr"].iloc[-1] == 1
    pr = pr_points(scores, labels)
    assert pr["recall"].is_monotonic_increasing and pr["recall"].iloc[-1] == 1
