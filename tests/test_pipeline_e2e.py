"""`dvc repro` on a tiny profile in a temporary copy of the repo: every stage runs for real.

A few dozen ELPV images at 64x64, one epoch each; the same stages, libraries and
weights as the default run. Checks outputs, that a rerun does nothing, that a clone on the
same machine reuses the benchmark and one on another machine re-measures it (and nothing
else), that a quantization knob puts only that recipe's quantize stages out of date, and that
`dvc plots show` renders every plot offline in headless Chromium.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from stages.lib import data, deploy, models, training
from stages.lib.deploy import selection
from stages.lib.quantization import recipes
from tests.conftest import ROOT

TINY = {
    "base": {"image_size": 64},
    "prepare": {"max_images": 80},
    "train": {"epochs": 1, "batch_size": 16},
    "prune": {"epochs": 1, "greedy_step": 0.2, "greedy_images": 32},  # the default greedy search, coarser
    # One sparse model: the stage runs both patterns alike (unstructured's masks: tests/test_pruning_sparsity.py)
    "sparsify": {"epochs": 1, "models": {"student_sparse24": {"pattern": "2:4"}}},
    # Every model in PyTorch, in static INT8 and that INT8 file in OpenVINO: each runtime and each compression
    # step once. ONNX Runtime FP32 (ort_fp32, the default's third recipe) runs end to end in the killed-run test.
    "compare": {"recipes": ["torch_fp32", "int8_auto"], "openvino": ["ov_int8"]},
    "quantize": {"sensitivity_images": 4, "openvino": [{"recipe": "ov_int8", "source": "int8_auto"}]},
    "evaluate": {"bootstrap": 200, "threshold_rule": "lower_bound"},  # the small-val-set fallback path
    # no warm-up round: tests/test_benchmark_rounds.py checks those
    "benchmark": {"rounds": 2, "warmup_rounds": 0, "seconds": 0.02, "min_calls": 3, "warmup": 1, "batch_size": 4},
    # ~3 validation defects: no 95 % lower bound can reach a recall floor, and FPR means little
    "select": {"min_recall": None, "max_fpr": None},
    "report": {
        "steps": {  # the default's steps, each among the variants compared here
            "runtime": ["student_kd_int8_auto", "student_kd_ov_int8"],  # the same INT8 file: ORT -> OpenVINO
            "distillation": ["student_torch_fp32", "student_kd_torch_fp32"],
            "smaller_model": ["teacher_torch_fp32", "student_kd_torch_fp32"],
            "int8": ["student_kd_torch_fp32", "student_kd_int8_auto"],
            "pruning": ["student_kd_torch_fp32", "student_pruned_torch_fp32"],
            "pruned_int8": ["student_pruned_torch_fp32", "student_pruned_int8_auto"],
        }
    },
}
# Applied to every recipe of quantize.recipes whose kind takes the option. int8_auto keeps at most one layer in
# float: its ranking and re-quantizing run once (on ~8 validation images every fit is noise; tests/test_int8_auto.py
# checks the search itself).
TINY_RECIPES = {"calibration_images": 8, "max_fp32_layers": 1}
UPSTREAM = {"prepare", "finetune_teacher", "train_student", "distill", "prune", "sparsify"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def sh(args, cwd, check=True, env=None):
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc(*args, cwd, check=True, env=None):
    return sh([sys.executable, "-m", "dvc", *args], cwd, check, env)


def git(*args, cwd):
    return sh(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd)


def ran(output):
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_params(repo, overrides):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    for name, recipe in params["quantize"]["recipes"].items():
        takes = recipes.check(name, recipe)  # with its kind's defaults
        recipe.update({k: v for k, v in TINY_RECIPES.items() if k in takes})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def copy_repo(dest, overrides):
    """The pipeline's tracked files in a fresh git + DVC repo at `dest`, with params overridden."""
    for name in ("dvc.yaml", "params.yaml", "requirements.txt", ".dvcignore", ".gitignore", "stages"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    set_params(dest, overrides)
    sh(["git", "init", "-q"], dest)
    git("add", "-A", cwd=dest)
    git("commit", "-qm", "tiny", cwd=dest)
    return dest


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repo"), TINY)
    first = dvc("repro", cwd=repo)
    return repo, first.stdout


def compared(repo):
    compare = yaml.safe_load((repo / "params.yaml").read_text())["compare"]
    return [f"{m}_{r}" for m in compare["models"] for r in compare["recipes"] + compare["openvino"]]


def test_every_stage_runs_and_writes_its_outputs(repo):
    repo, out = repo
    variants = compared(repo)
    sparse = yaml.safe_load((repo / "params.yaml").read_text())["sparsify"]["models"]
    expected = [
        "prepare",
        "finetune_teacher",
        "train_student",
        "distill",
        "prune/student_pruned",
        "report",
        "benchmark",
        "select",
    ]
    expected += [f"prune/{m}" for m in sparse]
    expected += [f"quantize/{v}" for v in variants] + [f"evaluate/{v}" for v in variants]
    for name in expected:
        assert (repo / "metrics" / f"{name}.json").exists(), name
    # check_params, prepare, the three trainings and prune; + fingerprint, benchmark, select, report, bundle_vega
    assert len(ran(out)) == 6 + len(sparse) + 2 * len(variants) + 5
    for v in variants:
        info = json.loads((repo / "artifacts/variants" / v / "variant.json").read_text())
        assert (repo / "artifacts/variants" / v / info["file"]).is_file() and info["variant"] == v
    assert (repo / "artifacts/variants/student_kd_int8_auto/calibration.json").is_file()
    q = json.loads((repo / "metrics/quantize/student_kd_int8_auto.json").read_text())
    assert {"cpu_vnni", "ptq_hurt", "val_auroc_delta_pt_ci95", "auto_fit", "auto_steps", "weight_scales"} <= set(q)

    prune = json.loads((repo / "metrics/prune/student_pruned.json").read_text())
    assert prune["params_after_m"] < prune["params_before_m"]
    for m, spec in sparse.items():
        sp = json.loads((repo / f"metrics/prune/{m}.json").read_text())
        assert sp["sparsity_all_weights"] > 0.3 and sp["size_deflate_mb"] < sp["size_dense_mb"], m
        assert spec["pattern"] != "2:4" or (sp["holds_2_4"] and "skipped" in sp["gpu_2_4"]), m
    ev = json.loads((repo / "metrics/evaluate/student_kd_int8_auto.json").read_text())
    assert {"recall", "fnr", "fpr", "precision", "f1", "auroc", "ap", "threshold", "recall_at_fpr_5pct"} <= set(ev)
    assert {"recall_ci95", "fpr_ci95", "auroc_ci95", "fpr_at_recall_95pct_ci95", "recall_at_fpr_1pct_ci95"} <= set(ev)
    assert "cell_type" in ev["by"] and (repo / "artifacts/predictions/student_kd_int8_auto.csv").exists()

    bench = json.loads((repo / "metrics/benchmark.json").read_text())
    fingerprint = json.loads((repo / "metrics/fingerprint.json").read_text())
    assert set(bench["variants"]) == set(variants) and bench["fingerprint"] == fingerprint
    for v, b in bench["variants"].items():
        assert b["latency_ms_p50"] > 0 and b["size_mb"] > 0 and b["peak_rss_mb"] > 0, v
        lo, hi = b["latency_ms_p50_ci95"]
        assert lo <= hi and b["latency_ms_p50_cov_pct"] >= 0 and b["fingerprint_id"] == fingerprint["id"]
        assert b["torch_imported"] == (b["runtime"] not in ("onnxruntime", "openvino")), v  # ONNX: without torch
    rounds = (repo / "plots/benchmark/rounds.csv").read_text().splitlines()
    assert len(rounds) == 1 + TINY["benchmark"]["rounds"] * len(variants) * 2  # threads 1 and base.threads

    for path in (repo / "metrics").rglob("*.json"):  # strict JSON: NaN or Infinity is not, and other tools refuse it
        json.loads(path.read_text(), parse_constant=lambda c, path=path: pytest.fail(f"{c} in {path}"))
    report = json.loads((repo / "metrics/report.json").read_text())
    table = report["variants"]
    assert set(table) == set(variants) and table["teacher_torch_fp32"]["speedup_x"] == 1.0
    assert table["teacher_torch_fp32"]["speedup_x_1t"] == 1.0
    assert table["teacher_torch_fp32"]["auroc_delta_pt_ci_low"] == 0  # paired with itself
    assert {r["variant"] for r in report["precision"]} == set(variants)
    assert {"runtime", "int8", "pruning", "distillation"} <= set(report["steps"]) and report["recommended"] in variants
    headline = json.loads((repo / "metrics/headline.json").read_text())
    assert (
        headline["recommended"] == report["recommended"]
        and headline["ref"]["auroc"] == table["teacher_torch_fp32"]["auroc"]
    )
    text = (repo / "REPORT.md").read_text()
    for heading in (
        "## Data and split",
        "## Machine",
        "## What each step bought and cost",
        "## Recommended variant",
        "## Which precision?",
        "**Did PTQ hurt?**",
        "## Caveats",
        fingerprint["id"],
    ):
        assert heading in text
    assert "## Where pruning starts to hurt" in text and "compute every zero" in text  # sweep + sparsity
    sweep = report["pruning"]
    assert set(sweep["sparse"]) == set(sparse) and set(sweep["first_degraded_ratio_pct"]) >= {"int8_auto", "torch_fp32"}
    for f in ("comparison.csv", "pareto.csv", "pareto.png", "sweep.csv", "sweep.png"):
        assert (repo / "plots/report" / f).stat().st_size > 0
    assert "rec.auroc" in dvc("metrics", "show", cwd=repo).stdout
    # The README's `dvc exp show` command for the headline fits a 200-column terminal.
    line = next(x for x in (ROOT / "README.md").read_text().splitlines() if x.startswith("dvc exp show --drop"))
    args = shlex.split(line.split("  #")[0])[1:]
    shown = dvc(*args, "--no-pager", cwd=repo, env={"COLUMNS": "200"}).stdout
    assert "rec.auroc" in shown and "ref.ms" in shown and "…" not in shown, shown
    assert max(map(len, shown.splitlines())) <= 200, shown


def test_second_repro_runs_only_the_fingerprint(repo):
    repo, _ = repo
    assert ran(dvc("repro", cwd=repo).stdout) == {"fingerprint"}


def repro_killed_at(repo, marker, log):
    """Start `dvc repro`, SIGKILL it and its stage process once `marker` shows in its output; that output."""
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }  # the marker must reach the log when DVC prints it
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro"],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while marker not in log.read_text():
            assert proc.poll() is None, f"dvc repro ended before {marker!r}:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return log.read_text()


