"""screen: run a deployment bundle on image files and write one verdict per image.

    python -m stages.screen artifacts/deploy line3/ extra.png --out verdicts.csv

Each file is decoded exactly as `prepare` and `evaluate` decode it (lib/deploy: the prepare stage's
decoder, made square by the bundle's resize mode (squash, pad or crop), RGB, bilinear resize, [0, 1]), scored
in batches by the bundle's ONNX model in the runtime select picked it in (ONNX Runtime or OpenVINO:
deploy.json `benchmark.runtime`, with its runtime options; the model's threads as benchmarked, leaving a core
for decoding), and written as one CSV row: path, sha256 of the file,
pixel_sha256 (the decoded pixels, as prepare's manifest), score (binary: the defect probability;
multi-class: the top class's probability) and verdict (binary: defect when score >= the bundle's
threshold, else good; multi-class: the top class). Folders are searched recursively for image files.
Rows keep the input order.

Decoding runs in `--workers` threads (PIL releases the GIL while it decodes and resizes) while the model
scores the previous batch; at most two batches of decoded images wait, so memory stays bounded whatever
the number of files. `--workers 0` decodes in the main thread, one file after the other; the bytes are
the same either way. With decoding threads, ONNX Runtime's threads do not spin-wait between operators (the
benchmark's setting): spinning threads take the CPU time the decoders need (docs/deploy.md).

Exit status: 0 done; 2 a user error, printed as one line `screen: ...` (a bad option, a missing, empty or
damaged bundle, a model its runtime cannot load, a missing input, no image at all); 3 done, but unreadable
or truncated files were skipped (listed in the log and in `<out>.skipped.csv`). It never imports torch.
"""

import argparse
import csv
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.lib import deploy, errors, runtime
from stages.lib.data.images import IMAGE_SUFFIXES, ImageDecodeError
from stages.lib.outputs import write_json

log = logging.getLogger("screen")
EXIT_SKIPPED = 3  # finished, but some files could not be read (2 is a user error, as in every stage)
PREFETCH_BATCHES = 2  # decoded batches that may wait for the model: enough to keep it busy, bounded memory


def collect(inputs, files_from=None):
    """Files named, plus image files under folders (recursively, sorted), in the order given."""
    paths = [Path(line) for line in read_list(files_from).splitlines() if line.strip()] if files_from else []
    files = []
    for path in [*map(Path, inputs), *paths]:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            files += [p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts)]
        elif path.is_file():
            files.append(path)
        else:
            raise errors.MissingInputError(f"input {str(path)!r} does not exist")
    if not files:
        raise errors.InputError(
            f"no image files in {[str(p) for p in inputs] + ([files_from] if files_from else [])}; "
            f"folders are searched for {sorted(IMAGE_SUFFIXES)}"
        )
    return files


def read_list(path):
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise errors.InputError(
            f"--files-from {path}: {errors.reason(e)}; expected a text file, one path a line"
        ) from e


def verdicts(probs, bundle):
    """(score, verdict) per row of class probabilities, by the bundle's decision rule."""
    classes = bundle["classes"]
    if bundle["task"] == "binary":
        scores = probs[:, 1]
        return [(float(s), classes[1] if s >= bundle["threshold"] else classes[0]) for s in scores]
    return [(float(p.max()), classes[int(p.argmax())]) for p in probs]


def load(path, size, max_side, resize="squash"):
    """One file -> (row, model input, decoding CPU seconds); row has `error` and input is None if unreadable."""
    t = time.thread_time()
    try:
        data = path.read_bytes()
        x, pixel_sha = deploy.decode(data, size, max_side, name=path, resize=resize)
    except (ImageDecodeError, OSError) as e:
        reason = e.reason if isinstance(e, ImageDecodeError) else f"{type(e).__name__}: {e}"
        return {"path": str(path), "error": reason}, None, time.thread_time() - t
    row = {"path": str(path), "sha256": deploy.sha256_bytes(data), "pixel_sha256": pixel_sha}
    return row, x, time.thread_time() - t


def decoded(files, decode_one, workers, window):
    """decode_one(file) for every file, in input order; with workers, up to `window` files ahead in threads."""
    if workers == 0:
        yield from map(decode_one, files)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        ahead, todo = deque(), iter(files)
        for f in todo:
            ahead.append(pool.submit(decode_one, f))
            if len(ahead) >= window:
                break
        while ahead:
            result = ahead.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append(pool.submit(decode_one, nxt))
            yield result


def screen(bundle, runner, files, batch_size, workers=0):
    """Rows for readable files, skipped files, and timings: wall time; time in the model; decoding CPU
    time summed over the decoders; time the model waited for decoded images."""
    size, max_side, resize = bundle["input_size"], bundle["decoding"]["max_side"], deploy.resize_mode(bundle)
    rows, skipped, batch, pending = [], [], [], []
    t = {"model_seconds": 0.0, "decode_seconds": 0.0, "wait_seconds": 0.0}
    start = time.perf_counter()

    def flush():
        t0 = time.perf_counter()
        probs = runtime.softmax(runner(np.stack(batch)))
        t["model_seconds"] += time.perf_counter() - t0
        for row, (score, verdict) in zip(pending, verdicts(probs, bundle), strict=True):
            rows.append({**row, "score": f"{score:.8f}", "verdict": verdict})
        batch.clear()
        pending.clear()

    results = decoded(files, lambda f: load(f, size, max_side, resize), workers, PREFETCH_BATCHES * batch_size)
    bar = tqdm(total=len(files), desc="screen", unit="img", mininterval=2)
    while True:
        t0 = time.perf_counter()
        row, x, cpu = next(results, (None, None, 0.0))
        t["wait_seconds"] += time.perf_counter() - t0
        if row is None:
            break
        t["decode_seconds"] += cpu
        bar.update()
        if x is None:
            log.warning("skipped unreadable image %s: %s", row["path"], row["error"])
            skipped.append(row)
            continue
        batch.append(x)
        pending.append(row)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    return rows, skipped, {"seconds": time.perf_counter() - start, **t}


