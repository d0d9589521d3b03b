"""`dvc repro` on a tiny profile in a temporary copy of the repo: every stage runs for real.

A few dozen ELPV images at 64x64, one epoch each; the same stages, libraries and
weights as the default run. Checks outputs, that a rerun does nothing, and that a
quantization knob reruns only quantize and what follows it.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

TINY = {
    "base": {"image_size": 64},
    "prepare": {"max_images": 80},
    "train": {"epochs": 1, "batch_size": 16},
    "prune": {"epochs": 1},
    "quantize": {"calibration_images": 8},
    "benchmark": {"warmup": 1, "iters": 5, "batch_size": 4},
}
UPSTREAM = {"prepare", "finetune_teacher", "train_student", "distill", "prune"}


def sh(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc(*args, cwd, check=True):
    return sh([sys.executable, "-m", "dvc", *args], cwd, check)


def ran(output):
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_params(repo, overrides):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def copy_repo(dest, overrides):
    """The pipeline's tracked files in a fresh git + DVC repo at `dest`, with params overridden."""
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "stages"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    (dest / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    set_params(dest, overrides)
    sh(["git", "init", "-q"], dest)
    sh(["git", "add", "-A"], dest)
    sh(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "tiny"], dest)
    return dest


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repo"), TINY)
    first = dvc("repro", cwd=repo)
    return repo, first.stdout


def test_every_stage_runs_and_writes_its_metrics(repo):
    repo, out = repo
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    variants = next(v["variants"] for v in spec["vars"] if "variants" in v)
    expected = ["prepare", "finetune_teacher", "train_student", "distill", "prune", "report"]
    expected += [f"quantize/{m}" for m in ("teacher", "student_kd", "student_pruned")]
    expected += [f"evaluate/{v}" for v in variants] + [f"benchmark/{v}" for v in variants]
    for name in expected:
        assert (repo / "metrics" / f"{name}.json").exists(), name
    assert len(ran(out)) == 5 + 3 + 2 * len(variants) + 1

    prune = json.loads((repo / "metrics/prune.json").read_text())
    assert prune["params_after_m"] < prune["params_before_m"]
    ev = json.loads((repo / "metrics/evaluate/student_kd_int8.json").read_text())
    assert {"recall", "fnr", "precision", "f1", "accuracy", "auroc", "ap", "threshold", "recall_at_fpr_5pct"} <= set(ev)
    assert {"recall_ci95", "precision_ci95", "f1_ci95", "auroc_ci95"} <= set(ev) and "cell_type" in ev["by"]
    assert (repo / "artifacts/predictions/student_kd_int8.csv").exists()
    bench = json.loads((repo / "metrics/benchmark/student_kd_int8.json").read_text())
    assert bench["latency_ms_p50"] > 0 and bench["size_mb"] > 0 and bench["peak_rss_mb"] > 0
    report = json.loads((repo / "metrics/report.json").read_text())
    assert set(report) == set(variants) and report["teacher_fp32"]["speedup_x"] == 1.0
    assert report["teacher_fp32"]["recall_delta_pt_ci_low"] == 0  # paired with itself
    for f in ("comparison.csv", "comparison.md", "pareto.png"):
        assert (repo / "plots/report" / f).stat().st_size > 0
    assert (repo / "plots/train/student_kd/plots/metrics/val/auroc.tsv").exists()
    assert "recall" in dvc("metrics", "show", cwd=repo).stdout
    dvc("plots", "show", "-o", str(repo / "plots_html"), cwd=repo)
    assert (repo / "plots_html" / "index.html").exists()


def test_second_repro_runs_nothing(repo):
    repo, _ = repo
    assert ran(dvc("repro", cwd=repo).stdout) == set()


def test_quantize_param_reruns_only_quantize_and_downstream(repo):
    repo, _ = repo
    set_params(repo, {"quantize": {"per_channel": False}})
    stages = ran(dvc("repro", cwd=repo).stdout)
    assert {"quantize@teacher", "quantize@student_kd", "quantize@student_pruned"} <= stages
    assert {"evaluate@student_kd_int8", "benchmark@student_kd_int8", "report"} <= stages
    assert not stages & UPSTREAM
    assert all(s.split("@")[0] in {"quantize", "evaluate", "benchmark", "report"} for s in stages), stages


def test_bad_param_stops_stage_and_keeps_earlier_results(repo):
    repo, _ = repo
    set_params(repo, {"prune": {"ratio": 1.2}})
    proc = dvc("repro", "prune", cwd=repo, check=False)
    assert proc.returncode != 0
    assert "prune.ratio=1.2" in proc.stdout + proc.stderr
    assert (repo / "artifacts/student_kd/model.pt").exists() and (repo / "metrics/distill.json").exists()
