"""The deployment bundle (`artifacts/deploy/`) and decoding raw image files the way the pipeline does.

A bundle is a folder with the selected variant's ONNX file (`model.onnx`) and `deploy.json`: the bundle
version, the threshold, classes, input size and decoding rules, the variant's validation and test metrics,
its benchmark entry and machine fingerprint, the params and git revision that made it, and the model's sha256.

Decoding a raw file for the model is `images.read_image` (prepare's code path: fixed per-mode rules,
shrunk to `max_side`), made square by the bundle's resize mode as prepare wrote it (`images.fit_square`:
squash, pad or crop), then what `data.load_split` does with the prepared PNG (PNG is lossless):
convert to RGB, bilinear resize to the input size, scale to [0, 1]. This module never imports torch,
so `screen` runs with the bundle's runtime alone (ONNX Runtime or OpenVINO: deploy.json `benchmark.runtime`).
"""

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from stages.lib import errors
from stages.lib.data.images import RESIZE_MODES, fit_square, image_sha256, read_image
from stages.lib.outputs import atomic, write_json

BUNDLE_VERSION = 1
BUNDLE_JSON = "deploy.json"
MODEL_FILE = "model.onnx"
DEPLOYABLE = ("onnxruntime", "openvino")  # the runtimes a bundle holds and `screen` runs (runtime.load_runner)


class BundleError(errors.InputError):
    """A deployment bundle that cannot be used as it is (missing, unknown version, wrong model file): a user error."""


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


RESIZE_RULES = {
    "squash": "resized as it is (the aspect ratio changes)",
    "pad": "centred on a black (0) square of side max(H, W), then resized",
    "crop": "the centred square of side min(H, W), then resized",
}


def decoding_rules(image_size, max_side, resize="squash"):
    """What deploy.json records about decoding; `model_input` and `decode` implement exactly this.

    `resize` is prepare.resize, the mode the prepared images were made square with."""
    return {
        "reader": "stages.lib.data.images.read_image (the prepare stage's decoder)",
        "modes": "L, RGB kept; 1, LA -> L; RGBA -> RGB (alpha dropped); P, CMYK, ... -> RGB; 16-bit: v >> 8",
        "max_side": max_side,
        "max_side_resample": "box (area), aspect kept, only when larger",
        "color": "RGB (grayscale replicated)",
        "resize_mode": resize,
        "resize_rule": RESIZE_RULES[resize],
        "resize": [image_size, image_size],
        "resample": "bilinear",
        "scale": "uint8 / 255 -> float32 in [0, 1]; mean/std normalisation is inside the model",
        "layout": "NCHW",
    }


_SCALE = np.arange(256, dtype=np.float32) / np.float32(255.0)  # uint8 -> [0, 1], exactly as x / 255 in float32


def model_input(pixels, image_size):
    """uint8 (H, W) or (H, W, 3) from read_image -> float32 (3, S, S) in [0, 1], as data.load_split + to_float.

    Resized in its own mode, then grayscale replicated to RGB: bilinear resampling treats each band alike,
    so this gives the bytes of load_split's convert("RGB") then resize at a third of the work (a test
    compares both on every mode).
    """
    small = np.asarray(Image.fromarray(pixels).resize((image_size, image_size), Image.BILINEAR), dtype=np.uint8)
    scaled = _SCALE[small]
    if scaled.ndim == 2:
        return np.broadcast_to(scaled, (3, image_size, image_size))
    return scaled.transpose(2, 0, 1)


class _Named(io.BytesIO):
    """File bytes in memory that PIL's messages name by the file, not by an object address."""

    def __init__(self, data, name):
        super().__init__(data)
        self.label = str(name)

    def __repr__(self):
        return repr(self.label)


def resize_mode(bundle):
    """The bundle's resize mode, checked; a bundle from before the mode was recorded squashed."""
    mode = bundle["decoding"].get("resize_mode", "squash")
    if mode not in RESIZE_MODES:
        raise BundleError(
            f"deploy.json: decoding.resize_mode={mode!r} is not one this screen knows; expected one of "
            f"{list(RESIZE_MODES)} (a newer bundle? update the code that reads it)"
        )
    return mode


def decode(data, image_size, max_side, name="<bytes>", resize="squash"):
    """File bytes -> (model input, sha256 of the decoded pixels as in prepare's manifest, before `resize`).

    The model input is a read-only float32 (3, S, S) view (np.stack copies it into a batch).
    Raises images.ImageDecodeError for unreadable or truncated data; its reason names the file as `name`.
    """
    pixels = read_image(_Named(data, name), max_side)
    return model_input(fit_square(pixels, resize), image_size), image_sha256(pixels)


def write_bundle(folder, model_src, meta):
    """Copy the model into `folder` and write deploy.json (meta + version, file name and sha256)."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with atomic(folder / MODEL_FILE) as tmp:
        shutil.copyfile(model_src, tmp)
    bundle = {
        "bundle_version": BUNDLE_VERSION,
        "model_file": MODEL_FILE,
        "model_sha256": sha256_file(folder / MODEL_FILE),
        **meta,
    }
    write_json(folder / BUNDLE_JSON, bundle)
    return bundle


def write_empty_bundle(folder, reason):
    """A bundle that says no variant qualified: deploy.json without a model, so no stale model ships."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(
        folder / BUNDLE_JSON, {"bundle_version": BUNDLE_VERSION, "variant": None, "model_file": None, "reason": reason}
    )


def read_bundle(folder):
    """deploy.json, checked: a known bundle version and a model file whose sha256 matches."""
    path = Path(folder) / BUNDLE_JSON
    if not path.is_file():
        raise BundleError(f"{path} not found; expected a bundle folder written by the select stage (artifacts/deploy)")
    try:
        bundle = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    version = bundle.get("bundle_version")
    if version != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle_version={version!r} is not supported; this screen reads {BUNDLE_VERSION}")
    if bundle.get("model_file") is None:
        raise BundleError(
            f"{path} holds no model: {bundle.get('reason', 'no variant qualified')} "
            "(metrics/select.json lists every variant's margins)"
        )
    model = Path(folder) / bundle["model_file"]
    if not model.is_file():
        raise BundleError(f"{model} not found; the bundle is incomplete")
    digest = sha256_file(model)
    if digest != bundle["model_sha256"]:
        raise BundleError(
            f"{model}: sha256 {digest[:16]}... does not match deploy.json model_sha256 "
            f"{bundle['model_sha256'][:16]}...; the model file was changed or replaced"
        )
    bundle["model_path"] = str(model)
    resize_mode(bundle)  # an unknown mode stops here, before any file is read
    return bundle


def raw_paths(sources, prep):
    """The original file of each prepared image (manifest `source`), as prepare read it.

    ELPV sources are `elpv:<row>`, rows of the elpv-dataset package's labels.csv; every other
    adapter records the path relative to `prepare.root`.
    """
    if prep["dataset"] == "elpv":
        import elpv_dataset

        labels = Path(elpv_dataset.__file__).parent / "data" / "labels.csv"
        rows = [line.split()[0] for line in labels.read_text().splitlines() if line.strip()]
        return [labels.parent / rows[int(s.removeprefix("elpv:"))] for s in sources]
    return [Path(prep["root"]).expanduser() / s for s in sources]
