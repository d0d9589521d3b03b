"""select: pick the variant to deploy under constraints, write the bundle, and check it end to end.

    python -m stages.select metrics/benchmark.json plots/benchmark/rounds.csv metrics/evaluate data/prepared \
        artifacts/predictions artifacts/deploy metrics/select.json

Decides from validation metrics and the benchmark only (lib/selection: constraints `select.*`, rule
`select.objective`, see selection.OBJECTIVES); every variant is listed in metrics/select.json with what it
failed and by how much. Latency is judged at the resolution the benchmark has (lib/metrics/speed): at the
steadier thread count, and a variant is slower than the fastest only when their paired speed-up interval
over the benchmark rounds excludes 1x; variants that tie with the fastest are ranked on validation quality.
When none qualifies, the stage still succeeds so the report is written: metrics/select.json says so, with
the closest variant and the constraint that binds it, and the bundle holds deploy.json without a model (never
a stale one), which `screen` refuses in one line. The pick's test metrics are the honest estimate.

Then it checks the bundle the way a user runs it: `python -m stages.screen` in a fresh process (no
torch) on up to `select.screen_images` raw files of the data set (the test split first), which gives
the end-to-end images/s including decoding, and the skew check: on every test image, screen's score
must match evaluate's within 1e-5 and its verdict exactly, or the stage fails.
"""

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from stages import screen
from stages.lib import deploy, errors, params
from stages.lib.deploy import selection
from stages.lib.outputs import read_json, write_json

log = logging.getLogger("select")
SKEW_TOLERANCE = 1e-5
SCREEN_RUNS = 3  # screen's speed, each in a fresh process: the median run is reported (one run moved ~15 %)
TEST_KEYS = (
    "threshold",
    "recall",
    "fpr",
    "precision",
    "f1",
    "auroc",
    "ap",
    "tp",
    "fp",
    "fn",
    "tn",
    "n_images",
    "accuracy",
    "macro_recall",
    "macro_f1",
    "macro_auroc",
    "per_class_recall",
)


def git_revision():
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
            ).stdout.strip()
            != ""
        )
    except (OSError, subprocess.CalledProcessError):
        return {"revision": None, "dirty": None}
    return {"revision": rev, "dirty": dirty}


def test_metrics(ev):
    """The evaluate result on test, with its intervals: the honest estimate of the pick."""
    keep = {k: v for k, v in ev.items() if k in TEST_KEYS or k.endswith("_ci95") or "_at_" in k}
    return {**keep, "threshold_rule": ev.get("threshold_rule"), "threshold_fallback": ev.get("threshold_fallback")}


def run_screen(bundle_dir, files, work):
    """`python -m stages.screen` on `files` in a fresh process: (verdict rows, its summary)."""
    work.mkdir(parents=True, exist_ok=True)
    listing, out, summary = work / "files.txt", work / "verdicts.csv", work / "summary.json"
    listing.write_text("".join(f"{f}\n" for f in files))
    cmd = [
        sys.executable,
        "-m",
        screen.__name__,
        str(bundle_dir),
        "--files-from",
        str(listing),
        "--out",
        str(out),
        "--summary",
        str(summary),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"screen failed ({proc.returncode}) on the data set's own raw files:\n{proc.stderr[-3000:]}")
    return pd.read_csv(out, dtype={"score": float}), json.loads(summary.read_text())


def model_only(entry, threads, bench):
    """The benchmark's batch throughput of the deployed variant at screen's thread count (null where the benchmark
    did not measure that count), and at the benchmark's own."""
    measured = {1: entry.get("throughput_img_s_1t"), bench["threads"][-1]: entry["throughput_img_s"]}
    return {
        "model_only_throughput_img_s": measured.get(threads),
        "model_only_threads": threads,
        "model_only_batch_size": bench["batch_size"],
        "benchmark_threads": bench["threads"][-1],
        "benchmark_throughput_img_s": entry["throughput_img_s"],
    }


