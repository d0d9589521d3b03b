"""The prepared dataset in memory: manifest, splits as uint8 tensors, augmentation, batches.

The prepared dataset is a folder of PNG images plus `manifest.csv`
(path, label, split, sha256 and every per-image attribute the dataset has).
Everything downstream reads the manifest, so all models see the same split.

torch is imported inside the functions that make tensors: `screen` reads raw files through
`stages.lib.data.images` and must run without it.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from stages.lib import errors
from stages.lib.outputs import read_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def read_info(prepared_dir):
    """classes.json written by prepare: classes, task ("binary" | "multiclass") and attributes.

    Binary tasks have classes ["good", "defect"]: index 1 is the positive (defect) class.
    """
    return read_json(Path(prepared_dir) / "classes.json")


def read_manifest(prepared_dir):
    path = Path(prepared_dir) / "manifest.csv"
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:  # pandas' parser errors are ValueErrors
        raise errors.damaged(path, errors.reason(e)) from e


def load_split(prepared_dir, split, image_size, limit=None):
    """One split as (uint8 RGB tensor N x 3 x S x S, int64 labels N), resized once in memory."""
    import torch

    images, labels = _load_uint8(prepared_dir, split, image_size, limit)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def load_split_float(prepared_dir, split, image_size, limit=None):
    """One split as numpy (float32 N x 3 x S x S in [0, 1], int64 labels N), without torch: what a runtime is fed.
    The same numbers as `to_float(load_split(...)[0]).numpy()` (both divide by 255 in float32)."""
    images, labels = _load_uint8(prepared_dir, split, image_size, limit)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0), labels


def _load_uint8(prepared_dir, split, image_size, limit):
    rows = read_manifest(prepared_dir).query("split == @split")
    if limit:
        rows = rows.iloc[:limit]
    images = np.stack([_load_rgb(Path(prepared_dir) / p, image_size) for p in rows["path"]])
    return images, rows["label"].to_numpy().astype(np.int64)


def _load_rgb(path, size):
    img = Image.open(path).convert("RGB")
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def to_float(x_uint8):
    """uint8 images -> float in [0, 1]; models normalise internally (see models.Classifier)."""
    return x_uint8.float().div_(255.0)


def augment(x, generator):
    """Random horizontal and vertical flips per image: defects keep their label under flips."""
    import torch

    flip_h = torch.rand(len(x), generator=generator) < 0.5
    flip_v = torch.rand(len(x), generator=generator) < 0.5
    x = x.clone()
    x[flip_h] = x[flip_h].flip(-1)
    x[flip_v] = x[flip_v].flip(-2)
    return x


def batches(x, y, batch_size, shuffle=False, generator=None):
    import torch

    order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]
