"""Dataset adapters and the one-time split, used only by the prepare stage.

Every adapter is `load_<name>(prep) -> Loaded`, where `prep` is the `prepare` section of
params.yaml; it reads a public data set in the layout its release ships (see LAYOUTS) and
decodes every image with `images.read_image`. Unreadable files are skipped and listed
(`prepare.on_bad_image: skip`) or stop the stage (`error`).
"""

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from stages.lib.data.groups import group_keys
from stages.lib.data.images import IMAGE_SUFFIXES, ImageDecodeError, fit_square, read_image
from stages.lib.errors import InputError, MissingInputError, ParamError
from stages.lib.outputs import atomic

log = logging.getLogger(__name__)

BINARY = ["good", "defect"]  # index 1 is the positive (defect) class everywhere
LAYOUTS = {
    "elpv": "the PyPI package elpv-dataset, no root needed (https://github.com/zae-bayern/elpv-dataset)",
    "mvtec_ad": "<root>/<category>/{train/good,test/<defect_type>}/*.png, or root = one category folder "
    "(download: https://www.mvtec.com/company/research/datasets/mvtec-ad)",
    "neu": "NEU-DET <root>/IMAGES/<class>_<n>.jpg (+ ANNOTATIONS/*.xml) or NEU-CLS <root>/{Cr,In,Pa,PS,RS,Sc}_<n>.bmp "
    "(download: https://faculty.neu.edu.cn/songkechen/zh_CN/zdylm/263270/list/index.htm)",
    "dagm2007": "<root>/Class<k>/{Train,Test}/*.PNG with <root>/Class<k>/{Train,Test}/Label/Labels.txt "
    "(download: https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection)",
    "folder": "<root>/<class>/*.{png,jpg,jpeg,bmp,tif,tiff,webp}, one folder per class "
    "(prepare.good_class names the good one; null = multi-class)",
}
NEU_CLS_NAMES = {
    "Cr": "crazing",
    "In": "inclusion",
    "Pa": "patches",
    "PS": "pitted_surface",
    "RS": "rolled-in_scale",
    "Sc": "scratches",
}


@dataclass
class Loaded:
    """One data set in memory, the same shape for every adapter."""

    images: list[np.ndarray]  # uint8 (H, W) grayscale or (H, W, 3) RGB; sizes may differ between images
    table: pd.DataFrame  # one row per image: label, class_name, source, attribute columns, group (prepare.group_by)
    classes: list[str]  # binary: ["good", "defect"]; multi-class: sorted defect-type names
    task: str  # "binary" or "multiclass"
    attributes: list[str]  # table columns that metrics are broken down by
    bad_files: list[dict] = field(default_factory=list)  # [{"path", "error"}] for skipped unreadable files


