"""The whole pipeline on the real MVTec AD and NEU-DET layouts in ../shared (tiny profile).

Skipped with a reason when ../shared/data is absent. One epoch at 64x64: this checks that
every stage handles a binary data set with attributes and a multi-class one, not accuracy.
"""

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED
from tests.test_pipeline_e2e import TINY, copy_repo, dvc

# The data path is what is under test: two models x two recipes are enough for every stage to see the
# data set (distill and prune still train), and keep each run a few minutes.
SMALL = {
    "compare": {"models": ["teacher", "student_kd"], "recipes": ["torch_fp32", "int8_static_pc"]},
    "sparsify": {**TINY["sparsify"], "models": {}},
}
CASES = {
    "mvtec_ad": ({"dataset": "mvtec_ad", "root": str(SHARED / "data" / "mvtec_ad"), "max_images": 120}, "binary"),
    "neu": ({"dataset": "neu", "root": str(SHARED / "data" / "NEU-DET"), "max_images": 120}, "multiclass"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pipeline_runs_on_real_layout(name, tmp_path):
    prep, task = CASES[name]
    if not Path(prep["root"]).is_dir():
        pytest.skip(f"{prep['root']} not found: ../shared/data holds the real MVTec AD / NEU-DET layouts")
    repo = copy_repo(tmp_path, {**TINY, **SMALL, "prepare": {**TINY["prepare"], **prep}})
    dvc("repro", cwd=repo)

    info = json.loads((repo / "data/prepared/classes.json").read_text())
    assert info["task"] == task
    ev = json.loads((repo / "metrics/evaluate/student_kd_int8_static_pc.json").read_text())
    report = json.loads((repo / "metrics/report.json").read_text())
    if task == "binary":
        assert {"recall", "recall_ci95", "auroc_ci95", "ap", "recall_at_fpr_5pct"} <= set(ev)
        assert set(ev["by"]["defect_type"]) == {"good", "broken_large", "broken_small", "contamination"}
        assert "fpr_at_recall_95pct_delta_pt_ci_low" in report["variants"]["student_kd_int8_static_pc"]
        # a handful of validation defects: no 95 % lower bound reaches 0.95, so the rule falls back, flagged
        assert ev["threshold_fallback"] and ev["by_rule"]["lower_bound"]["fallback"]
    else:
        assert len(info["classes"]) == 6
        assert {"macro_recall", "macro_recall_ci95", "accuracy_ci95"} <= set(ev)
        assert set(ev["per_class_recall"]) == set(info["classes"])
        assert "macro_recall_delta_pt_ci_low" in report["variants"]["student_kd_int8_static_pc"]
    assert (repo / "REPORT.md").read_text().startswith("# Defect screening")
    select = json.loads((repo / "metrics/select.json").read_text())  # bundle + skew check on the real raw files
    assert select["skew"]["verdict_mismatches"] == 0 and (repo / "artifacts/deploy/model.onnx").is_file()
    assert len({json.loads(f.read_text())["test_sha256"] for f in (repo / "metrics/evaluate").glob("*.json")}) == 1
