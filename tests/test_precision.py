"""The 'Which precision?' section: every recipe paired with its model's ORT FP32 twin, and the PTQ-hurt rule."""

import numpy as np

from stages.lib.report import comparison, precision
from tests.test_report import GUARDS, bench, evaluated, predictions, rounds


def test_each_recipe_is_paired_with_its_own_ort_fp32_and_ptq_hurt_comes_from_validation():
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.3).astype(int)
    good = np.clip(rng.normal(0.3 + 0.45 * labels, 0.15), 0, 1)
    scores = {
        "teacher_torch_fp32": good,
        "teacher_ort_fp32": good,
        "teacher_int8_static_pc": np.clip(good + rng.normal(0, 0.004, 400), 0, 1),  # INT8: same ranking
        "teacher_int8_static_pt": np.clip(rng.normal(0.45 + 0.1 * labels, 0.15), 0, 1),  # collapsed
    }
    preds = {v: predictions(labels, s) for v, s in scores.items()}
    lat = {
        "teacher_torch_fp32": 20.0,
        "teacher_ort_fp32": 10.0,
        "teacher_int8_static_pc": 4.0,
        "teacher_int8_static_pt": 4.0,
    }
    ev = comparison.Evidence(
        {v: evaluated(p) for v, p in preds.items()},
        {v: bench(ms, 10) for v, ms in lat.items()},
        rounds(lat),
        preds,
        draws=300,
        seed=0,
        threads=2,
    )
    table = comparison.build_table(ev, "teacher_torch_fp32")
    quantized = {
        "teacher_int8_static_pc": {"kind": "ort_static", "ptq_hurt": False, "val_auroc_delta_pt": -0.2},
        "teacher_int8_static_pt": {"kind": "ort_static", "ptq_hurt": True, "val_auroc_delta_pt": -21.0},
    }
    rows = precision.rows(
        ev,
        table,
        ["teacher"],
        ["torch_fp32", "ort_fp32", "int8_static_pc", "int8_static_pt", "fp16"],
        "teacher_torch_fp32",
        GUARDS,
        quantized,
    )
    by = {r["recipe"]: r for r in rows}
    assert list(by) == ["torch_fp32", "ort_fp32", "int8_static_pc", "int8_static_pt"]  # fp16 absent: left out
    assert "auroc_vs_fp32_pt" not in by["ort_fp32"]  # the twin is not paired with itself
    assert (
        by["int8_static_pc"]["speedup_vs_fp32_x"]
        == comparison.Evidence.compare(ev, "teacher_int8_static_pc", "teacher_ort_fp32")["speedup_x"]
    )
    assert 2.2 < by["int8_static_pc"]["speedup_vs_fp32_x"] < 2.8 and by["int8_static_pc"]["speedup_vs_reference_x"] > 4
    assert by["int8_static_pc"]["auroc_vs_fp32_verdict"] == "same"
    assert by["int8_static_pt"]["auroc_vs_fp32_verdict"] == "worse"
    assert by["int8_static_pt"]["ptq_hurt"] and not by["int8_static_pc"]["ptq_hurt"]

    text = precision.section(rows, "teacher_torch_fp32", GUARDS, 1.0)
    assert text.startswith("## Which precision?") and "**teacher**" in text
    assert "Hurt: `teacher_int8_static_pt` (AUROC -21.0 pt)" in text
    assert f"{by['int8_static_pc']['speedup_vs_fp32_x']:.2f}x" in text  # numbers come from the rows
    report = precision.insert("# R\n\n## Caveats\n\n- x\n", text)
    assert report.index("## Which precision?") < report.index("## Caveats")

    # accuracy-controlled INT8 lists what it kept in float, and says when it did not fit
    auto = {
        "kind": "ort_auto",
        "ptq_hurt": False,
        "auto_fit": True,
        "fp32_layers_kept": ["conv_a"],
        "fp32_macs_pct": 6.5,
    }
    rows = precision.rows(
        ev, table, ["teacher"], ["int8_static_pc"], "teacher_torch_fp32", GUARDS, {"teacher_int8_static_pc": auto}
    )
    assert "- `teacher_int8_static_pc`: `conv_a`, 6.5 % of MACs." in precision.section(rows, "r", GUARDS, 1.0)
    auto |= {"auto_fit": False, "fp32_layers_kept": [], "fp32_macs_pct": 0.0}
    rows = precision.rows(
        ev, table, ["teacher"], ["int8_static_pc"], "teacher_torch_fp32", GUARDS, {"teacher_int8_static_pc": auto}
    )
    text = precision.section(rows, "r", GUARDS, 1.0)
    assert "`: nothing (**did not fit**" in text
