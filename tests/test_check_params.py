"""check_params: a params mistake fails first, in one line naming the key, and DVC removes no other stage's outputs.

The DVC probes run on a tiny repo (tests/test_pipeline_e2e.copy_repo) whose other stages' outputs are placeholder
files: check_params fails in seconds, so nothing has to be trained, and a removed output would show as a missing
file.
"""

import sys

import pytest
import yaml

from stages import check_params
from stages.lib.params import ParamError
from tests.test_pipeline_e2e import TINY, copy_repo, dvc, git, ran, set_params, sh

PLACEHOLDER = "placeholder for another stage's output\n"
CHECKED = "artifacts/params_checked.txt"


def placeholders(repo):
    """A file at every output path of every stage (a folder output gets one file inside); check_params's holds
    what it writes."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        outs = [o.def_path for s in dvc_repo.index.stages for o in s.outs]
    for out in outs:
        path = repo / out
        path = path if path.suffix else path / "placeholder.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(check_params.PASSED if out == CHECKED else PLACEHOLDER)
    return outs


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A tiny repo as after a run: every output in place, in the DVC cache and in dvc.lock."""
    repo = copy_repo(tmp_path_factory.mktemp("repo"), TINY)
    assert len(placeholders(repo)) > 50
    dvc("commit", "-f", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "every stage's outputs", cwd=repo)
    return repo


def snapshot(repo):
    """Every file DVC could remove (all but the git and DVC folders and the pipeline's code), with its bytes."""
    skip = {".git", ".dvc", "stages", "params.yaml", "dvc.yaml", "dvc.lock"}
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and p.relative_to(repo).parts[0] not in skip
    }


def said(proc):
    """check_params's lines in DVC's output."""
    return [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("check_params: ")]


@pytest.mark.parametrize(
    "override,line",
    [
        # DVC's own hint for `-S train.epoch=3` (no such key) is the `+` form, which adds the typo
        ("+train.epoch=3", "check_params: train.epoch is not a known key (did you mean 'train.epochs'?)"),
        ("prune.ratio=abc", "check_params: prune.ratio='abc' is not allowed; expected a number in [0, 1)"),
    ],
)
def test_a_mistake_in_dvc_exp_run_fails_first_and_the_documented_undo_restores_everything(repo, override, line):
    before = snapshot(repo)
    proc = dvc("exp", "run", "-S", override, cwd=repo, check=False)
    assert proc.returncode != 0 and len(said(proc)) == 1 and line in said(proc)[0], proc.stdout + proc.stderr
    assert ran(proc.stdout) == {"check_params"}
    after = snapshot(repo)
    assert CHECKED not in after and after == {k: v for k, v in before.items() if k != CHECKED}  # only its own
    sh(["git", "checkout", "-q", "params.yaml"], repo)  # docs/knobs.md: undo a failed dvc exp run
    dvc("checkout", cwd=repo)
    assert snapshot(repo) == before


