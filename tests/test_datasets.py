"""Dataset adapters, image decoding and the duplicate-aware split.

Real layouts are read from the repo's sibling `shared/data` when it is there; every other
layout is built as a tiny fixture in tmp_path.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.lib.data import datasets, splitting
from stages.lib.data.images import image_sha256, read_image
from stages.lib.params import ParamError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NEU_NAMES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def prep(root=None, **knobs):
    return {
        "root": None if root is None else str(root),
        "categories": None,
        "good_class": None,
        "on_bad_image": "skip",
        "defect_threshold": 0.5,
        **knobs,
    }


def real(name):
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not found: real-layout tests need the repo's sibling shared/data folder")
    return path


def save(path, array):
    """uint8 -> L/RGB/RGBA, uint16 -> I;16, int32 -> I, float32 -> F (PIL picks the mode from the dtype)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def noise(seed, shape=(12, 12)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def mvtec_category(root, n_good=3, defects=("crack",)):
    for i in range(n_good):
        save(root / "train" / "good" / f"{i:03d}.png", noise(i))
    save(root / "test" / "good" / "000.png", noise(100))
    for d, defect in enumerate(defects):
        save(root / "test" / defect / "000.png", noise(200 + d))
        save(root / "ground_truth" / defect / "000_mask.png", np.zeros((12, 12), np.uint8))
    return root


# --- real layouts ---------------------------------------------------------------------------------


def test_mvtec_ad_bottle_real():
    loaded = datasets.load_mvtec_ad(prep(real("mvtec_ad"), categories=["bottle"]))
    t = loaded.table
    assert (loaded.classes, loaded.task, loaded.attributes) == (
        ["good", "defect"],
        "binary",
        ["defect_type", "category"],
    )
    assert len(loaded.images) == len(t) == 292 and loaded.bad_files == []
    assert (t["label"] == 0).sum() == 229 and (t["label"] == 1).sum() == 63
    assert set(t["defect_type"]) == {"good", "broken_large", "broken_small", "contamination"}
    assert set(t["category"]) == {"bottle"} and (t["class_name"] == np.take(loaded.classes, t["label"])).all()
    assert not t["source"].str.contains("ground_truth|_mask").any()
    assert all(img.dtype == np.uint8 and img.shape == (320, 320, 3) for img in loaded.images[:5])


def test_neu_det_real():
    loaded = datasets.load_neu(prep(real("NEU-DET")))
    assert (loaded.classes, loaded.task, loaded.attributes) == (NEU_NAMES, "multiclass", [])
    assert len(loaded.images) == 1800
    assert loaded.table["class_name"].value_counts().to_dict() == dict.fromkeys(NEU_NAMES, 300)
    row = loaded.table.query("source == 'IMAGES/rolled-in_scale_20.jpg'").iloc[0]
    assert row["class_name"] == "rolled-in_scale" and row["label"] == NEU_NAMES.index("rolled-in_scale")


def test_elpv_keeps_its_columns():
    pytest.importorskip("elpv_dataset", reason="pip install elpv-dataset")
    loaded = datasets.load_elpv(prep())
    assert (loaded.classes, loaded.task, loaded.attributes) == (["good", "defect"], "binary", ["cell_type"])
    assert len(loaded.images) == len(loaded.table) == 2624
    assert {"label", "class_name", "source", "cell_type", "defect_prob"} <= set(loaded.table.columns)
    assert loaded.table["source"].iloc[0] == "elpv:0"


# --- tiny fixtures for the other layouts ----------------------------------------------------------


def test_mvtec_root_may_be_one_category(tmp_path):
    loaded = datasets.load_mvtec_ad(prep(mvtec_category(tmp_path / "screw", defects=("scratch", "thread"))))
    t = loaded.table
    assert len(t) == 6 and t["label"].tolist() == [0, 0, 0, 0, 1, 1]
    assert set(t["category"]) == {"screw"} and set(t["defect_type"]) == {"good", "scratch", "thread"}


def test_neu_cls_maps_abbreviations_to_neu_det_names(tmp_path):
    for k, abbrev in enumerate(["Cr", "In", "Pa", "PS", "RS", "Sc"]):
        for n in (1, 2):
            save(tmp_path / f"{abbrev}_{n}.bmp", noise(10 * k + n))
    (tmp_path / "Thumbs.db").write_bytes(b"not an image")
    loaded = datasets.load_neu(prep(tmp_path))
    assert loaded.classes == NEU_NAMES and len(loaded.table) == 12
    assert dict(zip(loaded.table["source"], loaded.table["class_name"], strict=True))["RS_2.bmp"] == "rolled-in_scale"


def test_dagm2007_reads_labels_and_skips_masks(tmp_path):
    for k in (1, 2):
        for part in ("Train", "Test"):
            folder = tmp_path / f"Class{k}" / part
            lines = ["3"]
            for i, defective in enumerate((0, 1, 0), start=1):
                save(folder / f"{i:04d}.PNG", noise(100 * k + 10 * (part == "Test") + i))
                mask = f"{i:04d}_label.PNG" if defective else "0"
                lines.append(f"{i}\t{defective}\t{i:04d}.PNG\t0\t{mask}" if defective else f"{i}\t0\t{i:04d}.PNG\t0")
                if defective:
                    save(folder / "Label" / mask, np.zeros((12, 12), np.uint8))
            (folder / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    loaded = datasets.load_dagm2007(prep(tmp_path))
    t = loaded.table
    assert (loaded.classes, loaded.attributes) == (["good", "defect"], ["dagm_class"])
    assert len(t) == 12 and t["label"].sum() == 4 and set(t["dagm_class"]) == {"Class1", "Class2"}
    assert not t["source"].str.contains("Label/").any()
    assert len(datasets.load_dagm2007(prep(tmp_path, categories=["Class2"])).table) == 6


def mixed_folder(root):
    """good: L png + RGB jpg; scratch: palette bmp + 16-bit tif; dent: RGBA png + RGB webp."""
    rgb = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    save(root / "good" / "a.png", noise(1, (10, 14)))
    save(root / "good" / "b.JPG", rgb)
    Image.fromarray(rgb).convert("P").save(root / "good" / "c.bmp")
    save(root / "scratch" / "d.tif", (noise(2).astype(np.uint16) * 257))
    save(root / "dent" / "e.png", np.dstack([rgb, np.full((10, 14), 128, np.uint8)]))
    save(root / "dent" / "f.webp", rgb)
    (root / "dent" / "notes.txt").write_text("ignored: not an image suffix")
    modes = {p.name: Image.open(p).mode for p in sorted(root.glob("*/[a-f].*"))}
    assert modes == {"a.png": "L", "b.JPG": "RGB", "c.bmp": "P", "d.tif": "I;16", "e.png": "RGBA", "f.webp": "RGB"}
    return root


def test_folder_binary_with_good_class(tmp_path):
    loaded = datasets.load_folder(prep(mixed_folder(tmp_path), good_class="good"))
    t = loaded.table
    assert (loaded.classes, loaded.task, loaded.attributes) == (["good", "defect"], "binary", ["defect_type"])
    assert t.set_index("source")["label"].to_dict() == {
        "dent/e.png": 1,
        "dent/f.webp": 1,
        "good/a.png": 0,
        "good/b.JPG": 0,
        "good/c.bmp": 0,
        "scratch/d.tif": 1,
    }
    shapes = dict(zip(t["source"], [img.shape for img in loaded.images], strict=True))
    assert shapes["good/a.png"] == (10, 14) and shapes["scratch/d.tif"] == (12, 12)  # L and I;16 stay grayscale
    assert shapes["good/c.bmp"] == shapes["dent/e.png"] == (10, 14, 3)  # palette and RGBA become RGB
    assert all(img.dtype == np.uint8 for img in loaded.images)
    assert loaded.images[t.index[t["source"] == "scratch/d.tif"][0]].tolist() == noise(2).tolist()


def test_folder_multiclass_without_good_class(tmp_path):
    loaded = datasets.load_folder(prep(mixed_folder(tmp_path)))
    assert (loaded.classes, loaded.task, loaded.attributes) == (["dent", "good", "scratch"], "multiclass", [])
    assert loaded.table.groupby("class_name")["label"].first().to_dict() == {"dent": 0, "good": 1, "scratch": 2}


def test_bad_files_are_skipped_and_listed_or_raise(tmp_path):
    root = mixed_folder(tmp_path)
    data = (root / "good" / "a.png").read_bytes()
    (root / "good" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "scratch" / "text.png").write_text("this is not a PNG")
    loaded = datasets.load_folder(prep(root, good_class="good"))
    assert sorted(b["path"] for b in loaded.bad_files) == ["good/truncated.png", "scratch/text.png"]
    assert all(b["error"] for b in loaded.bad_files) and len(loaded.table) == len(loaded.images) == 6
    with pytest.raises(ValueError, match=r"truncated\.png"):
        datasets.load_folder(prep(root, good_class="good", on_bad_image="error"))


# --- errors name the key, the path and the expected layout ----------------------------------------


def test_missing_or_unset_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"prepare\.root=.*nowhere.*does not exist.*train/good.*mvtec\.com"):
        datasets.load_mvtec_ad(prep(missing))
    with pytest.raises(ParamError, match=r"prepare\.root is not set.*dagm2007.*Labels\.txt"):
        datasets.load_dagm2007(prep())


def test_wrong_layout_lists_what_was_found(tmp_path):
    save(tmp_path / "IMAGES" / "crazing_1.jpg", noise(0))
    (tmp_path / "ANNOTATIONS").mkdir()
    with pytest.raises(
        ValueError, match=r"does not look like mvtec_ad.*train/good.*Found at root: ANNOTATIONS/, IMAGES/"
    ):
        datasets.load_mvtec_ad(prep(tmp_path))
    with pytest.raises(ValueError, match=r"does not look like dagm2007.*Class<k>.*Found at root: ANNOTATIONS/"):
        datasets.load_dagm2007(prep(tmp_path))


def test_empty_class_folder_is_named(tmp_path):
    root = mixed_folder(tmp_path)
    (root / "crack").mkdir()
    with pytest.raises(ValueError, match=r"crack.*hold no images.*<root>/<class>/"):
        datasets.load_folder(prep(root, good_class="good"))


def test_category_without_defects_and_unknown_category(tmp_path):
    mvtec_category(tmp_path / "bottle")
    mvtec_category(tmp_path / "cable", defects=())
    with pytest.raises(ValueError, match=r"'cable' has no defect images.*cable/test/<defect_type>"):
        datasets.load_mvtec_ad(prep(tmp_path))
    with pytest.raises(ParamError, match=r"prepare\.categories: \['zipper'\] not found.*found: \['bottle', 'cable'\]"):
        datasets.load_mvtec_ad(prep(tmp_path, categories=["bottle", "zipper"]))
    with pytest.raises(ParamError, match=r"prepare\.good_class='ok'.*folders found"):
        datasets.load_folder(prep(mixed_folder(tmp_path / "f"), good_class="ok"))


# --- decoding and hashing -------------------------------------------------------------------------


def test_16_bit_and_float_images_map_by_fixed_range(tmp_path):
    values = np.array([[0, 257, 65535, 255]], dtype=np.uint16)
    assert read_image(save(tmp_path / "a.png", values)).tolist() == [[0, 1, 255, 0]]
    Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes()).save(tmp_path / "b.tif")
    assert Image.open(tmp_path / "b.tif").mode == "I;16B"
    assert read_image(tmp_path / "b.tif").tolist() == [[0, 1, 255, 0]]
    save(tmp_path / "c.tif", np.array([[-5, 257, 70000]], dtype=np.int32))  # mode I: clipped to 16 bits
    assert read_image(tmp_path / "c.tif").tolist() == [[0, 1, 255]]
    save(tmp_path / "d.tif", np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32))  # mode F: [0, 1]
    assert read_image(tmp_path / "d.tif").tolist() == [[0, 128, 255, 255]]


