import numpy as np
import pandas as pd
import pytest

from stages.report import build_table, markdown, pareto_front


def ev(recall, f1=0.8, test_sha="abc"):
    return {"task": "binary", "recall": recall, "fnr": 1 - recall, "precision": 0.7, "f1": f1, "auroc": 0.9,
            "ap": 0.8, "threshold": 0.3, "test_sha256": test_sha, "recall_ci95": [recall - 0.05, recall + 0.03]}  # fmt: skip


def bench(latency, size):
    return {"latency_ms_p50": latency, "latency_ms_p90": latency * 1.2, "throughput_img_s": 1000 / latency,
            "size_mb": size, "param_count": 1, "peak_rss_mb": 100, "cost_usd_per_1m_images": 0.1}  # fmt: skip


def test_deltas_against_reference():
    table = build_table({"t": ev(0.96), "s": ev(0.94, f1=0.75)}, {"t": bench(10, 20), "s": bench(2.5, 5)}, "t")
    assert table.loc["s", "recall_delta_pt"] == -2.0
    assert table.loc["s", "f1_delta_pt"] == -5.0
    assert table.loc["s", "speedup_x"] == 4.0 and table.loc["s", "size_ratio"] == 0.25
    assert table.loc["t", "speedup_x"] == 1.0
    assert table.loc["s", "recall_ci_low"] == pytest.approx(0.89)


def test_paired_delta_intervals_from_predictions():
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.3).astype(int)
    score = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    ref = pd.DataFrame(
        {"sha256": np.arange(400).astype(str), "label": labels, "pred": (score > 0.5).astype(int), "score": score}
    )
    worse = ref.assign(pred=np.where(labels == 1, 0, ref["pred"]))  # misses every defect
    table = build_table({"t": ev(0.9), "s": ev(0.0)}, {"t": bench(1, 1), "s": bench(1, 1)}, "t",
                        {"t": ref, "s": worse}, draws=200, seed=0)  # fmt: skip
    assert table.loc["t", "recall_delta_pt_ci_low"] == 0 and table.loc["t", "recall_delta_pt_ci_high"] == 0
    assert table.loc["s", "recall_delta_pt_ci_high"] < -50
    assert "Δrecall pt" in markdown(table)


def test_refuses_variants_evaluated_on_different_test_sets():
    with pytest.raises(ValueError, match="different test sets"):
        build_table({"t": ev(0.9), "s": ev(0.9, test_sha="xyz")}, {"t": bench(1, 1), "s": bench(1, 1)}, "t")


def test_refuses_half_measured_variants_and_unknown_reference():
    with pytest.raises(ValueError, match="not both"):
        build_table({"t": ev(0.9), "s": ev(0.9)}, {"t": bench(1, 1)}, "t")
    with pytest.raises(ValueError, match=r"report\.reference='x'"):
        build_table({"t": ev(0.9)}, {"t": bench(1, 1)}, "x")


def test_pareto_front():
    table = build_table(
        {"big": ev(0.97), "small": ev(0.95), "worse": ev(0.94)},
        {"big": bench(10, 20), "small": bench(2, 5), "worse": bench(3, 6)},
        "big",
    )
    assert set(pareto_front(table, "latency_ms_p50")) == {"big", "small"}
