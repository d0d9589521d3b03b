"""The CPU benchmark's rounds (stages/benchmark.run_rounds) without timing anything: every variant once per round
in a fresh worker, warm-up rounds run but unrecorded, a seeded shuffle per round, one row per thread count.
(The tiny end-to-end run times real workers with no warm-up round, to keep CI short.)"""

import pandas as pd
import pytest

from stages import benchmark

VARIANTS = {name: {"runtime": "onnxruntime", "model": f"{name}/model.onnx"} for name in ("a", "b", "c")}


@pytest.fixture
def calls(monkeypatch):
    """Every worker call, in order, each answering a distinct latency per thread count."""
    made = []

    def worker(spec, threads, image_size, b, channels_last):
        made.append(spec["model"].split("/")[0])
        n = len(made)
        return (
            {"param_count": 10}
            | {
                f"t{t}_{k}": float(n * 10 + t)
                for t in threads
                for k in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_img_s")
            }
            | {"peak_rss_mb": 100.0}
        )

    monkeypatch.setattr(benchmark, "worker", worker)
    monkeypatch.setattr(benchmark.os, "sync", lambda: None)
    return made


@pytest.mark.parametrize("warmup_rounds", [0, 2])
def test_warmup_rounds_run_every_variant_but_only_the_rounds_are_recorded(calls, warmup_rounds):
    b = {"rounds": 3, "warmup_rounds": warmup_rounds}
    rows, last = benchmark.run_rounds(VARIANTS, [1, 2], 64, b, seed=0, channels_last=False)
    assert len(calls) == (warmup_rounds + 3) * len(VARIANTS)
    for r in range(warmup_rounds + 3):  # each round measures every variant once
        assert sorted(calls[r * 3 : r * 3 + 3]) == sorted(VARIANTS)
    assert isinstance(rows, pd.DataFrame) and len(rows) == 3 * len(VARIANTS) * 2
    assert sorted(rows["round"].unique()) == [1, 2, 3] and set(rows["threads"]) == {1, 2}
    # the recorded rows are the calls after the warm-up ones: call k answered k * 10 + threads
    first = rows[(rows["round"] == 1) & (rows["threads"] == 1)].sort_values("position")
    assert list(first["latency_ms_p50"]) == [(warmup_rounds * 3 + i + 1) * 10 + 1.0 for i in range(3)]
    assert list(first["variant"]) == calls[warmup_rounds * 3 : warmup_rounds * 3 + 3]
    assert set(last) == set(VARIANTS) and all(v["param_count"] == 10 for v in last.values())


def test_the_order_is_shuffled_per_round_and_seeded(calls):
    b = {"rounds": 8, "warmup_rounds": 0}
    benchmark.run_rounds(VARIANTS, [1], 64, b, seed=0, channels_last=False)
    orders = [tuple(calls[i : i + 3]) for i in range(0, len(calls), 3)]
    assert len(set(orders)) > 1  # not the same order every round (3! = 6 orders, 8 rounds)
    again = list(calls)
    calls.clear()
    benchmark.run_rounds(VARIANTS, [1], 64, b, seed=0, channels_last=False)
    assert calls == again