def test_hash_depends_on_pixels_and_shape_not_on_the_file(tmp_path):
    img = noise(3, (4, 6))
    png, bmp = save(tmp_path / "a.png", img), save(tmp_path / "a.bmp", img)
    assert image_sha256(read_image(png)) == image_sha256(read_image(bmp)) == image_sha256(img)
    assert image_sha256(img) != image_sha256(img.reshape(6, 4))


# --- split ----------------------------------------------------------------------------------------


def test_exact_duplicates_land_in_the_same_split():
    rng = np.random.default_rng(0)
    strata = np.repeat(["good", "defect"], [300, 60])
    hashes = np.array([f"h{i % 97}" if s == "good" else f"d{i % 20}" for i, s in enumerate(strata)])
    split = splitting.stratified_split(strata, 0.15, 0.15, seed=1, hashes=hashes)
    table = pd.DataFrame({"sha256": hashes, "split": split})
    assert table.groupby("sha256")["split"].nunique().max() == 1 and splitting.find_duplicates(table) == []
    assert set(split) == {"train", "val", "test"} and splitting.count_duplicates(table) == 360 - 117
    table.loc[rng.permutation(360)[:40], "split"] = "test"
    assert splitting.find_duplicates(table) and all(
        table.loc[g, "sha256"].nunique() == 1 for g in splitting.find_duplicates(table)
    )


