"""Group-aware splits (prepare.group_by): frames of one sequence never straddle train and test.

The leak fixture is a line camera's sequences: each part photographed 6 times, near-identical frames.
A split by image spreads a part's frames over the splits; a split by group keeps each part whole.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.lib.data import datasets, groups, splitting
from stages.lib.errors import InputError, MissingInputError, ParamError

BSDATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsdata_ballscrew"


def sequences(n_good=40, n_defect=12, frames=6):
    """(strata, groups): n_good good parts and n_defect defective ones, `frames` frames each."""
    labels = np.repeat(["good"] * n_good + ["defect"] * n_defect, frames)
    keys = np.repeat([f"part{i:03d}" for i in range(n_good + n_defect)], frames)
    return labels, keys


def test_split_by_image_leaks_sequences_and_split_by_group_does_not():
    strata, keys = sequences()
    by_image = pd.DataFrame({"group": keys, "split": splitting.stratified_split(strata, 0.15, 0.15, seed=0)})
    assert len(splitting.find_group_leaks(by_image)) > 20  # most parts have frames in two or three splits
    split = splitting.stratified_group_split(strata, keys, 0.15, 0.15, seed=0)
    by_group = pd.DataFrame({"group": keys, "split": split, "label": strata})
    assert splitting.find_group_leaks(by_group) == []
    per_split = pd.crosstab(by_group["split"], by_group["label"]) // 6  # parts per split and class
    assert per_split.loc["test"].to_dict() == per_split.loc["val"].to_dict() == {"defect": 2, "good": 6}
    assert per_split.loc["train"].to_dict() == {"defect": 8, "good": 28}


def test_group_split_is_deterministic_seed_dependent_and_keeps_duplicates_together():
    strata, keys = sequences()
    a = splitting.stratified_group_split(strata, keys, 0.15, 0.15, seed=1)
    assert (a == splitting.stratified_group_split(strata, keys, 0.15, 0.15, seed=1)).all()
    assert (a != splitting.stratified_group_split(strata, keys, 0.15, 0.15, seed=2)).any()
    # part000's first frame is an exact copy of a frame of each of 18 other parts: all 19 parts become one unit
    hashes = np.array([f"h{i}" for i in range(len(strata))], dtype=object)
    hashes[[6 * p for p in range(1, 19)]] = "h0"
    split = splitting.stratified_group_split(strata, keys, 0.15, 0.15, seed=1, hashes=hashes)
    table = pd.DataFrame({"group": keys, "split": split, "sha256": hashes})
    assert splitting.find_group_leaks(table) == [] and splitting.find_duplicates(table) == []
    assert table["split"][table["group"] <= "part018"].nunique() == 1


def test_mixed_groups_are_stratified_as_well_as_they_allow():
    """Sequences that turn defective part-way (as BSData's): labels still spread over the splits near 70/15/15."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 30, 90)
    keys = np.repeat(np.arange(90), sizes)
    strata = np.concatenate([np.where(np.arange(n) >= rng.integers(0, n + 1), "defect", "good") for n in sizes])
    split = splitting.stratified_group_split(strata, keys, 0.15, 0.15, seed=0)
    shares = pd.crosstab(split, strata, normalize="columns")
    np.testing.assert_allclose(
        shares.loc[["train", "val", "test"]].to_numpy(), [[0.7] * 2, [0.15] * 2, [0.15] * 2], atol=0.03
    )


def test_regex_keys_and_errors():
    sources = ["good/a_01_f1.png", "good/a_01_f2.png", "defect/a_02_f1.png", "defect/b_07.png"]
    assert groups.group_keys(sources, {"group_by": r"regex:_(\d+)"}) == ["01", "01", "02", "07"]
    assert groups.group_keys(sources, {"group_by": r"regex:[ab]_\d+"}) == ["a_01", "a_01", "a_02", "b_07"]
    assert groups.group_keys(sources, {"group_by": None}) is None
    with pytest.raises(ParamError, match=r"matches none of the 4 images \(e\.g\. 'good/a_01_f1\.png'\)"):
        groups.group_keys(sources, {"group_by": "regex:^tile"})
    with pytest.raises(ParamError, match=r"no group for 1 of 4 images, e\.g\. 'defect/b_07\.png'"):
        groups.group_keys(sources, {"group_by": r"regex:_(\d+)_f"})


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("sequence_key", "expected null"),
        ("column:", "expected null"),
        ("glob:*_f", "expected null"),
        (3, "expected null"),
        ("regex:(unclosed", "not a regular expression"),
    ],
)
def test_bad_group_by_values_are_refused_by_name(value, fragment):
    with pytest.raises(ParamError, match=r"prepare\.group_by") as e:
        groups.parse(value)
    assert fragment in str(e.value)


def folder_with_sequences(root, blank_first=False):
    """A folder-layout set: 8 good and 4 defective parts, 3 frames each, and manifest.csv naming the part
    (with `blank_first`, the first row's part is left empty)."""
    rows = []
    for part in range(12):
        label = "good" if part < 8 else "defect"
        for frame in range(3):
            name = f"{label}/p{part:02d}_f{frame}.png"
            (root / label).mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng(part * 10 + frame).integers(0, 256, (10, 14), np.uint8)
            Image.fromarray(pixels).save(root / name)
            rows.append({"file": name, "label": label, "part_id": f"part{part}"})
    if blank_first:
        rows[0]["part_id"] = ""
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return rows