def test_killed_repro_resumes_and_two_runs_from_scratch_are_identical(repo, tmp_path):
    """SIGKILL in a training stage, then in quantize; `dvc repro` finishes the job. Same models, same metrics."""
    first, _ = repo
    # Every stage still runs (all models train); only the variants are fewer, to keep this second run short.
    small = {
        "compare": {"models": ["student_kd"], "recipes": ["ort_fp32", "int8_auto"], "openvino": []},
        "quantize": {**TINY["quantize"], "openvino": []},
        "sparsify": {**TINY["sparsify"], "models": {}},
        "report": {"reference": "student_kd_ort_fp32"},
    }
    (tmp_path / "repo").mkdir()
    second = copy_repo(tmp_path / "repo", {**TINY, **small})
    killed = repro_killed_at(second, "Running stage 'distill'", tmp_path / "kill1.log")
    assert "Running stage 'quantize@" not in killed
    # No lock to clear by hand: DVC drops a lock whose process is gone. Finished stages are not rerun.
    killed = repro_killed_at(second, "Running stage 'quantize@", tmp_path / "kill2.log")
    assert not {"prepare", "finetune_teacher", "train_student"} & ran(killed)
    dvc("repro", cwd=second)
    assert not list((second / ".checkpoints").glob("[!.]*.pt"))  # every training run finished and cleaned up

    # Determinism: two from-scratch runs give byte-identical model files and equal quality metrics.
    files = [f"artifacts/{m}/model.pt" for m in ("teacher", "student", "student_kd", "student_pruned")]
    files += ["artifacts/variants/student_kd_int8_auto/model.onnx"]  # ort_fp32: the tiny run compares none
    for f in files:
        assert (first / f).read_bytes() == (second / f).read_bytes(), f
    metrics = [
        "finetune_teacher.json",
        "train_student.json",
        "distill.json",
        "prune/*.json",
        "evaluate/*.json",
        "quantize/*.json",
    ]
    files = sorted(p.relative_to(second) for pattern in metrics for p in (second / "metrics").glob(pattern))
    files = [f for f in files if "ort_fp32" not in f.name]
    assert len(files) == 6, files  # 3 trainings, prune, student_kd_int8_auto's quantize and evaluate
    for f in files:
        a, b = (json.loads((r / f).read_text()) for r in (first, second))
        for wall_time in ("train_minutes", "greedy_minutes"):  # the only numbers allowed to differ
            a.pop(wall_time, None), b.pop(wall_time, None)
        assert a == b, f
    assert ran(dvc("repro", cwd=second).stdout) == {"fingerprint"}