def test_split_without_hashes_is_stratified_and_pure():
    strata = np.repeat(["good/mono", "good/poly", "defect/mono", "defect/poly"], [400, 300, 100, 60])
    split = splitting.stratified_split(strata, 0.15, 0.15, seed=42)
    assert (split == splitting.stratified_split(strata, 0.15, 0.15, seed=42)).all()
    assert (split == "test").sum() == 129 and (split == "val").sum() == 129
    assert ((split == "test") & (strata == "defect/poly")).sum() == 9
    keep = splitting.subsample(strata, 86, seed=0)
    assert len(keep) == 86 and (np.diff(keep) > 0).all() and (strata[keep] == "defect/poly").sum() == 6


def test_prepare_splits_a_loaded_set_with_copies_together(tmp_path):
    from stages import prepare  # imports torch (via stages.lib.data): kept out of the module imports

    pixels = [
        noise(i % 40, (8, 8 + i % 40 % 3)) for i in range(120)
    ]  # 40 distinct images (sizes differ), 3 copies each
    table = pd.DataFrame({"class_name": ["defect" if i % 40 < 10 else "good" for i in range(120)]})
    table.insert(0, "label", (table["class_name"] == "defect").astype(int))
    table["source"] = [f"x/{i}.png" for i in range(120)]
    loaded = datasets.Loaded(pixels, table, ["good", "defect"], "binary", [])
    knobs = {"max_images": 0, "val_fraction": 0.2, "test_fraction": 0.2}
    images, split = prepare.hash_and_split(loaded, knobs, seed=0)
    assert splitting.count_duplicates(split) == 80 and split.groupby("sha256")["split"].nunique().max() == 1
    counts = prepare.split_counts(split, loaded.classes)
    assert counts["test_defect"] == counts["val_defect"] == 6 and counts["train_images"] == 72
    manifest = datasets.write_prepared(tmp_path, images, split)
    assert (tmp_path / manifest["path"].iloc[5]).is_file() and {"sha256", "split", "source"} <= set(manifest.columns)


def test_max_side_shrinks_large_images_at_decode(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.full((1024, 768, 3), 200, np.uint8)).save(path)
    assert read_image(path).shape == (1024, 768, 3)
    assert read_image(path, max_side=512).shape == (512, 384, 3)
    assert read_image(path, max_side=2048).shape == (1024, 768, 3)
