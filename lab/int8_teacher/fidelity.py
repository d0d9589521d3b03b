"""Could a validation-only rule have caught the teacher's INT8 loss on test? (lab study int8_teacher)

On the default run the all-INT8 teacher (`teacher_int8_auto`: int8_auto kept no layer in float, its paired
validation AUROC delta was -0.18 pt) scored AUROC -0.60 pt [-1.21, -0.03] against its FP32 twin on test. Three
questions, every model of the default run, each against its own ONNX Runtime FP32 twin:

1. Is the teacher's INT8 model less faithful to its FP32 than the students' INT8 models are to theirs, by measures
   that need no labels and use every validation image (logit SQNR; the share of (defect, good) pairs whose order
   INT8 flips), so a label-free validation rule could single it out?
2. How does an AUROC delta arise from flipped pairs? AUROC is the share of (defect, good) pairs ranked right, so
   its change is (pairs INT8 puts right - pairs it puts wrong) / pairs, exact up to tied scores: the net
   of the flips.
3. Does more calibration data (128, the default; 300, NNCF's default subset; 1024) make INT8 more faithful?

Reads the default run's artifacts (artifacts/variants, data/prepared: `dvc repro`, or `dvc checkout` from a cache
that holds them) and metrics/quantize; writes OUT/summary.json. Run from the repository root:

    python -m lab.int8_teacher.fidelity OUT
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from stages.lib import data, metrics, params, quantization, runtime
from stages.lib.quantization import recipes
from stages.lib.quantization.sensitivity import sqnr_db

MODELS = ["teacher", "student", "student_kd", "student_pruned"]
CALIBRATION = [128, 300, 1024]


def logits(path, x, threads):
    run = runtime.load_runner(path, "onnxruntime", threads)
    return np.concatenate([run(np.ascontiguousarray(x[i : i + 64])) for i in range(0, len(x), 64)])


def compare(ref, new, y, draws, seed):
    """Paired AUROC delta (points, with its bootstrap interval), logit SQNR and the pair flips behind the delta."""
    p_ref, p_new = runtime.softmax(ref)[:, 1], runtime.softmax(new)[:, 1]
    a, b = ({"pred": (p > 0.5).astype(int), "score": p} for p in (p_new, p_ref))
    ci = metrics.paired_delta_ci(a, b, y, ["auroc"], draws, seed)["auroc"]
    order_ref = p_ref[y == 1][:, None] - p_ref[y == 0][None]  # > 0: the defect ranked above the good image
    order_new = p_new[y == 1][:, None] - p_new[y == 0][None]
    right, wrong = (order_ref <= 0) & (order_new > 0), (order_ref > 0) & (order_new <= 0)
    auroc = [roc_auc_score(y, p) for p in (p_ref, p_new)]
    return {
        "auroc_fp32": round(auroc[0], 4),
        "auroc_int8": round(auroc[1], 4),
        "auroc_delta_pt": round(100 * (auroc[1] - auroc[0]), 2),
        "auroc_delta_pt_ci95": [round(100 * v, 2) for v in ci],
        "logit_sqnr_db": round(sqnr_db([ref], [new]), 2),
        "pairs_flipped_pct": round(100 * float((right | wrong).mean()), 3),
        "pairs_put_wrong_pct": round(100 * float(wrong.mean()), 3),
        "pairs_put_right_pct": round(100 * float(right.mean()), 3),
    }


def main(out):
    p = params.load("base", "evaluate")
    threads, seed, draws = p["base"]["threads"], p["base"]["seed"], p["evaluate"]["bootstrap"]
    size = p["base"]["image_size"]
    splits = {s: data.load_split_float("data/prepared", s, size) for s in ("val", "test")}
    x_train, _ = data.load_split_float("data/prepared", "train", size, limit=max(CALIBRATION))
    rows, calibration = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            fp32 = f"artifacts/variants/{model}_ort_fp32/model.onnx"
            shipped = f"artifacts/variants/{model}_int8_auto/model.onnx"
            auto = json.loads(Path(f"metrics/quantize/{model}_int8_auto.json").read_text())
            for split, (x, y) in splits.items():
                row = compare(logits(fp32, x, threads), logits(shipped, x, threads), y, draws, seed)
                rows.append({"model": model, "split": split, "fp32_layers": auto["auto_fp32_layers"], **row})
                print(rows[-1], flush=True)
            x, y = splits["val"]
            ref = logits(fp32, x, threads)
            opts = recipes.static_options(auto["settings"])  # int8_auto's all-INT8 start, as resolved on this CPU
            for n in CALIBRATION:
                path = quantization.quantize_static_qdq(fp32, Path(tmp) / f"{model}_{n}.onnx", x_train[:n], **opts)
                row = compare(ref, logits(path, x, threads), y, draws, seed)
                calibration.append({"model": model, "calibration_images": n, **row})
                print(calibration[-1], flush=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    summary = {"shipped_int8_auto": rows, "all_int8_by_calibration": calibration, "cpu": recipes.cpu_int8_features()}
    Path(out, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