def test_two_process_training_under_torchrun_is_valid_and_close_to_one_process(repo, tmp_path):
    """README "Scaling out": `dvc exp run -S train.processes=2` trains with DDP in 2 gloo processes."""
    first, _ = repo
    (tmp_path / "repo").mkdir()
    second = copy_repo(tmp_path / "repo", TINY)
    out = dvc("exp", "run", "-S", "train.processes=2", "train_student", cwd=second)
    assert "rank 0 of 2" in out.stdout + out.stderr
    model = "artifacts/student/model.pt"
    one, _ = models.load(first / model)
    two, card = models.load(second / model)  # rank 0 wrote a complete, loadable model and its card
    assert card["val_auroc"] == json.loads((second / "metrics/train_student.json").read_text())["val_auroc"]
    x = torch.cat(
        [data.load_split(first / "data/prepared", split, TINY["base"]["image_size"])[0] for split in ("train", "val")]
    )
    p1, p2 = training.predict(one, x), training.predict(two, x)
    # Close, not equal: BatchNorm statistics and dropout masks are per shard on CPU (tests/test_distributed.py
    # checks the step is the single-process one exactly for a model without them). Measured: 85 % agreement.
    assert (p1.argmax(1) == p2.argmax(1)).mean() >= 0.75
    assert not list((second / ".checkpoints").glob("*.pt"))


