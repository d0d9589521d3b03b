"""prepare: load a real dataset, label it, split it train/val/test once, write images + manifest.

python -m stages.prepare data/prepared metrics/prepare.json
"""

import argparse
import logging

import numpy as np

from stages.lib import data, datasets, params
from stages.lib.outputs import write_json

log = logging.getLogger("prepare")


def check(p):
    params.check_base(p["base"])
    prep = p["prepare"]
    params.check_choice("prepare.dataset", prep["dataset"], set(datasets.DATASETS))
    params.check_range("prepare.defect_threshold", prep["defect_threshold"], 0, 1, lo_inclusive=False)
    params.check_range("prepare.val_fraction", prep["val_fraction"], 0, 1, lo_inclusive=False, hi_inclusive=False)
    params.check_range("prepare.test_fraction", prep["test_fraction"], 0, 1, lo_inclusive=False, hi_inclusive=False)
    if prep["val_fraction"] + prep["test_fraction"] >= 1:
        raise params.ParamError(
            f"prepare.val_fraction + prepare.test_fraction = {prep['val_fraction'] + prep['test_fraction']}; "
            "expected < 1 so that images remain for training"
        )
    params.check_int("prepare.max_images", prep["max_images"], 0)
    return prep


def split_counts(manifest):
    counts = {"n_images": len(manifest)}
    for split, rows in manifest.groupby("split"):
        counts[f"{split}_images"] = len(rows)
        for idx, name in enumerate(data.CLASSES):
            counts[f"{split}_{name}"] = int((rows["label"] == idx).sum())
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder for images/ and manifest.csv")
    parser.add_argument("metrics", help="JSON file for split and class counts")
    args = parser.parse_args()
    p = params.load()
    prep = check(p)
    params.setup(p["base"])

    images, table = datasets.DATASETS[prep["dataset"]](prep["defect_threshold"])
    strata = table["label"].astype(str) + "/" + table["cell_type"].astype(str)
    keep = datasets.subsample(strata.to_numpy(), prep["max_images"], p["base"]["seed"])
    images, table, strata = images[keep], table.iloc[keep].reset_index(drop=True), strata.iloc[keep].to_numpy()
    table["split"] = datasets.stratified_split(strata, prep["val_fraction"], prep["test_fraction"], p["base"]["seed"])
    manifest = datasets.write_prepared(args.out_dir, images, table)

    counts = split_counts(manifest)
    for split in data.SPLITS:
        if counts.get(f"{split}_defect", 0) == 0:
            raise ValueError(f"the {split} split has no defect image; use more images (prepare.max_images)")
    write_json(args.metrics, counts)
    log.info("%d images -> %s", len(manifest), {k: v for k, v in counts.items() if k.endswith("_images")})
    log.info("defect share %.3f", float(np.mean(manifest["label"])))


if __name__ == "__main__":
    main()
