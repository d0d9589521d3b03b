"""Strict params: an unknown, missing or mistyped key stops a stage at once, in one line, without a traceback."""

import copy
import re
import subprocess
import sys

import pytest
import yaml

from stages.lib import schema, training
from stages.lib.params import ParamError, load
from stages.lib.pruning import sparsity
from tests.test_pipeline_e2e import TINY, set_params


@pytest.fixture
def params(root):
    return yaml.safe_load((root / "params.yaml").read_text())


def stage_sections(root):
    """{stage: the params.yaml sections it reads}, from the `params:` lists in dvc.yaml."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    found = {}
    for name, stage in spec["stages"].items():
        keys = stage.get("do", stage).get("params", [])
        found[name] = list(dict.fromkeys(str(k).split(".")[0] for k in keys))
    return found


def test_every_stage_accepts_todays_params(root, params):
    for stage, sections in stage_sections(root).items():
        assert schema.check(params, sections) is params, stage
    assert set(schema.SCHEMA) == set(params), "the schema and params.yaml name the same sections"


def test_tiny_profile_of_the_end_to_end_test_is_accepted(root, tmp_path):
    (tmp_path / "params.yaml").write_text((root / "params.yaml").read_text())
    set_params(tmp_path, TINY)
    load(*schema.SCHEMA, path=tmp_path / "params.yaml")


def test_documented_overrides_are_accepted(params):
    params["prune"]["sweep"] = [10, 20, 30, 40, 50, 60, 70]
    params["sparsify"]["models"] = {"student_sparse70": {"pattern": "unstructured", "sparsity": 0.7}}
    params["select"].update({"min_recall": None, "max_fpr": None, "max_latency_ms": 5, "max_size_mb": 2.5})
    params["prepare"].update({"dataset": "mvtec_ad", "root": "/data/mvtec", "categories": ["bottle"]})
    params["prepare"]["good_class"] = "ok"
    schema.check(params, ["prune", "sparsify", "select", "prepare"])


@pytest.mark.parametrize(
    "section,typo,meant",
    [("train", "epoch", "epochs"), ("prune", "ration", "ratio"), ("evaluate", "target_recal", "target_recall")],
)
def test_unknown_key_names_the_closest_known_one(params, section, typo, meant):
    params[section][typo] = 3
    with pytest.raises(
        ParamError, match=rf"^{section}\.{typo} is not a known key \(did you mean '{section}\.{meant}'\?\)"
    ):
        schema.check(params, ["base", section])


@pytest.mark.parametrize("section,key", [("train", "lr"), ("benchmark", "rounds"), ("select", "objective")])
def test_missing_key(params, section, key):
    del params[section][key]
    with pytest.raises(ParamError, match=rf"^{section}\.{key} is missing; {section} needs \["):
        schema.check(params, [section])


@pytest.mark.parametrize("section", ["train", "distill"])
def test_missing_section(params, section):
    del params[section]
    with pytest.raises(ParamError, match=rf"params\.yaml has no section '{section}'; this stage reads"):
        schema.check(params, ["base", section])


def test_unknown_section_is_named(params):
    params["trian"] = {"epochs": 3}
    with pytest.raises(ParamError, match=r"section 'trian' is not a known section \(did you mean 'train'\?\)"):
        schema.check(params, ["base"])


@pytest.mark.parametrize(
    "section,key,value,expected",
    [
        ("train", "epochs", "3", "an integer"),
        ("train", "epochs", 3.0, "an integer"),
        ("base", "channels_last", "yes", "true or false"),
        ("base", "device", "gpu", "one of ['cpu', 'cuda']"),
        ("distill", "alpha", True, "a number"),
        ("prune", "sweep", [10, "20"], "a list of integers"),
        ("select", "max_fpr", "0.4", "a number or null"),
        ("compare", "models", "teacher", "a list of strings"),
        ("quantize", "recipes", [], "a mapping"),
    ],
)
def test_wrong_type(params, section, key, value, expected):
    params[section][key] = value
    message = f"{section}.{key}={value!r} is not allowed; expected {expected}"
    with pytest.raises(ParamError, match=f"^{re.escape(message)}$"):
        schema.check(params, [section])


def test_numbers_may_be_written_as_integers(params):
    params["distill"]["temperature"] = 2  # YAML reads `2` as an int; a float knob takes it
    schema.check(params, ["distill"])


def test_sparsify_model_spec_rejects_unknown_and_ignored_keys():
    with pytest.raises(
        ParamError,
        match=r"sparsify\.models\.s\.sparsty is not a known key \(did you mean 'sparsify\.models\.s\.sparsity'",
    ):
        sparsity.check("sparsify.models.s", {"pattern": "unstructured", "sparsty": 0.5})
    with pytest.raises(ParamError, match=r"sparsify\.models\.s\.sparsity is not a known key.*\['pattern'\]"):
        sparsity.check("sparsify.models.s", {"pattern": "2:4", "sparsity": 0.5})


def run_stage(module, args, cwd, root):
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={"PYTHONPATH": str(root)})


def assert_one_line(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_stage_with_a_typo_in_params_prints_one_line(tmp_path, root, params):
    bad = copy.deepcopy(params)
    bad["train"]["epoch"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    proc = run_stage("stages.distill", ["d", "t.pt", "out", "live", "m.json"], tmp_path, root)
    line = assert_one_line(proc, "train.epoch is not a known key", "did you mean 'train.epochs'")
    assert line.startswith("distill: ")
    assert not (tmp_path / "out").exists()


def test_stage_with_a_missing_section_prints_one_line(tmp_path, root, params):
    del params["distill"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_stage("stages.prune", ["d", "s.pt", "t.pt", "out", "live", "m.json"], tmp_path, root)
    assert_one_line(proc, "prune: params.yaml has no section 'distill'")


def test_exponent_floats_that_dvc_writes_are_numbers(root, tmp_path):
    """`dvc exp run -S train.lr=0.00003` writes `lr: 3e-05` (YAML 1.2); PyYAML alone would read a string."""
    text = (root / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(re.sub(r"(?m)^(  lr: )\S+", r"\g<1>3e-05", text, count=1))
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "3e-05"  # the pitfall
    p = load("train", path=str(path))
    assert p["train"]["lr"] == 3e-05
    path.write_text(re.sub(r"(?m)^(  lr: )\S+", r"\g<1>1e", text, count=1))  # not a number: still refused
    with pytest.raises(ParamError, match=r"train\.lr='1e' is not allowed"):
        training.check_recipe(load("train", path=str(path))["train"])


def test_base60_looking_values_that_dvc_writes_are_strings(root, tmp_path):
    """`dvc exp run -S` rewrites params.yaml in YAML 1.2 and drops the quotes of sparsify's `pattern: '2:4'`;
    YAML 1.1 (PyYAML) would read the base-60 integer 124, and every later run would refuse the pattern."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sparsify"]["models"] = {"student_sparse24": {"pattern": "2:4"}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params).replace("'2:4'", "2:4"))
    assert "pattern: 2:4\n" in path.read_text() and yaml.safe_load(path.read_text())["sparsify"]["models"] == {
        "student_sparse24": {"pattern": 124}
    }  # the pitfall
    spec = load("sparsify", path=str(path))["sparsify"]["models"]["student_sparse24"]
    assert sparsity.check("sparsify.models.student_sparse24", spec)["pattern"] == "2:4"
    assert load("base", "train", path=str(path))["train"] == params["train"]  # other numbers read as before
