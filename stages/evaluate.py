"""evaluate: one variant on the shared test split, at an operating point chosen on validation.

    python -m stages.evaluate student_kd_int8_static_pc artifacts/variants/student_kd_int8_static_pc \
        data/prepared metrics/evaluate/student_kd_int8_static_pc.json plots/evaluate artifacts/predictions

Binary task: the threshold is chosen on validation defects by `evaluate.threshold_rule`
(highest: the highest that reaches `evaluate.target_recall`; lower_bound: the highest whose one-sided
95 % Clopper-Pearson lower bound of recall reaches it, see lib/thresholds); on test: recall, FNR, precision, F1, accuracy, AUROC, average precision, recall at
fixed false-alarm rates. Multi-class: argmax; accuracy, macro recall/F1/AUROC, per-class recall.
Both: bootstrap 95 % intervals and a breakdown by every attribute the dataset keeps, and the
validation metrics the select stage decides on (`val`: recall, FPR, AUROC; exact binomial intervals).
"""

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from stages.lib import data, errors, metrics, params, runtime
from stages.lib.metrics import thresholds
from stages.lib.outputs import write_json

log = logging.getLogger("evaluate")


def check(p):
    params.check_base(p["base"])
    ev = p["evaluate"]
    params.check_range("evaluate.target_recall", ev["target_recall"], 0, 1, lo_inclusive=False)
    params.check_int("evaluate.bootstrap", ev["bootstrap"], 100)
    params.check_choice("evaluate.threshold_rule", ev["threshold_rule"], set(thresholds.RULES))
    if not isinstance(ev["fixed_fpr_pct"], list):
        raise params.ParamError(f"evaluate.fixed_fpr_pct={ev['fixed_fpr_pct']!r}; expected a list like [1, 5]")
    for pct in ev["fixed_fpr_pct"]:
        params.check_range("evaluate.fixed_fpr_pct[]", pct, 0, 100, lo_inclusive=False, hi_inclusive=False)
    return ev


def test_split_hash(rows):
    """Identifies the test set by content (image hashes and labels), not by file names."""
    key = "\n".join(rows["sha256"].astype(str) + ":" + rows["label"].astype(str))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def binary(probs, labels, ev, seed):
    scores = {s: probs[s][:, 1] for s in probs}
    threshold, fallback = thresholds.choose(scores["val"], labels["val"], ev["target_recall"], ev["threshold_rule"])
    if fallback:
        log.warning(
            "threshold_rule=lower_bound: %d validation defects are too few for a 95 %% bound >= %s; "
            "threshold falls back to the lowest validation defect score",
            labels["val"].sum(),
            ev["target_recall"],
        )
    val = metrics.binary_metrics(scores["val"], labels["val"], threshold)
    y, s = labels["test"], scores["test"]
    pred = (s >= threshold).astype(int)
    result = {
        **metrics.binary_metrics(s, y, threshold),
        "target_recall": ev["target_recall"],
        "val_recall": val["recall"],
        "ap": metrics.average_precision(s, y),
        "threshold_rule": ev["threshold_rule"],
        "threshold_fallback": fallback,
        "threshold_exact": float(threshold),  # unrounded: the deployed bundle decides with this one
        "val": {**thresholds.operating_point(scores["val"], labels["val"], threshold), "auroc": val["auroc"]},
        "by_rule": by_rule(scores, labels, ev["target_recall"]),
    }
    result[metrics.pct_name("fpr_at_recall", ev["target_recall"])] = metrics.fpr_at_recall(s, y, ev["target_recall"])
    for pct in ev["fixed_fpr_pct"]:
        result[metrics.pct_name("recall_at_fpr", pct / 100)] = metrics.recall_at_fpr(s, y, pct / 100)
    names = metrics.binary_ci_names(ev["target_recall"], ev["fixed_fpr_pct"])
    ci = metrics.bootstrap_ci(y, pred, s, names, ev["bootstrap"], seed)
    return result, ci, pred, s


