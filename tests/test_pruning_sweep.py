"""The sweep section: pruned models matched to the unpruned student per recipe, paired deltas, first
ratio that is distinguishably worse, plot and markdown (synthetic scores, real bootstrap)."""

import numpy as np
import pytest

from stages.lib.report import comparison, sweep
from tests.test_report import GUARDS, bench, evaluated, predictions, rounds


@pytest.fixture
def evidence():
    """student_kd and three pruned ratios, each in two recipes; ranking quality drops with the ratio."""
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.3).astype(int)
    separation = {"student_kd": 0.45, "student_pruned_r10": 0.44, "student_pruned": 0.30, "student_pruned_r50": 0.1}
    preds, benches, lat = {}, {}, {}
    for i, (model, sep) in enumerate(separation.items()):
        score = np.clip(rng.normal(0.3 + sep * labels, 0.15), 0, 1)
        for recipe in ("ort_fp32", "int8"):
            v = f"{model}_{recipe}"
            noise = rng.normal(0, 0.002, 400) if recipe == "int8" else 0
            preds[v] = predictions(labels, np.clip(score + noise, 0, 1))
            lat[v] = (3.0 - 0.5 * i) / (3 if recipe == "int8" else 1)
            benches[v] = bench(lat[v], 5)
    preds["teacher_fp32"], lat["teacher_fp32"], benches["teacher_fp32"] = preds["student_kd_int8"], 10, bench(10, 20)
    return comparison.Evidence(
        {v: evaluated(p) for v, p in preds.items()}, benches, rounds(lat), preds, draws=300, seed=0, threads=2
    )


PRUNED = {
    "student_pruned": {"ratio": 0.3, "macs_before_m": 100.0, "macs_after_m": 50.0, "source_model": "student_kd"},
    "student_pruned_r10": {"ratio": 0.1, "macs_before_m": 100.0, "macs_after_m": 81.0, "source_model": "student_kd"},
    "student_pruned_r50": {"ratio": 0.5, "macs_before_m": 100.0, "macs_after_m": 25.0, "source_model": "student_kd"},
    "student_sparse24": {
        "pattern": "2:4",
        "sparsity_all_weights": 0.45,
        "size_dense_mb": 13.0,
        "size_deflate_mb": 9.0,
        "size_bitmask_mb": 7.5,
        "val_auroc": 0.9,
        "gpu_2_4": {"skipped": "no CUDA device"},
    },
}


def test_variants_split_into_model_and_recipe_by_the_longest_model_name():
    models = ["student_pruned", "student_pruned_r10", "student_kd"]
    assert sweep.split_variant("student_pruned_r10_int8", models) == ("student_pruned_r10", "int8")
    assert sweep.split_variant("student_pruned_ort_fp32", models) == ("student_pruned", "ort_fp32")
    assert sweep.split_variant("teacher_fp32", models) is None


def test_sweep_table_pairs_each_ratio_with_the_unpruned_student_in_its_recipe(evidence):
    table = sweep.sweep_table(evidence, PRUNED, GUARDS)
    assert sorted(table["recipe"].unique()) == ["int8", "ort_fp32"] and len(table) == 8  # 4 ratios x 2 recipes
    int8 = table[table["recipe"] == "int8"].set_index("ratio_pct")
    assert list(int8.index) == [0, 10, 30, 50] and int8.loc[0, "baseline"] == "student_kd_int8"
    assert int8.loc[0, "macs_m"] == 100.0 and int8.loc[50, "macs_m"] == 25.0
    assert int8.loc[0, "auroc_delta_pt"] == 0.0  # the baseline against itself
    assert int8.loc[10, "auroc_delta_pt_verdict"] == "same" and int8.loc[50, "auroc_delta_pt_verdict"] == "worse"
    first = sweep.first_degraded(table, GUARDS)
    assert first == {"int8": 30, "ort_fp32": 30}


def test_plot_and_markdown(evidence, tmp_path):
    table = sweep.sweep_table(evidence, PRUNED, GUARDS)
    sweep.plot(table, "auroc", tmp_path / "sweep.png")
    sweep.plot(table.iloc[0:0], "auroc", tmp_path / "empty.png")
    assert (tmp_path / "sweep.png").stat().st_size > 10_000 and (tmp_path / "empty.png").exists()
    text = sweep.markdown(table, sweep.first_degraded(table, GUARDS), GUARDS, sweep.sparse_rows(PRUNED), "s.png")
    assert "first distinguishably worse at **30 %**" in text and "![quality vs MACs and latency](s.png)" in text
    assert "compute every zero" in text and "| student_sparse24 | 2:4 | 45.0 |" in text and "no GPU" in text
