"""lab/crossdata.py, the cross-dataset table (study `datasets`): one row per run from its params and metrics, a
run where nothing was deployed, where compression first hurt; and lab.collect's NAME=REVISION for a committed run."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from lab import crossdata, tables
from lab.archive import Archive
from lab.collect import snapshot
from lab.kinds import KINDS
from lab.studies import DATASETS, OLD

ROOT = Path(__file__).resolve().parents[1]
FPR = "fpr_at_recall_95pct"
SAME = {"auroc": "same", FPR: "same"}


def variant(auroc, fpr, delta_auroc=0.0, delta_fpr=0.0, verdicts=SAME, speedup=1.0, size_mb=10.0):
    """A report.json variant: test metrics with intervals, paired deltas against the reference, speed-ups."""
    v = {"auroc": auroc, "auroc_ci_low": auroc - 0.03, "auroc_ci_high": auroc + 0.02, FPR: fpr}
    v |= {f"{FPR}_ci_low": fpr - 0.1, f"{FPR}_ci_high": fpr + 0.2, "size_mb": size_mb}
    for key, value in (("auroc", delta_auroc), (FPR, delta_fpr)):
        k = f"{key}_delta_pt"
        v |= {k: value, f"{k}_ci_low": value - 2, f"{k}_ci_high": value + 2, f"{k}_verdict": verdicts[key]}
    for sfx, x in (("", speedup), ("_1t", speedup + 1)):
        v |= {f"speedup_x{sfx}": x, f"speedup_x{sfx}_ci_low": x - 0.5, f"speedup_x{sfx}_ci_high": x + 0.5}
        v[f"speedup_x{sfx}_verdict"] = "better"
    return v


def step(before, after, auroc=("same", 0.0), fpr=("same", 0.0)):
    d = {}
    for key, (verdict, value) in (("auroc", auroc), (FPR, fpr)):
        d |= {
            f"{key}_delta_pt": value,
            f"{key}_delta_pt_ci95": [value - 1, value + 1],
            f"{key}_delta_pt_verdict": verdict,
        }
    return {"before": before, "after": after, "delta": d}


def fake_run(name, prepare, steps, selected="student_kd_int8_auto", closest=None, threads=1):
    """{archive member: bytes} of a finished run with the files the table reads."""
    params = {
        "base": {"seed": 42, "image_size": 128, "threads": 2},
        "prepare": {"dataset": "elpv", "root": None, "categories": None, "group_by": None, "resize": "squash"}
        | prepare,
        "evaluate": {"target_recall": 0.95},
        "report": {"reference": "teacher_torch_fp32"},
    }
    report = {
        "variants": {
            "teacher_torch_fp32": variant(0.93, 0.413),
            "student_kd_int8_auto": variant(0.91, 0.45, -2.0, 3.5, {"auroc": "worse", FPR: "same"}, 4.0, 3.62),
        },
        "steps": steps,
    }
    select = {"selected": selected, "timing": {"threads": threads}, "closest": closest}
    files = {
        "params.yaml": yaml.safe_dump(params, sort_keys=False),
        "metrics/prepare.json": {"test_images": 70, "test_good": 50, "test_defect": 20}
        | ({"test_groups": 9} if prepare.get("group_by") else {}),
        "metrics/report.json": report,
        "metrics/select.json": select,
        "metrics/distill.json": {"train_minutes": 4.5},
        "metrics/train_student.json": {"train_minutes": 6.0},
        "experiment.json": {"name": name},
    }
    return {
        f"{name}/{path}": (data if isinstance(data, str) else json.dumps(data)).encode() for path, data in files.items()
    }


STEPS = {
    "runtime": step("teacher_torch_fp32", "teacher_ort_fp32"),
    "distillation": step("student_torch_fp32", "student_kd_torch_fp32", auroc=("better", 1.0)),
    "int8": step("student_kd_ort_fp32", "student_kd_int8_auto", fpr=("worse", 6.2)),
    "pruning": step("student_kd_ort_fp32", "student_pruned_ort_fp32", auroc=("worse", -3.4)),
}


@pytest.fixture
def archive():
    bsdata = {"dataset": "folder", "root": "../shared/data/bsdata_ballscrew", "group_by": "column:sequence_key"}
    closest = {"variant": "student_kd_int8_auto", "binding": "min_recall", "value": 0.81, "limit": 0.85, "by": 0.04}
    members = fake_run("ds-elpv", {}, {k: STEPS[k] for k in ("runtime", "distillation")}, threads=2)
    members |= {"reference/params.yaml": members["ds-elpv/params.yaml"], "reference/commit": b"abcdef0123456789\n"}
    members |= fake_run("ds-bsdata", bsdata, STEPS, selected=None, closest=closest)
    bottle = {"dataset": "mvtec_ad", "root": "../shared/data/mvtec_ad", "categories": ["bottle"]}
    members |= fake_run("ds-bottle", bottle, STEPS)
    return Archive(members)


def test_a_row_per_data_set_in_the_plans_order(archive):
    rows, columns, lines = KINDS["datasets"](archive, DATASETS, tables.reference(archive))
    assert [r["dataset"] for r in rows] == ["ELPV", "MVTec AD bottle", "BSData (by sequence)"]
    elpv, bottle, bsdata = rows
    assert (elpv["test_good"], elpv["test_defect"], bsdata["test_groups"]) == (50, 20, 9)
    assert (elpv["ref_auroc"], elpv["ref_auroc_lo"], elpv["ref_auroc_hi"]) == (0.93, 0.9, 0.95)
    assert (elpv["ref_fpr_pct"], elpv["ref_fpr_pct_lo"], elpv["ref_fpr_pct_hi"]) == (41.3, 31.3, 61.3)
    assert bottle["deployed"] == "student_kd_int8_auto"
    assert (bottle["auroc_pt"], bottle["auroc_pt_verdict"], bottle["fpr_pt"], bottle["fpr_pt_verdict"]) == (
        -2.0,
        "worse",
        3.5,
        "same",
    )
    assert (bottle["speedup_x"], bottle["speedup_threads"]) == (5.0, 1)  # select judged 1 thread: the _1t speed-up
    assert (elpv["speedup_x"], elpv["speedup_threads"]) == (4.0, 2)  # ... 2 threads (base.threads): the plain one
    assert (bottle["size_mb"], bottle["train_minutes"]) == (3.62, 10.5)
    assert "prepare.categories=[bottle]" in bottle["command"]
    headers = [h for h, _ in columns]
    assert headers[0] == "data set" and "compression first hurt" in headers
    table = tables.markdown(columns, rows)
    assert "| `student_kd_int8_auto` | -2.0 [-4.0, +0.0] ▼ | +3.5 [+1.5, +5.5] |" in table[3]
    assert any("ds-bsdata" in line and "group_by" in line for line in lines)


def test_nothing_deployed_names_the_binding_constraint(archive):
    rows, columns, _ = KINDS["datasets"](archive, DATASETS, {})
    bsdata = rows[-1]
    assert (bsdata["deployed"], bsdata["auroc_pt"], bsdata["speedup_x"], bsdata["size_mb"]) == (
        "none",
        None,
        None,
        None,
    )
    assert bsdata["binding"] == "closest student_kd_int8_auto misses select.min_recall (0.81 vs 0.85)"
    cells = tables.markdown(columns, rows)[-1].split(" | ")
    assert "none: closest student_kd_int8_auto misses select.min_recall (0.81 vs 0.85)" in cells
    assert cells.count("—") == 4  # Δ AUROC, Δ FPR, speed-up, size


def test_compression_first_hurt_is_the_first_distinguishably_worse_step(archive):
    guards = {"auroc": "AUROC", FPR: "FPR @95 % recall"}
    assert crossdata.first_hurt(STEPS, guards) == "int8 (FPR @95 % recall +6.2 pt)"  # a better step does not count
    assert crossdata.first_hurt({k: STEPS[k] for k in ("runtime", "distillation")}, guards) == "none"
    assert crossdata.first_hurt({"pruning": STEPS["pruning"], "int8": STEPS["int8"]}, guards).startswith("pruning")
    rows, _, _ = KINDS["datasets"](archive, DATASETS, {})
    assert [r["first_hurt"] for r in rows] == ["none", *["int8 (FPR @95 % recall +6.2 pt)"] * 2]


def test_dataset_names():
    assert crossdata.dataset_name({"dataset": "elpv", "root": None}) == "ELPV"
    screw = {"dataset": "folder", "root": "../shared/data/mvtec_screw/", "categories": None, "group_by": None}
    assert crossdata.dataset_name(screw) == "MVTec AD screw"
    tire = {"dataset": "folder", "root": "/data/mvtec3d_tire", "group_by": "regex:^(\\w+)_"}
    assert crossdata.dataset_name(tire) == "MVTec 3D tire (by file name)"
    assert crossdata.dataset_name({"dataset": "folder", "root": "/x/my_parts"}) == "my_parts"


def test_readme_is_short_and_reproduces_at_the_reference_commit(archive):
    readme, table, line = tables.render(DATASETS, archive)
    assert line == (  # the example, ds-bsdata
        "git checkout abcdef0 && dvc exp run -S prepare.dataset=folder -S prepare.root=../shared/data/bsdata_ballscrew "
        "-S 'prepare.group_by=\"column:sequence_key\"'"
    )
    assert "(params as at abcdef0)" in readme and OLD not in readme
    assert "earlier README.md" not in readme  # the archive holds none
    assert len(readme.encode()) < 5 * 1024
    assert table.splitlines()[0].startswith("run,dataset,image_size,resize,test_good,test_defect,test_groups,")
    assert len(table.splitlines()) == 4


def test_the_committed_run_gives_a_row():
    """The committed default run's own params.yaml and metrics (the real shapes of report.json and select.json)."""
    files = [ROOT / "params.yaml", *sorted((ROOT / "metrics").rglob("*.json"))]
    members = {f"ds-elpv/{p.relative_to(ROOT).as_posix()}": p.read_bytes() for p in files}
    members["ds-elpv/experiment.json"] = b"{}"
    (row,) = crossdata.rows(Archive(members), ["ds-elpv"], yaml.safe_load(members["ds-elpv/params.yaml"]))
    report = json.loads(members["ds-elpv/metrics/report.json"])
    selection = json.loads(members["ds-elpv/metrics/select.json"])
    ref = report["variants"][row["reference"]]
    assert (row["dataset"], row["command"]) == ("ELPV", "dvc exp run")
    assert row["ref_auroc"] == round(ref["auroc"], 3) and row["ref_fpr_pct"] == round(100 * ref[FPR], 1)
    assert row["deployed"] == (selection["selected"] or "none")
    assert row["first_hurt"] == "none" or row["first_hurt"].split(" (")[0] in report["steps"]
    assert row["test_good"] + row["test_defect"] == json.loads(members["ds-elpv/metrics/prepare.json"])["test_images"]


def test_collect_names_a_committed_run(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    git("init", "-q")
    (tmp_path / "README.md").write_text("x\n")
    git("add", "README.md")
    git("commit", "-qm", "base")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "params.yaml").write_text("base: {seed: 1}\n")
    (tmp_path / "metrics" / "report.json").write_text("{}\n")
    (tmp_path / "metrics" / "notes.txt").write_text("not kept\n")
    git("add", ".")
    git("commit", "-qm", "the run")
    monkeypatch.chdir(tmp_path)
    members = snapshot("ds-elpv=HEAD")
    assert sorted(members) == ["ds-elpv/experiment.json", "ds-elpv/metrics/report.json", "ds-elpv/params.yaml"]
    info = json.loads(members["ds-elpv/experiment.json"])
    assert (info["name"], info["revision"], info["files"]) == ("ds-elpv", "HEAD", 2)