def by_rule(scores, labels, target_recall):
    """Every threshold rule's threshold and its validation and test operating points: the rule's effect."""
    out = {}
    for rule in thresholds.RULES:
        t, fallback = thresholds.choose(scores["val"], labels["val"], target_recall, rule)
        val, test = (thresholds.operating_point(scores[s], labels[s], t) for s in ("val", "test"))
        out[rule] = {
            "threshold": round(t, 6),
            "fallback": fallback,
            "val_recall": val["recall"],
            "val_recall_lower_bound": val["recall_lower_bound"],
            "val_fpr": val["fpr"],
            "recall": test["recall"],
            "recall_ci95": test["recall_ci95"],
            "fpr": test["fpr"],
        }
    return out


def multiclass(probs, labels, classes, ev, seed):
    """Argmax decision; `evaluate.threshold_rule` does not apply. `val.recall` is the macro recall."""
    y, p = labels["test"], probs["test"]
    pred = p.argmax(1)
    result = metrics.multiclass_metrics(p, y, classes)
    val = metrics.multiclass_metrics(probs["val"], labels["val"], classes)
    result["val"] = {"recall": val["macro_recall"], "accuracy": val["accuracy"], "auroc": val["macro_auroc"]}
    ci = metrics.bootstrap_ci(y, pred, p.max(1), metrics.MULTICLASS_CI, ev["bootstrap"], seed, len(classes))
    return result, ci, pred, p.max(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant")
    parser.add_argument("variant_dir", help="the quantize stage's folder: model file + variant.json (its runtime)")
    parser.add_argument("data_dir")
    parser.add_argument("metrics")
    parser.add_argument("plots_dir", help="<plots_dir>/{roc,pr,confusion}/<variant>.csv")
    parser.add_argument("predictions_dir", help="<predictions_dir>/<variant>.csv: one row per test image")
    args = parser.parse_args()
    p = params.load("base", "evaluate")
    ev = check(p)
    params.setup(p["base"])
    info = data.read_info(args.data_dir)
    classes, size, seed = info["classes"], p["base"]["image_size"], p["base"]["seed"]

    model_file, runtime_name, variant = runtime.read_variant(args.variant_dir)
    runner = runtime.load_runner(model_file, runtime_name, p["base"]["threads"], options=variant.get("runtime_options"))
    probs, labels = {}, {}
    for split in ("val", "test"):
        x, labels[split] = data.load_split_float(args.data_dir, split, size)
        probs[split] = runtime.predict(runner, x)

    if info["task"] == "binary":
        result, ci, pred, score = binary(probs, labels, ev, seed)
        curve_scores, curve_labels = score, labels["test"]
    else:
        result, ci, pred, score = multiclass(probs, labels, classes, ev, seed)
        # micro-averaged one-vs-rest curves: every (image, class) pair is one decision
        curve_scores, curve_labels = probs["test"].ravel(), np.eye(len(classes))[labels["test"]].ravel()
    rows = data.read_manifest(args.data_dir).query("split == 'test'").reset_index(drop=True)
    result.update({f"{k}_ci95": v for k, v in ci.items()})
    result["by"] = metrics.breakdown(rows, info["attributes"], labels["test"], pred, info["task"])
    result["task"] = info["task"]
    result["test_sha256"] = test_split_hash(rows)  # report refuses variants tested on different images
    write_json(args.metrics, result)

    plots = Path(args.plots_dir)
    for name, points in (("roc", metrics.roc_points), ("pr", metrics.pr_points)):
        (plots / name).mkdir(parents=True, exist_ok=True)
        points(curve_scores, curve_labels).to_csv(plots / name / f"{args.variant}.csv", index=False)
    (plots / "confusion").mkdir(parents=True, exist_ok=True)
    names = np.array(classes)
    pd.DataFrame({"actual": names[labels["test"]], "predicted": names[pred]}).to_csv(
        plots / "confusion" / f"{args.variant}.csv", index=False
    )
    out = Path(args.predictions_dir) / f"{args.variant}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"sha256": rows["sha256"], "label": labels["test"], "pred": pred, "score": score}).to_csv(
        out, index=False
    )
    primary = "recall" if info["task"] == "binary" else "macro_recall"
    log.info("%s: test %s %.3f %s", args.variant, primary, result[primary], ci.get(primary))


if __name__ == "__main__":
    errors.run(main, "evaluate")