def load_elpv(prep):
    """ELPV solar cells (PyPI `elpv-dataset`): 2,624 grayscale 300x300 EL images, labelled by expert p(defect)."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as e:
        raise ParamError(
            f"prepare.dataset='elpv' needs the package: {LAYOUTS['elpv']}; pip install elpv-dataset"
        ) from e
    images, probs, types = load_dataset()
    label = (probs >= prep["defect_threshold"]).astype(int)
    table = pd.DataFrame(
        {
            "label": label,
            "class_name": np.take(BINARY, label),
            "source": [f"elpv:{i}" for i in range(len(label))],
            "cell_type": types,
            "defect_prob": np.round(probs, 4),
        }
    )
    keys = group_keys(table["source"], prep)
    if keys is not None:
        table["group"] = keys
    return Loaded(list(images), table, BINARY, "binary", ["cell_type"])


def load_mvtec_ad(prep):
    """MVTec AD: good (train/good + test/good) vs defect (test/<defect_type>); ground_truth masks are not read."""
    root = _root(prep, "mvtec_ad")
    if (root / "train" / "good").is_dir():
        found = {root.name: root}
    else:
        found = {p.name: p for p in _subdirs(root) if (p / "train" / "good").is_dir()}
    if not found:
        raise _layout_error("mvtec_ad", root, "no <category>/train/good folder")
    records = []
    for category in _select(prep, found, root):
        cat = found[category]
        for good_dir in (cat / "train" / "good", cat / "test" / "good"):
            records += [_record(p, root, "good", defect_type="good", category=category) for p in _image_files(good_dir)]
        defect_dirs = [d for d in _subdirs(cat / "test") if d.name != "good"]
        defects = [
            _record(p, root, "defect", defect_type=d.name, category=category)
            for d in defect_dirs
            for p in _image_files(d)
        ]
        if not defects:
            raise InputError(
                f"mvtec_ad category {category!r} has no defect images: expected {cat}/test/<defect_type>/*.png"
            )
        records += defects
    return _decode("mvtec_ad", records, prep, BINARY, "binary", ["defect_type", "category"])


def load_neu(prep):
    """NEU surface defects, six classes; the NEU-DET and NEU-CLS releases are told apart by their layout."""
    root = _root(prep, "neu")
    images_dir = next((d for d in _subdirs(root) if d.name.lower() == "images"), None)
    records = []
    if images_dir is not None:  # NEU-DET: IMAGES/rolled-in_scale_20.jpg -> rolled-in_scale
        for p in _image_files(images_dir):
            name = p.stem.rsplit("_", 1)[0]
            if name not in NEU_CLS_NAMES.values():
                raise _layout_error("neu", root, f"{p.name} in {images_dir} is not named <class>_<n>")
            records.append(_record(p, root, name))
    else:  # NEU-CLS: Cr_1.bmp -> crazing
        for p in _image_files(root):
            if p.stem.split("_")[0] in NEU_CLS_NAMES:
                records.append(_record(p, root, NEU_CLS_NAMES[p.stem.split("_")[0]]))
    if not records:
        raise _layout_error("neu", root, "neither an IMAGES folder (NEU-DET) nor <abbrev>_<n>.bmp files (NEU-CLS)")
    return _decode("neu", records, prep, sorted(NEU_CLS_NAMES.values()), "multiclass", [])


def load_dagm2007(prep):
    """DAGM 2007: ten synthetic textures, each with Train/Test images labelled defective or not in Labels.txt."""
    root = _root(prep, "dagm2007")
    found = {d.name: d for d in _subdirs(root) if re.fullmatch(r"Class\d+", d.name)}
    if not found:
        raise _layout_error("dagm2007", root, "no Class<k> folder")
    records = []
    for dagm_class in sorted(_select(prep, found, root), key=lambda name: int(name[5:])):
        for part in ("Train", "Test"):
            folder = found[dagm_class] / part
            labels = folder / "Label" / "Labels.txt"
            if not labels.is_file():
                raise _layout_error("dagm2007", root, f"{labels} not found")
            for name, defective in read_dagm_labels(labels):
                records.append(_record(folder / name, root, BINARY[defective], dagm_class=dagm_class))
    return _decode("dagm2007", records, prep, BINARY, "binary", ["dagm_class"])


def read_dagm_labels(path):
    """(image file name, 0 or 1) per line of a DAGM Labels.txt: `<id> <defective> <image> <0 or mask>`.

    The first line is a count/header unless it already reads as an entry; blank lines are skipped.
    """
    entries = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        fields = line.split()
        if not fields or (i == 0 and (len(fields) < 3 or fields[1] not in ("0", "1"))):
            continue
        if len(fields) < 3 or fields[1] not in ("0", "1"):
            raise InputError(f"{path} line {i + 1}: {line!r}; expected '<id> <0|1> <image file> <0|mask file>'")
        entries.append((fields[2], int(fields[1])))
    return entries


def load_folder(prep):
    """One sub-folder per class; binary when prepare.good_class names the good folder, else multi-class."""
    root = _root(prep, "folder")
    files = {d.name: _image_files(d) for d in _subdirs(root)}
    if not files:
        raise _layout_error("folder", root, "no class folder")
    empty = [str(root / name) for name, paths in files.items() if not paths]
    if empty:
        raise InputError(f"class folder(s) {empty} hold no images; folder expects {LAYOUTS['folder']}")
    good = prep.get("good_class")
    if good is None:
        records = [_record(p, root, name) for name, paths in files.items() for p in paths]
        return _decode("folder", records, prep, sorted(files), "multiclass", [])
    if good not in files or len(files) < 2:
        raise ParamError(
            f"prepare.good_class={good!r} needs a folder of that name and at least one defect folder "
            f"under prepare.root={str(root)!r}; folders found: {sorted(files)}"
        )
    records = [
        _record(p, root, "good" if name == good else "defect", defect_type=name)
        for name, paths in files.items()
        for p in paths
    ]
    return _decode("folder", records, prep, BINARY, "binary", ["defect_type"])


DATASETS = {
    "elpv": load_elpv,
    "mvtec_ad": load_mvtec_ad,
    "neu": load_neu,
    "dagm2007": load_dagm2007,
    "folder": load_folder,
}


def _root(prep, name):
    if prep.get("root") is None:
        raise ParamError(f"prepare.root is not set; prepare.dataset={name!r} reads a folder: {LAYOUTS[name]}")
    root = Path(prep["root"]).expanduser()
    if not root.is_dir():
        raise MissingInputError(f"prepare.root={prep['root']!r} does not exist; {name} expects {LAYOUTS[name]}")
    return root


def _layout_error(name, root, problem):
    entries = sorted(p.name + "/" * p.is_dir() for p in root.iterdir())
    shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8 else "")
    return InputError(
        f"prepare.root={str(root)!r} does not look like {name}: {problem}. "
        f"Expected {LAYOUTS[name]}. Found at root: {shown or 'nothing'}"
    )


def _select(prep, found, root):
    """The categories asked for in prepare.categories (null = all found), checked against those found."""
    wanted = prep.get("categories") or sorted(found)
    missing = [c for c in wanted if c not in found]
    if missing:
        raise ParamError(
            f"prepare.categories: {missing} not found under prepare.root={str(root)!r}; found: {sorted(found)}"
        )
    return wanted


def _subdirs(folder):
    folder = Path(folder)
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")) if folder.is_dir() else []


def _image_files(folder):
    """Image files directly in `folder` (any common suffix, any case), sorted by name; hidden files skipped."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(p for p in files if p.is_file())