@pytest.mark.parametrize(
    "key,value,line",
    [
        (
            "compare.models",
            ["teacher", "studnet_kd"],
            "check_params: compare.models has 'studnet_kd' (did you mean 'student_kd'?), which is not made by a stage",
        ),
        (  # with test_fraction 0.15: 4 of 80 images to train on
            "prepare.val_fraction",
            0.8,
            "check_params: prepare.val_fraction=0.8 + prepare.test_fraction=0.15 leave 5% of the images for training",
        ),
        ("report.reference", "teacher_fp32", "check_params: report.reference='teacher_fp32' is not a compared variant"),
        (  # the quantize stage's own check, run by check_params before any stage
            "quantize.recipes.int8_static_pc.per_chanel",
            False,
            "kind 'ort_static' has no option 'per_chanel' (did you mean 'per_channel'?)",
        ),
    ],
)
def test_a_mistake_in_params_yaml_fails_dvc_repro_first(repo, key, value, line):
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    *parents, last = key.split(".")
    section = params
    for part in parents:
        section = section[part]
    section[last] = value
    before = snapshot(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        proc = dvc("repro", cwd=repo, check=False)
    finally:
        (repo / "params.yaml").write_text(text)
    assert proc.returncode != 0 and len(said(proc)) == 1 and line in said(proc)[0], proc.stdout + proc.stderr
    assert ran(proc.stdout) == {"check_params"}
    assert snapshot(repo) == {k: v for k, v in before.items() if k != CHECKED}
    (repo / CHECKED).write_text(check_params.PASSED)  # what `dvc checkout` restores, without its seconds


def test_an_empty_params_yaml_stops_dvc_before_any_stage(repo):
    """DVC reads params.yaml to expand dvc.yaml's `foreach` before any stage runs, so the message is DVC's own;
    a `vars:` default in dvc.yaml cannot help (DVC refuses to redefine a key params.yaml also has)."""
    before = snapshot(repo)
    (repo / "params.yaml").write_text("")
    try:
        proc = dvc("repro", cwd=repo, check=False)
    finally:
        sh(["git", "checkout", "-q", "params.yaml"], repo)
    errors = [x for x in proc.stderr.splitlines() if x.startswith("ERROR")]
    assert proc.returncode != 0 and len(errors) == 1 and "Could not find 'prune.sweep'" in errors[0], proc.stderr
    assert not ran(proc.stdout) and snapshot(repo) == before


@pytest.fixture
def params(root):
    return yaml.safe_load((root / "params.yaml").read_text())


@pytest.fixture
def pipeline(root):
    return yaml.safe_load((root / "dvc.yaml").read_text())


def test_valid_params_write_the_same_bytes_whatever_the_knobs(root, tmp_path, monkeypatch, params):
    """Today's params and the tiny profile pass every stage's check, and the output does not depend on the knobs,
    so a changed knob reruns only the stages that read it."""
    (tmp_path / "params.yaml").write_text((root / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    written = []
    for overrides in (None, TINY):
        if overrides:
            set_params(tmp_path, overrides)
        out = tmp_path / f"checked{len(written)}.txt"
        monkeypatch.setattr(sys, "argv", ["check_params", str(root / "dvc.yaml"), str(out)])
        check_params.main()
        written.append(out.read_bytes())
    assert written[0] == written[1] == check_params.PASSED.encode()


def test_models_made_are_the_training_stages_and_every_sweep_and_sparsify_entry(pipeline, params):
    params["prune"]["sweep"] = [10, 50]
    params["sparsify"]["models"] = {"student_sparse70": {"pattern": "unstructured", "sparsity": 0.7}}
    made = check_params.models_made(pipeline, params)
    assert made == {
        "teacher",
        "student",
        "student_kd",
        "student_pruned",
        "student_pruned_r10",
        "student_pruned_r50",
        "student_sparse70",
    }


def test_report_steps_may_name_variants_this_run_does_not_compare(pipeline, params):
    """A step whose variants are not compared is left out by the report (as before); a name no model and recipe
    make is a typo."""
    made = check_params.models_made(pipeline, params)
    params["compare"]["recipes"] = ["torch_fp32", "ort_fp32"]  # the int8 steps are left out, not refused
    params["compare"]["openvino"] = ["ov_fp32"]  # (ov_int8 runs int8_auto's file, not made now)
    params["quantize"]["openvino"] = [{"recipe": "ov_fp32", "source": "ort_fp32"}]
    check_params.check_names(params, made)
    params["report"]["steps"]["int8"] = ["student_kd_ort_fp32", "student_kd_int8_static_p"]
    with pytest.raises(ParamError, match=r"^report\.steps\.int8 has 'student_kd_int8_static_p' \(did you mean"):
        check_params.check_names(params, made)


def test_openvino_variants_need_their_pair_and_their_source_compared(pipeline, params):
    made = check_params.models_made(pipeline, params)
    params["compare"]["recipes"] = ["torch_fp32", "ort_fp32"]
    with pytest.raises(
        ParamError, match=r"^compare\.openvino has 'ov_int8', which runs the file of recipe 'int8_auto'"
    ):
        check_params.check_names(params, made)
    params["compare"]["openvino"] = ["ov_fp32", "ov_fp3"]
    with pytest.raises(ParamError, match=r"^compare\.openvino has 'ov_fp3' \(did you mean 'ov_fp32'\?\), which is no"):
        check_params.check_names(params, made)
    params["compare"]["openvino"] = ["ov_bf16"]  # quantize_ov would make other variants than evaluate_ov scores
    with pytest.raises(ParamError, match=r"^quantize\.openvino makes \['ov_fp32', 'ov_int8'\] but compare\.openvino"):
        check_params.check_names(params, made)
    params["compare"]["openvino"] = ["ov_fp32"]
    params["quantize"]["openvino"] = [{"recipe": "ov_fp32", "source": "int8_auto"}]
    with pytest.raises(ParamError, match=r"^quantize\.openvino item \{recipe: ov_fp32, source: int8_auto\}"):
        check_params.check_names(params, made)
    params["compare"]["openvino"], params["quantize"]["openvino"] = [], []  # no OpenVINO variant at all
    check_params.check_names(params, made)


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("compare", "recipes", [], r"^compare\.recipes is empty; expected at least one of \["),
        ("compare", "recipes", ["ort_fp32", "int8_statc_pc"], r"^compare\.recipes has 'int8_statc_pc' \(did you mean"),
        ("report", "steps", {"int8": ["student_kd_ort_fp32"]}, r"^report\.steps\.int8=\['student_kd_ort_fp32'\]"),
    ],
)
def test_names_that_tie_sections_together(pipeline, params, section, key, value, message):
    params[section][key] = value
    with pytest.raises(ParamError, match=message):
        check_params.check_names(params, check_params.models_made(pipeline, params))


def test_every_other_stage_waits_for_the_check(pipeline):
    stages = pipeline["stages"]
    out = stages["check_params"]["outs"][0]
    assert next(iter(stages)) == "check_params" and "params.yaml" in stages["check_params"]["deps"]
    for name, stage in stages.items():
        if name != "check_params":
            assert out in stage.get("do", stage)["deps"], name