def test_clone_reuses_benchmark_on_same_machine_and_remeasures_on_another(repo, tmp_path):
    repo, _ = repo
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "results", cwd=repo)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    dvc("cache", "dir", str(repo / ".dvc" / "cache"), cwd=clone)  # artifacts from the first run, no retraining
    dvc("checkout", cwd=clone)
    assert ran(dvc("repro", cwd=clone).stdout) == {"fingerprint"}  # same machine: every result reused

    # The committed results came from another machine (its fingerprint is in the lock, as the benchmark's
    # dependency): once this machine's fingerprint is taken, the benchmark is the one stage out of date (select
    # and report follow it in the graph); nothing is retrained or re-quantized.
    fp = clone / "metrics/fingerprint.json"
    fp.write_text(json.dumps({**json.loads(fp.read_text()), "cpu": "another CPU"}))
    dvc("commit", "-f", cwd=clone)
    assert ran(dvc("repro", "fingerprint", cwd=clone).stdout) == {"fingerprint"}
    assert out_of_date(clone) == {"benchmark"}
    # Re-measured on unchanged models, the pick stays: speeds within the benchmark's noise tie and go to quality
    # (two rounds here, below speed.MIN_ROUNDS: everything ties; with them ranked, this flipped once in CI).
    assert ran(dvc("repro", cwd=clone).stdout) == {"fingerprint", "benchmark", "select", "report"}
    picks = [json.loads((r / "metrics/select.json").read_text())["selected"] for r in (repo, clone)]
    assert picks[0] == picks[1], picks


def out_of_date(repo):
    """Stages `dvc status` finds changed by their own deps or params (what `dvc repro` starts from), minus
    the fingerprint, which always runs, and check_params, which reads all of params.yaml (its output stays the
    same bytes, so it reruns nothing after it)."""
    status = json.loads(dvc("status", "--json", cwd=repo).stdout)
    return {s for s, changes in status.items() if changes != ["always changed"] and s != "check_params"}


def test_shared_remote_lets_another_clone_reuse_every_result(repo, tmp_path):
    """A team shares one DVC remote: push from one clone, pull into another, and `dvc repro` retrains nothing."""
    repo, _ = repo
    remote = tmp_path / "team-remote"  # README: the same with s3://, gs://, ssh://
    dvc("remote", "add", "--local", "-d", "team", str(remote), cwd=repo)
    dvc("push", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "results", "--allow-empty", cwd=repo)
    clone = tmp_path / "teammate"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    dvc("remote", "add", "--local", "-d", "team", str(remote), cwd=clone)
    dvc("pull", cwd=clone)
    model = "artifacts/student_kd/model.pt"
    assert (clone / model).read_bytes() == (repo / model).read_bytes()
    assert ran(dvc("repro", cwd=clone).stdout) == {"fingerprint"}