def prep(root, group_by, **knobs):
    return {"root": str(root), "good_class": "good", "on_bad_image": "error", "group_by": group_by, **knobs}


def test_folder_layout_with_manifest_column_splits_by_part(tmp_path):
    from stages import prepare  # imports torch (via stages.lib.data): kept out of the module imports

    folder_with_sequences(tmp_path)
    loaded = datasets.load_folder(prep(tmp_path, "column:part_id"))
    assert loaded.table["group"].nunique() == 12 and "group" not in loaded.attributes
    knobs = {"max_images": 0, "val_fraction": 0.25, "test_fraction": 0.25}
    pixels, table = prepare.hash_and_split(loaded, knobs, seed=0)
    assert splitting.find_group_leaks(table) == []
    counts = prepare.split_counts(table, loaded.classes)
    assert counts["n_groups"] == 12 and counts["train_groups"] + counts["val_groups"] + counts["test_groups"] == 12
    assert counts["test_groups"] == counts["val_groups"] == 3 and counts["test_defect"] == 3  # 2 good + 1 defect parts
    manifest = datasets.write_prepared(tmp_path / "out", pixels, table)
    assert manifest.groupby("group")["split"].nunique().max() == 1
    assert "n_groups" not in prepare.split_counts(table.drop(columns="group"), loaded.classes)


def test_bad_groups_stop_before_any_image_is_decoded(tmp_path):
    """Every error below would otherwise be a decode error: a corrupt file sits in the set, on_bad_image=error."""
    folder_with_sequences(tmp_path)
    (tmp_path / "good" / "zz_broken.png").write_bytes(b"not a png")
    with pytest.raises(ParamError, match=r"has no column 'sequence'; its columns: \['file', 'label', 'part_id'\]"):
        datasets.load_folder(prep(tmp_path, "column:sequence"))
    with pytest.raises(InputError, match=r"gives no 'part_id' for 1 of 37 images, e\.g\. 'good/zz_broken\.png'"):
        datasets.load_folder(prep(tmp_path, "column:part_id"))
    with pytest.raises(ParamError, match="matches none of the 37 images"):
        datasets.load_folder(prep(tmp_path, "regex:^frame"))
    (tmp_path / "manifest.csv").unlink()
    with pytest.raises(MissingInputError, match=r"manifest\.csv"):
        datasets.load_folder(prep(tmp_path, "column:part_id"))
    with pytest.raises(ParamError, match=r"prepare\.root, which is not set"):
        groups.group_keys(["elpv:0"], {"root": None, "dataset": "elpv", "group_by": "column:x"})


def test_an_empty_group_value_is_named(tmp_path):
    folder_with_sequences(tmp_path, blank_first=True)
    with pytest.raises(InputError, match=r"gives no 'part_id' for 1 of 36 images, e\.g\. 'good/p00_f0\.png'"):
        datasets.load_folder(prep(tmp_path, "column:part_id"))


def test_prepare_check_refuses_bad_group_by_and_resize():
    from stages import prepare

    base = {"image_size": 32, "seed": 0, "device": "cpu", "threads": 1, "channels_last": False}
    good = {
        "dataset": "folder",
        "root": "x",
        "categories": None,
        "good_class": "good",
        "on_bad_image": "skip",
        "defect_threshold": 0.5,
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        "max_images": 0,
        "max_side": None,
        "group_by": "regex:^(\\w+)_",
        "resize": "pad",
    }
    assert prepare.check({"base": base, "prepare": good})["resize"] == "pad"
    with pytest.raises(ParamError, match=r"prepare\.group_by='part' is not allowed"):
        prepare.check({"base": base, "prepare": {**good, "group_by": "part"}})
    with pytest.raises(ParamError, match=r"prepare.resize='tile' is not allowed; expected one of \['crop', 'pad'"):
        prepare.check({"base": base, "prepare": {**good, "resize": "tile"}})


def test_bsdata_sequences_never_cross_splits():
    """The real BSData manifest: 99 time sequences of one spindle position; no sequence in two splits."""
    if not (BSDATA / "manifest.csv").is_file():
        pytest.skip(f"{BSDATA} not found: the real-data check needs the repo's sibling shared/data folder")
    sources = sorted(p.relative_to(BSDATA).as_posix() for p in BSDATA.glob("*/*.jpg"))
    keys = groups.group_keys(sources, {"root": str(BSDATA), "group_by": "column:sequence_key"})
    manifest = pd.read_csv(BSDATA / "manifest.csv").set_index("file")
    assert keys == manifest.loc[sources, "sequence_key"].tolist() and len(set(keys)) == 99
    labels = [s.split("/")[0] for s in sources]
    split = splitting.stratified_group_split(labels, keys, 0.15, 0.15, seed=42)
    table = pd.DataFrame({"group": keys, "split": split, "label": labels})
    assert splitting.find_group_leaks(table) == []
    counts = pd.crosstab(table["split"], table["label"])
    target = {"defect": 394 * 0.15, "good": 682 * 0.15}
    for name in ("val", "test"):  # within the largest sequence (57 frames) of 15 %
        assert all(abs(counts.loc[name, k] - t) <= 57 for k, t in target.items()), counts
