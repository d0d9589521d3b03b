"""Dataset adapters and the one-time split, used only by the prepare stage.

An adapter returns images (N, H, W[, C]) uint8 and a table with one row per image:
`label` (0 good, 1 defect) plus any attribute the dataset has (kept for breakdowns).
"""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

from stages.lib.params import ParamError


def load_elpv(defect_threshold):
    """ELPV solar cells (PyPI `elpv-dataset`): 2,624 grayscale 300x300 EL images.

    Returns images (N, H, W) uint8 and a table with label, defect_prob, cell_type.
    """
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as e:
        raise ParamError("prepare.dataset='elpv' needs the package: pip install elpv-dataset") from e
    images, probs, types = load_dataset()
    table = pd.DataFrame(
        {
            "label": (probs >= defect_threshold).astype(int),
            "defect_prob": np.round(probs, 4),
            "cell_type": types,
        }
    )
    return images, table


DATASETS = {"elpv": load_elpv}


def stratified_split(strata, val_fraction, test_fraction, seed):
    """Assign each row to train/val/test, stratified by `strata` (one key per row).

    A pure function of the keys and the seed, so the split never moves unless the data does.
    """
    idx = np.arange(len(strata))
    strata = np.asarray(strata)
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=strata, random_state=seed)
    val_of_rest = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_of_rest, stratify=strata[rest], random_state=seed)
    split = np.empty(len(strata), dtype=object)
    split[train], split[val], split[test] = "train", "val", "test"
    return split


def subsample(strata, max_images, seed):
    """Indices of a stratified subset of at most `max_images` rows (all rows when 0)."""
    if not max_images or max_images >= len(strata):
        return np.arange(len(strata))
    keep, _ = train_test_split(np.arange(len(strata)), train_size=max_images, stratify=strata, random_state=seed)
    return np.sort(keep)


def write_prepared(out_dir, images, table):
    """Write images as lossless PNG and the manifest (with a sha256 per image)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    paths, hashes = [], []
    for i, img in enumerate(images):
        rel = f"images/{i:05d}.png"
        Image.fromarray(img).save(out_dir / rel)
        paths.append(rel)
        hashes.append(hashlib.sha256(img.tobytes()).hexdigest())
    manifest = table.assign(path=paths, sha256=hashes)
    manifest.to_csv(out_dir / "manifest.csv", index=False)
    return manifest