def test_queued_experiments_run_and_show_side_by_side(repo):
    """docs/scaling.md "Many experiments": a queued experiment, one worker (so benchmarks never overlap), shown
    beside the workspace's run in `dvc exp show`. One is enough: a second only repeats DVC's queue (~35 s)."""
    repo, _ = repo
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "before the sweep", "--allow-empty", cwd=repo)
    baseline = yaml.safe_load((repo / "params.yaml").read_text())["select"]["max_latency_ms"]
    # a select knob only: the experiment reruns select and report, nothing upstream
    dvc("exp", "run", "--queue", "-n", "lat1000", "-S", "select.max_latency_ms=1000", cwd=repo)
    dvc("queue", "start", "-j", "1", cwd=repo)  # returns when the worker has emptied the queue
    for _ in range(60):  # each poll is a DVC process: ~1.5 s of CPU the queue's worker and the other tests share
        status = dvc("queue", "status", cwd=repo).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(4)
    assert "Failed" not in status, dvc("queue", "logs", "lat1000", cwd=repo, check=False).stdout
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    exps = {e["name"]: e for rev in shown for e in (rev.get("experiments") or []) if e.get("name")}
    assert "lat1000" in exps, list(exps)
    workspace = next(rev for rev in shown if rev["rev"] == "workspace")
    for row, ms in ((exps["lat1000"]["revs"][0], 1000), (workspace, baseline)):
        assert row["data"]["params"]["params.yaml"]["data"]["select"]["max_latency_ms"] == ms
        assert row["data"]["metrics"]["metrics/headline.json"]["data"]["deployed"]
    dvc("exp", "branch", "lat1000", "fastest-pick", cwd=repo)  # README: keep the one you want
    assert "fastest-pick" in sh(["git", "branch"], repo).stdout


def test_select_writes_the_bundle_of_its_pick(repo):
    repo, _ = repo
    sel = json.loads((repo / "metrics/select.json").read_text())
    bench = json.loads((repo / "metrics/benchmark.json").read_text())["variants"]
    onnx = [v for v, b in bench.items() if b["runtime"] in ("onnxruntime", "openvino")]  # deployable: one ONNX file
    assert set(sel["variants"]) == set(bench) and sel["timing"]["threads"] in (1, 2)
    assert all(set(sel["variants"][v]["failed"]) == {"runtime"} for v in bench if v not in onnx)
    # the pick ties with the fastest ONNX variant and has the best validation quality of those that tie
    tied = [v for v in onnx if sel["variants"][v]["speed"]["tie"]]
    assert sel["selected"] in tied and sel["timing"]["fastest"] in tied
    best = min(tied, key=lambda v: (*selection.quality_key(sel["variants"][v]), v))  # latency within noise: no key
    assert sel["selected"] == best
    bundle = json.loads((repo / "artifacts/deploy/deploy.json").read_text())
    ev = json.loads((repo / f"metrics/evaluate/{sel['selected']}.json").read_text())
    assert bundle["variant"] == sel["selected"] and bundle["threshold"] == ev["threshold_exact"]
    assert bundle["model_sha256"] == deploy.sha256_file(repo / "artifacts/deploy/model.onnx")
    assert bundle["model_sha256"] == deploy.sha256_file(repo / bench[sel["selected"]]["model_file"])
    assert bundle["fingerprint"]["id"] == bench[sel["selected"]]["fingerprint_id"] and bundle["git"]["revision"]
    assert ev["threshold_rule"] == "lower_bound" and ev["threshold_fallback"]  # ~3 val defects: flagged fallback
    assert sel["skew"]["verdict_mismatches"] == 0 and sel["skew"]["max_abs_score_diff"] <= 1e-5
    assert sel["screen"]["images"] == 80 and sel["screen"]["images_per_s"] > 0 and not sel["screen"]["torch_imported"]
    runs = sel["screen"]["images_per_s_runs"]  # fresh processes; the median run is the one reported
    assert len(runs) == 3 and sorted(runs)[1] == sel["screen"]["images_per_s"]
    bench = json.loads((repo / "metrics/benchmark.json").read_text())["variants"][sel["selected"]]
    threads = sel["screen"]["threads"]  # 2 benchmarked, a core left for decoding: the model alone at 1 thread
    assert threads == max(1, min(2, os.cpu_count() - 1)) == sel["screen"]["model_only_threads"]
    key = "throughput_img_s_1t" if threads == 1 else "throughput_img_s"
    assert sel["screen"]["model_only_throughput_img_s"] == bench[key]
    assert "## Deployment: the selected variant" in (repo / "REPORT.md").read_text()
    assert json.loads((repo / "metrics/headline.json").read_text())["deployed"] == sel["selected"]


