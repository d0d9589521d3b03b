import pytest

from stages.report import build_table, pareto_front


def ev(recall, f1=0.8, manifest="abc"):
    return {"recall": recall, "fnr": 1 - recall, "precision": 0.7, "f1": f1, "auroc": 0.9, "threshold": 0.3,
            "manifest_sha256": manifest}  # fmt: skip


def bench(latency, size):
    return {"latency_ms_p50": latency, "latency_ms_p90": latency * 1.2, "throughput_img_s": 1000 / latency,
            "size_mb": size, "param_count": 1, "peak_rss_mb": 100, "cost_usd_per_1m_images": 0.1}  # fmt: skip


def test_deltas_against_reference():
    table = build_table({"t": ev(0.96), "s": ev(0.94, f1=0.75)}, {"t": bench(10, 20), "s": bench(2.5, 5)}, "t")
    assert table.loc["s", "recall_delta_pt"] == -2.0
    assert table.loc["s", "f1_delta_pt"] == -5.0
    assert table.loc["s", "speedup_x"] == 4.0 and table.loc["s", "size_ratio"] == 0.25
    assert table.loc["t", "speedup_x"] == 1.0


def test_refuses_variants_evaluated_on_different_splits():
    with pytest.raises(ValueError, match="different test manifests"):
        build_table({"t": ev(0.9), "s": ev(0.9, manifest="xyz")}, {"t": bench(1, 1), "s": bench(1, 1)}, "t")


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