def _record(path, root, class_name, **attributes):
    return {"path": path, "class_name": class_name, "source": path.relative_to(root).as_posix(), **attributes}


def _decode(name, records, prep, classes, task, attributes):
    """Read every record's image into a Loaded; unreadable files are skipped and listed, or raise.

    The groups (prepare.group_by) are found first, so a bad one stops the stage before any decoding."""
    keys = group_keys([rec["source"] for rec in records], prep)
    if keys is not None:
        records = [{**rec, "group": key} for rec, key in zip(records, keys, strict=True)]
    images, kept, bad = [], [], []
    for rec in tqdm(records, desc=f"decode {name}", unit="img", mininterval=5, disable=len(records) < 500):
        try:
            images.append(read_image(rec["path"], prep.get("max_side")))
        except ImageDecodeError as e:
            if prep.get("on_bad_image", "skip") == "error":
                raise
            bad.append({"path": rec["source"], "error": e.reason})
            continue
        kept.append(rec)
    table = pd.DataFrame(kept, columns=["class_name", "source", *attributes, *(["group"] if keys is not None else [])])
    table.insert(0, "label", table["class_name"].map(classes.index).astype(int))
    missing = [c for c in classes if c not in set(table["class_name"])]
    if missing:
        raise InputError(
            f"{name}: no readable image of class(es) {missing} under prepare.root={prep.get('root')!r}; "
            f"expected {LAYOUTS[name]}"
        )
    log.info("%s: %d images, %d unreadable skipped", name, len(table), len(bad))
    return Loaded(images, table, list(classes), task, list(attributes), bad)


def write_prepared(out_dir, images, table, resize="squash"):
    """Write images as lossless PNG, made square by the `resize` mode (images.fit_square; squash keeps them as
    decoded), and the manifest (the table plus each image's path). The table's sha256 stays that of the decoded
    image, as screen reports it."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        rel = f"images/{i:05d}.png"
        Image.fromarray(fit_square(img, resize)).save(out_dir / rel)
        paths.append(rel)
    manifest = table.assign(path=paths)
    with atomic(out_dir / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False)
    return manifest
