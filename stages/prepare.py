"""prepare: load a real dataset, label it, split it train/val/test once, write images + manifest.

python -m stages.prepare data/prepared metrics/prepare.json

Writes data/prepared/{images/, manifest.csv, classes.json}; exact duplicate images always share a split, and so
does every group of prepare.group_by (frames of one sequence, views of one part). prepare.resize says how a
non-square image becomes square (squash, pad or crop); the PNGs are written that way.
"""

import argparse
import logging
from pathlib import Path

from stages.lib import data, errors, params
from stages.lib.data import datasets, groups, images, splitting
from stages.lib.outputs import write_json

log = logging.getLogger("prepare")
MIN_TRAIN_PER_CLASS = 10  # below this a class is too few to learn; the tiny test profiles keep 14 or more


def check(p):
    params.check_base(p["base"])
    prep = p["prepare"]
    params.check_choice("prepare.dataset", prep["dataset"], set(datasets.DATASETS))
    params.check_range("prepare.defect_threshold", prep["defect_threshold"], 0, 1, lo_inclusive=False)
    params.check_range("prepare.val_fraction", prep["val_fraction"], 0, 1, lo_inclusive=False, hi_inclusive=False)
    params.check_range("prepare.test_fraction", prep["test_fraction"], 0, 1, lo_inclusive=False, hi_inclusive=False)
    val, test = prep["val_fraction"], prep["test_fraction"]
    train = max(round(1 - val - test, 6), 0)
    if train < max(val, test):  # 0.8 + 0.15 trained on 4 of 80 images without a word
        raise params.ParamError(
            f"prepare.val_fraction={val} + prepare.test_fraction={test} leave {train:.0%} of the images for "
            f"training; expected the training split to be the largest (1 - val - test >= each of them)"
        )
    params.check_int("prepare.max_images", prep["max_images"], 0)
    for key in ("root", "good_class"):
        if prep[key] is not None and not isinstance(prep[key], str):
            raise params.ParamError(f"prepare.{key}={prep[key]!r} is not allowed; expected a string or null")
    cats = prep["categories"]
    if cats is not None and not (isinstance(cats, list) and cats and all(isinstance(c, str) for c in cats)):
        raise params.ParamError(f"prepare.categories={cats!r} is not allowed; expected a list of names or null (all)")
    params.check_choice("prepare.on_bad_image", prep["on_bad_image"], {"skip", "error"})
    if prep["max_side"] is not None:
        params.check_int("prepare.max_side", prep["max_side"], p["base"]["image_size"])
    groups.parse(prep["group_by"])  # the data-dependent checks run before decoding (groups.group_keys)
    params.check_choice("prepare.resize", prep["resize"], set(images.RESIZE_MODES))
    return prep


def split_counts(manifest, classes):
    """Images per split and per split and class; with groups (prepare.group_by) also groups per split."""
    grouped = "group" in manifest.columns
    counts = {"n_images": len(manifest), **({"n_groups": manifest["group"].nunique()} if grouped else {})}
    for split in data.SPLITS:
        rows = manifest[manifest["split"] == split]
        counts[f"{split}_images"] = len(rows)
        if grouped:
            counts[f"{split}_groups"] = rows["group"].nunique()
        for idx, name in enumerate(classes):
            counts[f"{split}_{name}"] = int((rows["label"] == idx).sum())
    return counts


def check_counts(counts, classes, prep):
    """Refuse a split too small to learn from (fewer than MIN_TRAIN_PER_CLASS training images of a class) or to
    evaluate on (a class missing from val or test), with the counts."""
    thin = {name: counts[f"train_{name}"] for name in classes if counts[f"train_{name}"] < MIN_TRAIN_PER_CLASS}
    if thin:
        raise params.ParamError(
            f"the training split holds {counts['train_images']} of {counts['n_images']} images, of them {thin}; "
            f"expected at least {MIN_TRAIN_PER_CLASS} of every class to learn from: raise prepare.max_images "
            f"({prep['max_images']}) or lower prepare.val_fraction ({prep['val_fraction']}) and "
            f"prepare.test_fraction ({prep['test_fraction']})"
        )
    empty = [f"{split}/{name}" for split in data.SPLITS for name in classes if not counts[f"{split}_{name}"]]
    if empty:
        raise params.ParamError(
            f"no image of {empty} (split/class); use more images (prepare.max_images) or other fractions"
        )
    return counts


def hash_and_split(loaded, prep, seed):
    """Pixel hashes, the optional subsample and the split: (images, table with sha256 and split columns).

    With a `group` column (prepare.group_by) every group stays in one split (splitting.stratified_group_split)."""
    table = loaded.table.assign(sha256=[images.image_sha256(img) for img in loaded.images])
    strata = table[["class_name", *loaded.attributes]].astype(str).agg("/".join, axis=1).to_numpy()
    keep = splitting.subsample(strata, prep["max_images"], seed)
    pixels, table = [loaded.images[i] for i in keep], table.iloc[keep].reset_index(drop=True)
    hashes = table["sha256"].to_numpy()
    fractions = prep["val_fraction"], prep["test_fraction"]
    if "group" in table.columns:
        table["split"] = splitting.stratified_group_split(strata[keep], table["group"], *fractions, seed, hashes)
        if splitting.find_group_leaks(table):
            raise RuntimeError("a group landed in two splits; stratified_group_split should prevent this")
    else:
        table["split"] = splitting.stratified_split(strata[keep], *fractions, seed, hashes)
    if splitting.find_duplicates(table):
        raise RuntimeError("exact duplicate images landed in different splits; the split should prevent this")
    return pixels, table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder for images/ and manifest.csv")
    parser.add_argument("metrics", help="JSON file for split and class counts")
    args = parser.parse_args()
    p = params.load("base", "prepare")
    prep = check(p)
    params.setup(p["base"])

    loaded = datasets.DATASETS[prep["dataset"]](prep)
    for bad in loaded.bad_files:
        log.warning("skipped unreadable image %s: %s", bad["path"], bad["error"])
    pixels, table = hash_and_split(loaded, prep, p["base"]["seed"])
    counts = split_counts(table, loaded.classes)
    check_counts(counts, loaded.classes, prep)

    manifest = datasets.write_prepared(args.out_dir, pixels, table, prep["resize"])
    meta = {"classes": loaded.classes, "task": loaded.task, "attributes": loaded.attributes}
    write_json(Path(args.out_dir) / "classes.json", meta)
    bad_paths = [bad["path"] for bad in loaded.bad_files]
    found = {"duplicate_images": splitting.count_duplicates(manifest), "bad_images": len(bad_paths)}
    write_json(args.metrics, {**counts, **found, "bad_image_files": bad_paths})
    log.info("%d images -> %s", len(manifest), {k: v for k, v in counts.items() if k.endswith(("_images", "_groups"))})
    log.info(
        "class shares %s; %d exact duplicates kept together",
        manifest["class_name"].value_counts(normalize=True).round(3).to_dict(),
        found["duplicate_images"],
    )


if __name__ == "__main__":
    errors.run(main, "prepare")