def skew(verdicts, test_rows, predictions, classes):
    """Screen vs evaluate on the test split: max |score difference| and verdict mismatches."""
    theirs = predictions.assign(path=test_rows["raw"].astype(str).to_numpy())
    both = theirs.merge(verdicts, on="path", suffixes=("_evaluate", "_screen"), validate="one_to_one")
    if len(both) != len(theirs):
        raise RuntimeError(f"screen scored {len(both)} of the {len(theirs)} test images")
    diff = (both["score_evaluate"] - both["score_screen"]).abs()
    mismatches = int((both["pred"].map(dict(enumerate(classes))) != both["verdict"]).sum())
    same_pixels = bool((both["sha256_evaluate"] == both["pixel_sha256"]).all())
    return {
        "images": len(both),
        "max_abs_score_diff": float(diff.max()),
        "verdict_mismatches": mismatches,
        "same_pixels": same_pixels,
        "tolerance": SKEW_TOLERANCE,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("benchmark", "rounds_csv", "evaluate_dir", "data_dir", "predictions_dir", "deploy_dir", "metrics"):
        parser.add_argument(name)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    p = params.load("select", "prepare")
    info = read_json(Path(args.data_dir) / "classes.json")
    sel = selection.check(p["select"], info["task"])

    bench = read_json(args.benchmark)
    evaluations = {f.stem: read_json(f) for f in Path(args.evaluate_dir).glob("*.json")}
    assessed = selection.assess(bench["variants"], evaluations, sel)
    rule = selection.OBJECTIVES[sel["objective"]]
    rounds = pd.read_csv(args.rounds_csv)
    chosen, timing = selection.decide(assessed, sel["objective"], bench["variants"], rounds, bench["threads"][-1])
    constraints = {k: sel[k] for k in selection.CONSTRAINTS}
    if chosen is None:
        message = selection.none_qualified_message(assessed, sel)
        log.warning("%s", message)
        deploy.write_empty_bundle(args.deploy_dir, message.splitlines()[0])
        write_json(
            args.metrics,
            {
                "selected": None,
                "rule": rule,
                "constraints": constraints,
                "closest": selection.closest(assessed),
                "timing": timing,
                "variants": assessed,
            },
        )
        return
    ev, entry = evaluations[chosen], bench["variants"][chosen]
    log.info("selected %s (%s; judged at %s thread(s))", chosen, rule, timing["threads"])

    meta = {
        "variant": chosen,
        "task": info["task"],
        "classes": info["classes"],
        "threshold": ev.get("threshold_exact"),
        "threshold_rule": ev.get("threshold_rule"),
        "input_size": bench["image_size"],
        "decoding": deploy.decoding_rules(bench["image_size"], p["prepare"]["max_side"], p["prepare"]["resize"]),
        "selection": {"rule": rule, "constraints": constraints},
        "validation": ev["val"],
        "test": test_metrics(ev),
        "benchmark": entry,
        "fingerprint": bench["fingerprint"],
        "params": p,
        "git": git_revision(),
    }
    bundle = deploy.write_bundle(args.deploy_dir, entry["model_file"], meta)

    manifest = pd.read_csv(Path(args.data_dir) / "manifest.csv")
    manifest["raw"] = deploy.raw_paths(manifest["source"], p["prepare"])
    order = manifest["split"].map({"test": 0, "val": 1, "train": 2})
    ordered = manifest.assign(order=order).sort_values("order", kind="stable")
    test_rows = ordered[ordered["split"] == "test"]
    files = ordered["raw"].iloc[: max(sel["screen_images"], len(test_rows))]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_screen(args.deploy_dir, files, Path(tmp) / str(i)) for i in range(SCREEN_RUNS)]
    verdicts, summary = sorted(runs, key=lambda run: run[1]["images_per_s"])[SCREEN_RUNS // 2]
    if not all(v.equals(verdicts) for v, _ in runs):
        raise RuntimeError("screen gave different verdicts or scores in two runs on the same files")
    predictions = pd.read_csv(Path(args.predictions_dir) / f"{chosen}.csv")
    check = skew(verdicts, test_rows, predictions, info["classes"])
    throughput = {
        **summary,
        "images_per_s_runs": [s["images_per_s"] for _, s in runs],  # in run order; images_per_s: the median run's
        **model_only(entry, summary["threads"], bench),
    }

    write_json(
        args.metrics,
        {
            "selected": chosen,
            "rule": rule,
            "constraints": constraints,
            "timing": timing,
            "test": test_metrics(ev),
            "validation": ev["val"],
            "model_sha256": bundle["model_sha256"],
            "screen": throughput,
            "skew": check,
            "variants": assessed,
        },
    )
    log.info(
        "screen: %d images at %.1f images/s incl. decoding (model only, benchmark, %d thread(s): %s img/s); skew on "
        "%d test images: max |d score| %.2g, %d verdicts differ",
        summary["images"],
        summary["images_per_s"],
        summary["threads"],
        throughput["model_only_throughput_img_s"],
        check["images"],
        check["max_abs_score_diff"],
        check["verdict_mismatches"],
    )
    if check["max_abs_score_diff"] > SKEW_TOLERANCE or check["verdict_mismatches"] or not check["same_pixels"]:
        sys.exit(f"select: training/serving skew: screen differs from evaluate on the test split: {check}")


if __name__ == "__main__":
    errors.run(main, "select")
