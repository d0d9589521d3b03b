"""evaluate: one variant on the shared test split, at a threshold chosen on validation.

    python -m stages.evaluate student_kd_int8 onnxruntime artifacts/quantize/student_kd/int8.onnx \
        data/prepared metrics/evaluate/student_kd_int8.json plots/evaluate
"""

import argparse
import hashlib
import logging
from pathlib import Path

from stages.lib import data, metrics, params, runtime
from stages.lib.outputs import write_json

log = logging.getLogger("evaluate")


def check(p):
    params.check_base(p["base"])
    ev = p["evaluate"]
    params.check_range("evaluate.target_recall", ev["target_recall"], 0, 1, lo_inclusive=False)
    return ev


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant")
    parser.add_argument("runtime", choices=runtime.RUNTIMES)
    parser.add_argument("model", help="model.pt (torch) or .onnx (onnxruntime)")
    parser.add_argument("data_dir")
    parser.add_argument("metrics")
    parser.add_argument("plots_dir", help="ROC and PR points go to <plots_dir>/{roc,pr}/<variant>.csv")
    args = parser.parse_args()
    p = params.load()
    ev = check(p)
    params.setup(p["base"])
    size = p["base"]["image_size"]

    runner = runtime.load_runner(args.model, args.runtime, p["base"]["threads"])
    scores, labels = {}, {}
    for split in ("val", "test"):
        x, y = data.load_split(args.data_dir, split, size)
        scores[split] = runtime.predict(runner, data.to_float(x).numpy())
        labels[split] = y.numpy()

    threshold = metrics.choose_threshold(scores["val"], labels["val"], ev["target_recall"])
    val = metrics.binary_metrics(scores["val"], labels["val"], threshold)
    test = metrics.binary_metrics(scores["test"], labels["test"], threshold)
    manifest = (Path(args.data_dir) / "manifest.csv").read_bytes()
    result = {
        **test,
        "target_recall": ev["target_recall"],
        "val_recall": val["recall"],
        "val_auroc": val["auroc"],
        "manifest_sha256": hashlib.sha256(manifest).hexdigest()[:16],  # proves every variant saw the same split
    }
    write_json(args.metrics, result)
    for name, points in (("roc", metrics.roc_points), ("pr", metrics.pr_points)):
        out = Path(args.plots_dir) / name / f"{args.variant}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        points(scores["test"], labels["test"]).to_csv(out, index=False)
    log.info("%s: threshold %.4f (val recall %.3f) -> test recall %.3f precision %.3f f1 %.3f auroc %.3f",
             args.variant, threshold, val["recall"], test["recall"], test["precision"], test["f1"], test["auroc"])  # fmt: skip


if __name__ == "__main__":
    main()
