"""The whole pipeline on the real MVTec AD and NEU-DET layouts in ../shared (tiny profile).

Skipped with a reason when ../shared is absent. One epoch at 64x64: this checks that every stage
handles a binary data set with attributes and a multi-class one, not accuracy. The MVTec AD run also
carries README "Model families" through `dvc repro` (one pipeline run for both, to keep CI short): a
ViT-Tiny teacher from a local file (position embedding resampled to 64 px), a MobileOne-S0 student from
its fused checkpoint (trained unfused, saved fused) and the ViT itself pruned (`prune.source=teacher`),
each quantized with its family's INT8 recipe.
"""

import json
from pathlib import Path

import onnx
import pytest
import yaml

from stages.lib import models, quantization
from stages.lib.models import reparam
from stages.lib.quantization import recipes
from tests.conftest import SHARED
from tests.test_pipeline_e2e import TINY, copy_repo, dvc

WEIGHTS = SHARED / "weights"
VIT = WEIGHTS / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
MOBILEONE = WEIGHTS / "mobileone_s0.reparam_in1k.safetensors"
# The data path is what is under test: one model in two recipes is enough for quantize, evaluate, benchmark,
# select and report to see the data set (every model still trains and prune still runs), and keeps each run short.
SMALL = {
    "compare": {"models": ["student_kd"], "recipes": ["torch_fp32", "int8_static_pc"], "openvino": []},
    "report": {"reference": "student_kd_torch_fp32"},
    "sparsify": {**TINY["sparsify"], "models": {}},
    "quantize": {**TINY["quantize"], "openvino": []},
}
FAMILIES = {
    "finetune_teacher": {"model": "vit_tiny_patch16_224", "weights": str(VIT)},
    "train_student": {"model": "mobileone_s0", "weights": str(MOBILEONE)},
    "prune": {"epochs": 1, "source": "teacher", "ratio": 0.34, "scope": "uniform"},  # greedy allocates CNN stages
    "compare": {
        "models": ["teacher", "student", "student_kd", "student_pruned"],
        "recipes": ["int8_static_pc"],
        "openvino": [],
    },
    "report": {"reference": "teacher_int8_static_pc"},
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
    families = name == "mvtec_ad"
    if families and not (VIT.is_file() and MOBILEONE.is_file()):
        pytest.skip(f"ViT-Tiny / MobileOne-S0 weights not found in {WEIGHTS} (../shared is optional)")
    # NEU: uniform pruning, no greedy search (it scores cuts by the logits' KL, blind to the number of classes; the
    # ELPV e2e run and tests/test_pruning.py run it)
    uniform = {"prune": {**TINY["prune"], "scope": "uniform"}}
    overrides = {**TINY, **SMALL, **(FAMILIES if families else uniform), "prepare": {**TINY["prepare"], **prep}}
    repo = copy_repo(tmp_path, overrides)
    dvc("repro", cwd=repo)

    info = json.loads((repo / "data/prepared/classes.json").read_text())
    assert info["task"] == task
    variant = "student_kd_int8_static_pc"
    ev = json.loads((repo / f"metrics/evaluate/{variant}.json").read_text())
    report = json.loads((repo / "metrics/report.json").read_text())
    if task == "binary":
        assert {"recall", "recall_ci95", "auroc_ci95", "ap", "recall_at_fpr_5pct"} <= set(ev)
        assert set(ev["by"]["defect_type"]) == {"good", "broken_large", "broken_small", "contamination"}
        assert "fpr_at_recall_95pct_delta_pt_ci_low" in report["variants"][variant]
        # a handful of validation defects: no 95 % lower bound reaches 0.95, so the rule falls back, flagged
        assert ev["threshold_fallback"] and ev["by_rule"]["lower_bound"]["fallback"]
    else:
        assert len(info["classes"]) == 6
        assert {"macro_recall", "macro_recall_ci95", "accuracy_ci95"} <= set(ev)
        assert set(ev["per_class_recall"]) == set(info["classes"])
        assert "macro_recall_delta_pt_ci_low" in report["variants"][variant]
    assert (repo / "REPORT.md").read_text().startswith("# Defect screening")
    select = json.loads((repo / "metrics/select.json").read_text())  # bundle + skew check on the real raw files
    assert select["skew"]["verdict_mismatches"] == 0 and (repo / "artifacts/deploy/model.onnx").is_file()
    assert len({json.loads(f.read_text())["test_sha256"] for f in (repo / "metrics/evaluate").glob("*.json")}) == 1
    assert set(report["variants"]) == {
        f"{m}_{r}" for m in overrides["compare"]["models"] for r in overrides["compare"]["recipes"]
    }
    if families:
        check_families(repo)


def check_families(repo):
    """The ViT teacher, the MobileOne student and the pruned ViT, each with its family's knobs and INT8 ops."""
    fams = yaml.safe_load((repo / "params.yaml").read_text())["families"]
    teacher_metrics = json.loads((repo / "metrics/finetune_teacher.json").read_text())
    assert teacher_metrics["adapted_to_input"]["pos_embed"] == {
        "from_grid": [14, 14],
        "to_grid": [4, 4],
        "method": "bicubic",
    }
    assert teacher_metrics["lr"] == fams["transformer"]["lr"]  # train.lr auto: each family its own
    student_metrics = json.loads((repo / "metrics/train_student.json").read_text())
    assert student_metrics["reparameterized"] is True and student_metrics["lr"] == fams["cnn"]["lr"]

    teacher, _ = models.load(repo / "artifacts/teacher/model.pt")
    pruned, card = models.load(repo / "artifacts/student_pruned/model.pt")
    assert card["pruned"]["source_model"] == "teacher"
    assert card["pruned"]["importance"] == fams["transformer"]["prune_importance"]
    assert pruned.net.blocks[0].attn.num_heads == teacher.net.blocks[0].attn.num_heads - 1  # one of 3 heads gone
    student, _ = models.load(repo / "artifacts/student/model.pt")
    assert reparam.is_fused(student.net)  # saved, exported and quantized fused
    student_onnx = repo / "artifacts/variants/student_int8_static_pc/model.onnx"
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(student_onnx)).graph.node}
    assert "Conv" in set(quantization.int8_nodes(student_onnx).values())
    for model in ("teacher", "student_pruned"):  # transformers: the ViT-safe op types only
        int8 = quantization.int8_nodes(repo / f"artifacts/variants/{model}_int8_static_pc/model.onnx")
        assert int8 and set(int8.values()) <= set(recipes.VIT_SAFE_OPS)