def test_screen_of_raw_test_images_reproduces_evaluate(repo, tmp_path):
    """No training/serving skew: the raw ELPV files of the test split through the bundle give evaluate's
    scores (within 1e-5) and verdicts for the selected variant."""
    repo, _ = repo
    selected = json.loads((repo / "metrics/select.json").read_text())["selected"]
    manifest = pd.read_csv(repo / "data/prepared/manifest.csv").query("split == 'test'").reset_index(drop=True)
    raw = deploy.raw_paths(manifest["source"], {"dataset": "elpv"})
    proc = sh(
        [
            sys.executable,
            "-m",
            "stages.screen",
            str(repo / "artifacts/deploy"),
            *map(str, raw),
            "--out",
            str(tmp_path / "v.csv"),
        ],
        ROOT,
    )
    assert proc.returncode == 0
    screened = pd.read_csv(tmp_path / "v.csv")
    evaluated = pd.read_csv(repo / f"artifacts/predictions/{selected}.csv")
    assert list(screened["pixel_sha256"]) == list(evaluated["sha256"])
    assert (screened["score"] - evaluated["score"]).abs().max() <= 1e-5
    assert list(screened["verdict"]) == list(evaluated["pred"].map({0: "good", 1: "defect"}))


def test_quantize_param_puts_only_its_quantize_stages_out_of_date(repo):
    """One recipe's knob puts exactly that recipe's quantize stages out of date: nothing upstream, no other
    recipe. What follows them (evaluate, benchmark, select, report) reruns because their inputs change
    (tests/test_dvc_deps.py checks those dependencies); running it all again here would add minutes to CI."""
    repo, _ = repo
    before = out_of_date(repo)  # (another test's select knobs may have left select and report to rerun)
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    params["quantize"]["recipes"]["int8_auto"]["per_channel"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        stale = out_of_date(repo) - before
    finally:
        (repo / "params.yaml").write_text(text)
    assert stale == {f"quantize@{m}-int8_auto" for m in params["compare"]["models"]}, stale
    assert not (stale | before) & UPSTREAM


def stale_under(repo, params):
    """out_of_date(repo) with `params` written to its params.yaml, which is restored afterwards."""
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        return out_of_date(repo)
    finally:
        (repo / "params.yaml").write_text(text)


def run_prune(repo, work, params):
    """The prune stage itself, on the tiny repo's data and models, with `params`, in `work`; returns its metrics."""
    work.mkdir(exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    args = [
        repo / "data/prepared",
        repo / "artifacts/student_kd/model.pt",
        repo / "artifacts/teacher/model.pt",
        work / "out",
        work / "live",
        work / "m.json",
    ]
    sh([sys.executable, "-m", "stages.prune", *map(str, args)], work, env={"PYTHONPATH": str(ROOT)})
    return json.loads((work / "m.json").read_text())


def test_prune_knobs_rerun_only_pruning_and_seed_and_scope_do_what_they_say(repo, tmp_path):
    """prune.seed and prune.scope put prune and what follows out of date, never the teacher, student or
    distillation. The default scope is greedy: the committed model's metrics carry the per-stage ratios its search
    found, at or below the MACs uniform pruning at the same ratio leaves, and uniform's metrics carry no search.
    prune.seed: null is base.seed (the same weights), another value another fine-tune (uniform scope, no search:
    test_killed_repro... checks that the greedy default gives the same model.pt twice)."""
    repo, _ = repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    prune = params["prune"]
    for knob in ({"seed": 7}, {"scope": "uniform"}):
        stale = stale_under(repo, {**params, "prune": {**prune, **knob}})
        assert "prune" in stale and not stale & (UPSTREAM - {"prune"}), (knob, stale)

    def pruned(**knobs):  # the prune stage with scope uniform and `knobs`: (metrics, weights)
        work = tmp_path / ("-".join(f"{k}{v}" for k, v in knobs.items()) or "default")
        m = run_prune(repo, work, {**params, "prune": {**prune, "scope": "uniform", **knobs}})
        return m, torch.load(work / "out/model.pt", weights_only=True)["state"]

    (m, default), (_, same), (_, other) = pruned(), pruned(seed=params["base"]["seed"]), pruned(seed=7)
    committed = json.loads((repo / "metrics/prune/student_pruned.json").read_text())
    assert committed["scope"] == "greedy" and (committed["greedy_step"], committed["greedy_images"]) == (0.2, 32)
    assert committed["macs_after_m"] <= m["macs_after_m"] and m["macs_before_m"] == committed["macs_before_m"]
    ratios = committed["stage_ratios"]
    assert all(0 <= r <= prune["max_ratio"] for r in ratios) and committed["greedy_rounds"] >= 1
    assert m["scope"] == "uniform" and not {"stage_ratios", "greedy_kl", "greedy_step"} & m.keys()

    weights = [name for name, t in default.items() if t.is_floating_point()]
    assert weights and default.keys() == same.keys() == other.keys()
    for name in weights:
        torch.testing.assert_close(same[name], default[name], msg=name)
    assert any(not torch.equal(other[n], default[n]) for n in weights), "prune.seed=7 trained the same weights"
    model, _ = models.load(tmp_path / "seed7/out/model.pt")
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_plots_render_offline_with_data(repo, tmp_path):
    """`dvc plots show` -> HTML with Vega inlined; Chromium draws every plot with data, no network."""
    repo, _ = repo
    dvc("plots", "show", "-o", str(tmp_path / "html"), cwd=repo)
    page = (tmp_path / "html" / "index.html").read_text()
    assert "cdn.jsdelivr.net" not in page
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=30000",
            "--dump-dom",
            (tmp_path / "html" / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    dom = proc.stdout
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    vega_plots = [p for p in spec["plots"] if isinstance(p, dict)]
    marks = re.findall(r'<div id="([^"]+)"[^>]*?data-marks="(\d+)"', dom)
    assert not re.findall(r"data-error=", dom), dom[:2000]
    # A plot whose key is a folder (plots/evaluate/roc ...) is drawn once per file in it: one per variant.
    expected = sum(
        len(list((repo / n).iterdir())) if (repo / n).is_dir() else 1 for n in map(lambda p: next(iter(p)), vega_plots)
    )
    assert len(marks) == expected, (marks, [next(iter(p)) for p in vega_plots])
    empty = [name for name, n in marks if int(n) == 0]
    assert not empty, f"plots drawn without data: {empty}"
    assert "<img" in dom  # pareto.png


def test_select_param_reruns_only_select_and_report(repo):
    """Last in this file: it leaves the tiny repo with nothing deployed. A latency cap the last pick meets and a
    size cap no variant does: select and report rerun, with both constraints, and nothing qualifies."""
    repo, _ = repo
    before = json.loads((repo / "metrics/select.json").read_text())
    latency = round(before["variants"][before["selected"]]["latency_ms_p50"] * 2, 4)
    set_params(repo, {"select": {"max_latency_ms": latency, "max_size_mb": 0.001}})
    assert ran(dvc("repro", cwd=repo).stdout) == {"check_params", "fingerprint", "select", "report"}
    sel = json.loads((repo / "metrics/select.json").read_text())
    assert sel["constraints"]["max_latency_ms"] == latency and sel["constraints"]["max_size_mb"] == 0.001
    # nothing qualifies: the run still ends with a report that opens with it, and no model ships
    assert sel["selected"] is None and sel["closest"]["binding"] == "max_size_mb"
    assert sorted(p.name for p in (repo / "artifacts/deploy").iterdir()) == ["deploy.json"]
    report = (repo / "REPORT.md").read_text()
    assert report.split("\n")[2].startswith("> **Nothing deployed.**") and "select.max_size_mb" in report.split("\n")[2]
    assert json.loads((repo / "metrics/headline.json").read_text())["deployed"] is None
