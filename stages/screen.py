"""screen: run a deployment bundle on image files and write one verdict per image.

    python -m stages.screen artifacts/deploy line3/ extra.png --out verdicts.csv

Each file is decoded exactly as `prepare` and `evaluate` decode it (lib/deploy: the prepare stage's
decoder, RGB, bilinear resize, [0, 1]), scored in batches by the bundle's ONNX model in ONNX Runtime
(the evaluate/benchmark session settings), and written as one CSV row: path, sha256 of the file,
pixel_sha256 (the decoded pixels, as prepare's manifest), score (binary: the defect probability;
multi-class: the top class's probability) and verdict (binary: defect when score >= the bundle's
threshold, else good; multi-class: the top class). Folders are searched recursively for image files.

Unreadable or truncated files are skipped and listed (log and `<out>.skipped.csv`); the exit status
is then 2. An unknown bundle version, a model whose sha256 does not match deploy.json, a missing input
or no image at all stop it with a one-line message and exit status 1. It never imports torch.
"""

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.lib import deploy, runtime
from stages.lib.data.images import IMAGE_SUFFIXES, ImageDecodeError

log = logging.getLogger("screen")
EXIT_SKIPPED = 2


class InputError(ValueError):
    """Inputs that give nothing to screen (missing path, no image files)."""


def collect(inputs, files_from=None):
    """Files named, plus image files under folders (recursively, sorted), in the order given."""
    paths = [Path(line) for line in Path(files_from).read_text().splitlines() if line.strip()] if files_from else []
    files = []
    for path in [*map(Path, inputs), *paths]:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            files += [p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts)]
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"input {str(path)!r} does not exist")
    if not files:
        raise InputError(
            f"no image files in {[str(p) for p in inputs] + ([files_from] if files_from else [])}; "
            f"folders are searched for {sorted(IMAGE_SUFFIXES)}"
        )
    return files


def verdicts(probs, bundle):
    """(score, verdict) per row of class probabilities, by the bundle's decision rule."""
    classes = bundle["classes"]
    if bundle["task"] == "binary":
        scores = probs[:, 1]
        return [(float(s), classes[1] if s >= bundle["threshold"] else classes[0]) for s in scores]
    return [(float(p.max()), classes[int(p.argmax())]) for p in probs]


def screen(bundle, runner, files, batch_size):
    """Rows for readable files, skipped files, and timings (wall time of decode + inference, model time)."""
    size, max_side = bundle["input_size"], bundle["decoding"]["max_side"]
    rows, skipped, batch, pending = [], [], [], []
    model_s, start = 0.0, time.perf_counter()

    def flush():
        nonlocal model_s
        t = time.perf_counter()
        probs = runtime.softmax(runner(np.stack(batch)))
        model_s += time.perf_counter() - t
        for row, (score, verdict) in zip(pending, verdicts(probs, bundle), strict=True):
            rows.append({**row, "score": f"{score:.8f}", "verdict": verdict})
        batch.clear()
        pending.clear()

    for path in tqdm(files, desc="screen", unit="img", mininterval=2):
        try:
            data = path.read_bytes()
            x, pixel_sha = deploy.decode(data, size, max_side)
        except (ImageDecodeError, OSError) as e:
            reason = e.reason if isinstance(e, ImageDecodeError) else f"{type(e).__name__}: {e}"
            log.warning("skipped unreadable image %s: %s", path, reason)
            skipped.append({"path": str(path), "error": reason})
            continue
        batch.append(x)
        pending.append({"path": str(path), "sha256": deploy.sha256_bytes(data), "pixel_sha256": pixel_sha})
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return rows, skipped, {"seconds": time.perf_counter() - start, "model_seconds": model_s}


def write_csv(path, rows, fields):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="bundle folder (artifacts/deploy)")
    parser.add_argument("inputs", nargs="*", help="image files and/or folders")
    parser.add_argument("--out", required=True, help="verdicts CSV")
    parser.add_argument("--files-from", help="text file with one image path per line (in addition to inputs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: as benchmarked)")
    parser.add_argument("--summary", help="also write the counts and timings as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        bundle = deploy.read_bundle(args.bundle)
        files = collect(args.inputs, args.files_from)
    except (deploy.BundleError, InputError, OSError) as e:
        sys.exit(f"screen: {e}")
    if args.batch_size < 1:
        sys.exit(f"screen: --batch-size={args.batch_size}; expected an integer >= 1")
    threads = args.threads or bundle["benchmark"]["threads"]
    try:
        runner = runtime.OrtRunner(bundle["model_path"], threads)
    except Exception as e:  # ONNX Runtime raises its own types; the first line says what is wrong
        sys.exit(f"screen: ONNX Runtime cannot load {bundle['model_path']}: {str(e).strip().splitlines()[-1]}")

    rows, skipped, timing = screen(bundle, runner, files, args.batch_size)
    write_csv(args.out, rows, ["path", "sha256", "pixel_sha256", "score", "verdict"])
    skipped_csv = Path(args.out).with_suffix(".skipped.csv")
    if skipped:
        write_csv(skipped_csv, skipped, ["path", "error"])
    counts = {c: sum(r["verdict"] == c for r in rows) for c in bundle["classes"]}
    rate = len(rows) / timing["seconds"] if timing["seconds"] > 0 else float("nan")
    summary = {
        "variant": bundle["variant"],
        "files": len(files),
        "images": len(rows),
        "skipped": len(skipped),
        "verdicts": counts,
        "seconds": round(timing["seconds"], 3),
        "model_seconds": round(timing["model_seconds"], 3),
        "images_per_s": round(rate, 1),
        "threads": threads,
        "batch_size": args.batch_size,
        "torch_imported": "torch" in sys.modules,
    }
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    log.info(
        "%d images screened with %s in %.1f s (%.1f images/s incl. decoding): %s; %d unreadable skipped%s",
        len(rows),
        bundle["variant"],
        timing["seconds"],
        rate,
        counts,
        len(skipped),
        f" (listed in {skipped_csv})" if skipped else "",
    )
    if skipped:
        sys.exit(EXIT_SKIPPED)


if __name__ == "__main__":
    main()