def write_csv(path, rows, fields):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is a UserError: one line `screen: ...` and exit status 2."""

    def error(self, message):
        raise errors.UserError(f"{message} (python -m stages.screen --help lists the options)")


def parse(argv=None):
    parser = Parser(
        prog="python -m stages.screen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle", help="bundle folder (artifacts/deploy)")
    parser.add_argument("inputs", nargs="*", help="image files and/or folders")
    parser.add_argument("--out", required=True, help="verdicts CSV")
    parser.add_argument("--files-from", help="text file with one image path per line (in addition to inputs)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32, as benchmarked)")
    parser.add_argument(
        "--threads", type=int, help="the model's threads (default: as benchmarked, leaving a core for decoding)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="decoding threads; 0: in the main thread (default: one per core, at most 8)",
    )
    parser.add_argument("--summary", help="also write the counts, settings and timings as JSON here")
    args = parser.parse_args(argv)
    for name, low in (("batch_size", 1), ("threads", 1), ("workers", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')}={value}; expected an integer >= {low}")
    for name in ("out", "summary"):
        if getattr(args, name) and Path(getattr(args, name)).is_dir():
            parser.error(f"--{name}={getattr(args, name)} is a folder; expected a file name")
    return args


def default_threads(benchmarked):
    """The model's threads: as benchmarked, but leaving a core for decoding (2 cores: 1 + 1 decoder screened 8-15 %
    more images/s than 2 + 1 in paired runs, the model no longer sharing its cores with the decoder)."""
    return max(1, min(benchmarked, (os.cpu_count() or 1) - 1))


def default_workers():
    """Decoders: one per core, at most 8 (8 outpace any model here), sharing the cores with the model's threads.
    Where decoding is the slower side they take what the model leaves; where the model is, they wait on the bounded
    queue. On 2 cores, fresh runs of 1,000 ELPV PNGs, the two settings alternating (median of 3 each): the deployed
    INT8 model (0.46 ms an image against 1.13 ms of decoding) screened 12 % more images/s with 2 decoders than with
    1; three FP32 models slower than decoding, 0.4-1.5 % fewer."""
    return min(8, max(1, os.cpu_count() or 1))


def main(argv=None):
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    bundle = deploy.read_bundle(args.bundle)
    try:
        files = collect(args.inputs, args.files_from)
    except errors.UserError:
        raise
    except OSError as e:  # a folder that cannot be listed
        raise errors.InputError(f"cannot list the inputs: {errors.reason(e)}") from e
    threads = args.threads or default_threads(bundle["benchmark"]["threads"])
    workers = default_workers() if args.workers is None else args.workers
    name = bundle["benchmark"].get("runtime", "onnxruntime")  # the runtime select benchmarked and picked
    if name not in deploy.DEPLOYABLE:
        raise deploy.BundleError(f"deploy.json: runtime {name!r} is not one screen runs; expected {deploy.DEPLOYABLE}")
    options = dict(bundle["benchmark"].get("runtime_options") or {})
    if name == "onnxruntime" and workers:  # ORT's spinning threads would take the decoders' CPU time
        options["spinning"] = False
    try:
        runner = runtime.load_runner(bundle["model_path"], name, threads, options=options)
    except errors.UserError:
        raise
    except Exception as e:  # the runtimes raise their own types; the last line says what is wrong
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise errors.InputError(f"{name} cannot load {bundle['model_path']}: {reason}") from e

    rows, skipped, timing = screen(bundle, runner, files, args.batch_size, workers)
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
        "images_per_s": round(rate, 1),
        **{k: round(v, 3) for k, v in timing.items()},
        "threads": threads,
        "runtime": name,
        "runtime_settings": runner.settings,
        "batch_size": args.batch_size,
        "workers": workers,
        "prefetch_images": PREFETCH_BATCHES * args.batch_size if workers else 0,
        "cpu_count": os.cpu_count(),
        "torch_imported": "torch" in sys.modules,
    }
    if args.summary:
        write_json(args.summary, summary)
    log.info(
        "%d images screened with %s in %.1f s (%.1f images/s incl. decoding; %d decoders, %d %s threads, "
        "%.1f s in the model): %s; %d unreadable skipped%s",
        len(rows),
        bundle["variant"],
        timing["seconds"],
        rate,
        workers,
        threads,
        name,
        timing["model_seconds"],
        counts,
        len(skipped),
        f" (listed in {skipped_csv})" if skipped else "",
    )
    if skipped:
        sys.exit(EXIT_SKIPPED)


if __name__ == "__main__":
    errors.run(main, "screen")
