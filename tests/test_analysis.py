"""ANALYSIS.md quotes numbers from committed files; these tests keep every quote equal to its source.

QUOTES lists each quote as (what, text, source, template). `text` is the quote as ANALYSIS.md writes it; `template`
renders the same text from `source` through `{path:spec}` fields. A source is a JSON or CSV file relative to the
repository root, or a member of a committed archive (`lab/<study>/runs.tar.xz:<run>/metrics/report.json`).

- path: keys joined by dots (`steps.int8.delta.speedup_x`); a number indexes a list (`auroc_delta_pt_ci95.0`);
  `[key=value]` picks the one list item or CSV row whose `key` is `value`
  (`[variant=student_pruned_ort_fp32].auroc_delta_pt`). A CSV file is a list of rows; a cell that parses as JSON
  (a number, `[-2.71, 0.78]`) is read as such.
- spec: a format spec (`+.1f`, `.3f`); `%.1f` multiplies by 100 first (a fraction quoted as a percentage); `mark`
  writes a verdict as REPORT.md does: " ▲" better, " ▼" worse, nothing when the interval includes zero.

When a rerun changes a value, the failure names the quote, the text ANALYSIS.md has and the text the source gives
now: replace the one with the other in ANALYSIS.md and in QUOTES, and reread the sentence when a mark came or went
(the prose says "distinguishable" only where a mark is). A number in ANALYSIS.md that no quote covers fails too, so
every new number needs its entry here.
"""

import csv
import functools
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ANALYSIS = ROOT / "ANALYSIS.md"
MAX_WORDS = 1050  # issue 24: "at most ~1,000 words", counted as `wc -w` counts them (an interval is three words)
MAX_FIGURES = 2
# Number-looking text that is a definition or a name, not a result.
NOT_RESULTS = ("95 % recall", "95 % intervals", "2:4", "at batch 1", "includes 1x", "MVTec 3D")
# What counts as a number: integers, decimals, percentages ("35.4 %"), speed-ups ("12.91x"); the numbers of an
# interval are matched one by one. Digits inside words (Lite0, INT8, p50, batch-1) are names.
NUMBER = re.compile(r"(?<![\w.+\-])[-+]?\d+(?:[.,]\d+)*(?:\s?%|x(?!\w))?")
MARKS = {"better": " ▲", "worse": " ▼", "same": ""}

# The committed default run (one `dvc repro`, committed with dvc.lock).
REPORT = "metrics/report.json"
HEADLINE = "metrics/headline.json"
PREPARE = "metrics/prepare.json"
MACHINE = "metrics/fingerprint.json"
PRUNE = "metrics/prune/student_pruned.json"  # also the path inside each study run


def study(name, path):
    """A file of one run of a lab study: a member of lab/<name>/runs.tar.xz, where every run keeps its paths."""
    return f"lab/{name}/runs.tar.xz:{path}"


MENU = study("precision_menu", "exp-menu/metrics/report.json")
VIT = study("vit_tiny_teacher", "exp-vit/metrics/report.json")
MOBILEONE = study("mobileone", "exp-mobileone/metrics/report.json")
SPARSE = study("sparse_study", "exp-sparse/metrics/report.json")
GPU_24 = study("gpu_h100", "sparse24.json")
SWEEP = study("prune_sweep", "exp-sweep/plots/report/sweep.csv")
SWEEP_PRUNE = study("prune_sweep", "exp-sweep/metrics/prune/student_pruned_r20.json")
GREEDY_PRUNE = study("prune_recovery", f"exp-greedy/{PRUNE}")


def recovery(run, file="plots/report/sweep.csv"):
    """A file of one prune_recovery run; by default its pruned-vs-unpruned table (a row per model and recipe)."""
    return study("prune_recovery", f"{run}/{file}")


def interval(value, low, high, verdict=None, spec="+.1f", unit=""):
    mark = f"{{{verdict}:mark}}" if verdict else ""
    return f"{{{value}:{spec}}}{unit} [{{{low}:{spec}}}, {{{high}:{spec}}}]{mark}"


def ci95(key, verdict=None, **kw):
    """A value with its paired interval stored as the pair `<key>_ci95` (steps, precision, sweep.csv)."""
    return interval(key, f"{key}_ci95.0", f"{key}_ci95.1", verdict or f"{key}_verdict", **kw)


def ci(key, **kw):
    """A value with its paired interval stored as `<key>_ci_low` / `<key>_ci_high` (report.json's variants)."""
    return interval(key, f"{key}_ci_low", f"{key}_ci_high", f"{key}_verdict", **kw)


def menu(variant, key, **kw):
    """One recipe of the precision menu, against the same model in ORT FP32 (`<what>_vs_fp32_pt`/`_x`)."""
    path = f"precision.[variant={variant}].{key}"
    return ci95(path, verdict=path.rsplit("_", 1)[0] + "_verdict", **kw)


X = {"spec": ".2f", "unit": "x"}  # speed-ups and size ratios, written as REPORT.md writes them

DATASETS = "lab/datasets/results.csv"  # the cross-dataset table: a row per run


def ds(run, key, verdict=True, **kw):
    """One data set's value with its interval, as lab/datasets/results.csv stores it (`<key>`, `_lo`, `_hi`)."""
    row = f"[run={run}].{key}"
    return interval(row, f"{row}_lo", f"{row}_hi", f"{row}_verdict" if verdict else None, **kw)


DEPLOYED = "variants.student_pruned_ov_int8"  # what headline.json deploys (the "deployed variant" quote)
SELECT = "metrics/select.json"
TWIN = "student_pruned_int8_auto"  # the deployed file in ONNX Runtime, distinguishably slower here
TEACHER = "variants.teacher_torch_fp32"
KD_INT8 = "variants.student_kd_int8_auto"
KD_OV = "variants.student_kd_ov_int8"
ORT = "[variant=student_pruned_ort_fp32]"  # the pruned model in a study's sweep.csv, ORT FP32
INT8 = "[variant=student_pruned_int8_static_pc]"

QUOTES = [
    # The data and the machine
    ("test images", "394 test images", PREPARE, "{test_images} test images"),
    ("test defects", "123", PREPARE, "{test_defect}"),
    ("usable CPUs", "2-vCPU", MACHINE, "{usable_cpus}-vCPU"),
    ("benchmark threads", "2 threads", REPORT, f"{{{TEACHER}.threads}} threads"),
    ("ONNX Runtime version", "1.31.1", MACHINE, "{libraries.onnxruntime}"),
    # The deployed model against the teacher
    ("judged thread count", "at 1 thread", SELECT, "at {timing.threads} thread"),
    ("judged CoV, 1 thread", "2.73 %", SELECT, "{timing.median_cov_pct.1:.2f} %"),
    ("judged CoV, 2 threads", "20.48 %", SELECT, "{timing.median_cov_pct.2:.2f} %"),
    ("deployed variant", "`student_pruned_ov_int8`", HEADLINE, "`{deployed}`"),
    (
        "the ORT twin is slower",
        "1.27x [1.22, 1.31]",
        SELECT,
        f"{{variants.{TWIN}.speed.fastest_speedup_x:.2f}}x [{{variants.{TWIN}.speed.fastest_speedup_x_ci95.0:.2f}}, "
        f"{{variants.{TWIN}.speed.fastest_speedup_x_ci95.1:.2f}}]",
    ),
    ("deployed speed-up vs teacher", "16.20x [15.18, 17.30] ▲", REPORT, ci(f"{DEPLOYED}.speedup_x_1t", **X)),
    ("deployed p50 latency", "0.515 ms", REPORT, f"{{{DEPLOYED}.latency_ms_p50_1t:.3f}} ms"),
    ("teacher p50 latency", "8.37 ms", REPORT, f"{{{TEACHER}.latency_ms_p50_1t:.2f}} ms"),
    ("deployed file size", "1.84 MB", REPORT, f"{{{DEPLOYED}.size_mb:.2f}} MB"),
    ("teacher file size", "18.73 MB", REPORT, f"{{{TEACHER}.size_mb:.2f}} MB"),
    ("deployed peak memory", "177 MB", REPORT, f"{{{DEPLOYED}.peak_rss_mb:.0f}} MB"),
    ("teacher peak memory", "1039 MB", REPORT, f"{{{TEACHER}.peak_rss_mb:.0f}} MB"),
    ("deployed Δ AUROC vs teacher", "AUROC -1.3 [-3.1, +0.6]", REPORT, "AUROC " + ci(f"{DEPLOYED}.auroc_delta_pt")),
    ("deployed Δ FPR@95 vs teacher", "+2.2 [-8.1, +19.3]", REPORT, ci(f"{DEPLOYED}.fpr_at_recall_95pct_delta_pt")),
    (
        "deployed Δ FPR@95 vs teacher, interval alone",
        "[-8.1, +19.3]",
        REPORT,
        f"[{{{DEPLOYED}.fpr_at_recall_95pct_delta_pt_ci_low:+.1f}}, {{{DEPLOYED}.fpr_at_recall_95pct_delta_pt_ci_high:+.1f}}]",
    ),
    ("deployed test recall", "95.1 %", REPORT, f"{{{DEPLOYED}.recall:%.1f}} %"),
    ("teacher test recall", "91.1 %", REPORT, f"{{{TEACHER}.recall:%.1f}} %"),
    ("deployed Δ recall vs teacher", "+4.1 [-0.8, +9.2]", REPORT, ci(f"{DEPLOYED}.recall_delta_pt")),
    ("deployed test FPR", "33.6 %", REPORT, f"{{{DEPLOYED}.fpr:%.1f}} %"),
    ("teacher test FPR", "21.0 %", REPORT, f"{{{TEACHER}.fpr:%.1f}} %"),
    ("deployed Δ FPR vs teacher", "+12.6 [+7.9, +17.0] ▼", REPORT, ci(f"{DEPLOYED}.fpr_delta_pt")),
    # Step by step (REPORT.md's step table)
    ("runtime Δ AUROC", "+0.0 [+0.0, +0.0]", REPORT, ci95("steps.runtime.delta.auroc_delta_pt")),
    ("runtime Δ FPR@95", "+0.0 [+0.0, +0.0]", REPORT, ci95("steps.runtime.delta.fpr_at_recall_95pct_delta_pt")),
    ("runtime speed-up", "3.90x [3.73, 4.08] ▲", REPORT, ci95("steps.runtime.delta.speedup_x_1t", **X)),
    ("runtime file", "0.98x", REPORT, "{steps.runtime.delta.size_ratio:.2f}x"),
    ("smaller model Δ AUROC", "-0.2 [-1.5, +1.3]", REPORT, ci95("steps.smaller_model.delta.auroc_delta_pt")),
    (
        "smaller model Δ FPR@95",
        "-1.1 [-10.2, +9.0]",
        REPORT,
        ci95("steps.smaller_model.delta.fpr_at_recall_95pct_delta_pt"),
    ),
    ("smaller model speed-up", "1.61x [1.55, 1.68] ▲", REPORT, ci95("steps.smaller_model.delta.speedup_x_1t", **X)),
    ("smaller model file", "0.70x", REPORT, "{steps.smaller_model.delta.size_ratio:.2f}x"),
    ("distillation Δ AUROC", "+0.3 [-1.4, +2.0]", REPORT, ci95("steps.distillation.delta.auroc_delta_pt")),
    (
        "distillation Δ FPR@95",
        "-4.4 [-18.5, +5.2]",
        REPORT,
        ci95("steps.distillation.delta.fpr_at_recall_95pct_delta_pt"),
    ),
    ("distillation speed-up", "0.95x [0.84, 1.07]", REPORT, ci95("steps.distillation.delta.speedup_x_1t", **X)),
    ("distillation file", "1.00x", REPORT, "{steps.distillation.delta.size_ratio:.2f}x"),
    ("INT8 Δ AUROC", "+0.2 [-0.2, +0.8]", REPORT, ci95("steps.int8.delta.auroc_delta_pt")),
    ("INT8 Δ FPR@95", "+0.0 [-5.2, +7.3]", REPORT, ci95("steps.int8.delta.fpr_at_recall_95pct_delta_pt")),
    ("INT8 speed-up", "1.97x [1.92, 2.02] ▲", REPORT, ci95("steps.int8.delta.speedup_x_1t", **X)),
    ("INT8 file", "0.28x", REPORT, "{steps.int8.delta.size_ratio:.2f}x"),
    ("pruning ratio", "21 %", PRUNE, "{ratio:%.0f} %"),
    ("pruning Δ AUROC", "-1.0 [-2.7, +0.8]", REPORT, ci95("steps.pruning.delta.auroc_delta_pt")),
    ("pruning Δ FPR@95", "+7.0 [-4.3, +18.0]", REPORT, ci95("steps.pruning.delta.fpr_at_recall_95pct_delta_pt")),
    ("pruning speed-up", "1.47x [1.43, 1.51] ▲", REPORT, ci95("steps.pruning.delta.speedup_x_1t", **X)),
    ("pruning file", "0.47x", REPORT, "{steps.pruning.delta.size_ratio:.2f}x"),
    (
        "teacher INT8 val Δ AUROC",
        "AUROC -0.18 [-0.76, +0.38]",
        "metrics/quantize/teacher_int8_auto.json",
        "AUROC {val_auroc_delta_pt:+.2f} [{val_auroc_delta_pt_ci95.0:+.2f}, {val_auroc_delta_pt_ci95.1:+.2f}]",
    ),
    ("teacher INT8 Δ AUROC", "-0.6 [-1.2, -0.0] ▼", REPORT, menu("teacher_int8_auto", "auroc_vs_fp32_pt")),
    (
        "OpenVINO FP32 agreement",
        "4e-06",
        "metrics/quantize/student_kd_ov_fp32.json",
        "{val_max_abs_score_diff_vs_ort:g}",
    ),
    ("OpenVINO INT8 img/s", "3260 images/s", REPORT, f"{{{KD_OV}.throughput_img_s:.0f}} images/s"),
    ("ORT INT8 img/s", "ORT: 2631", REPORT, f"ORT: {{{KD_INT8}.throughput_img_s:.0f}}"),
    (
        "int8_auto's allowed drop",
        "within 1.0 pt",
        "metrics/quantize/teacher_int8_auto.json",
        "within {max_drop_pt:.1f} pt",
    ),
    ("screen cores", "same 2 cores", MACHINE, "same {usable_cpus} cores"),
    ("screen images/s", "939.7 images/s", SELECT, "{screen.images_per_s:.1f} images/s"),
    (
        "screen threads",
        "1 model thread, 2 decoding thread",
        SELECT,
        "{screen.threads} model thread, {screen.workers} decoding thread",
    ),
    (
        "deployed model-only img/s",
        "2168.3 alone at 1 thread",
        SELECT,
        "{screen.model_only_throughput_img_s:.1f} alone at {screen.model_only_threads} thread",
    ),
    (
        "deployed model-only img/s, benchmark threads",
        "3702.8 at 2",
        SELECT,
        "{screen.benchmark_throughput_img_s:.1f} at {screen.benchmark_threads}",
    ),
    ("screen batch", "batch 32", SELECT, "batch {screen.model_only_batch_size}"),
    # What distillation buys
    ("distillation Δ FPR at threshold", "-6.6 [-11.8, -1.8] ▲", REPORT, ci95("steps.distillation.delta.fpr_delta_pt")),
    ("distillation Δ recall", "+0.0 [-2.7, +2.3]", REPORT, ci95("steps.distillation.delta.recall_delta_pt")),
    # Which recipes fail
    ("teacher per-tensor Δ AUROC", "-13.0 [-17.6, -8.5] ▼", MENU, menu("teacher_int8_static_pt", "auroc_vs_fp32_pt")),
    (
        "student per-tensor Δ AUROC",
        "-14.1 [-18.8, -9.9] ▼",
        MENU,
        menu("student_kd_int8_static_pt", "auroc_vs_fp32_pt"),
    ),
    ("student dynamic Δ AUROC", "-14.1 [-18.9, -9.8] ▼", MENU, menu("student_kd_int8_dynamic", "auroc_vs_fp32_pt")),
    ("student dynamic speed", "0.10x [0.05, 0.18] ▼", MENU, menu("student_kd_int8_dynamic", "speedup_vs_fp32_x", **X)),
    ("ViT naive INT8 Δ AUROC", "-6.5 [-9.6, -3.7] ▼", VIT, ci95("steps.vit_int8_naive.delta.auroc_delta_pt")),
    ("ViT-safe INT8 Δ AUROC", "-0.8 [-1.5, -0.1] ▼", VIT, ci95("steps.vit_int8_safe.delta.auroc_delta_pt")),
    ("unstructured sparsity", "50 %", SPARSE, "{pruning.sparse.student_sparse50.sparsity_all_weights:%.0f} %"),
    ("50 % sparse speed", "0.89x [0.81, 0.99] ▼", SPARSE, ci("variants.student_sparse50_ort_fp32.speedup_x", **X)),
    # Where pruning starts to hurt
    ("sweep fine-tune epochs", "8 KD fine-tune epochs", SWEEP_PRUNE, "{epochs} KD fine-tune epochs"),
    ("sweep ratio 10", "10 %", SWEEP, "{[variant=student_pruned_r10_ort_fp32].ratio_pct} %"),
    ("sweep MACs at 10 %", "91.4 M", SWEEP, "{[variant=student_pruned_r10_ort_fp32].macs_m:.1f} M"),
    ("unpruned MACs", "121.6 M MACs", SWEEP, "{[variant=student_kd_ort_fp32].macs_m:.1f} M MACs"),
    (
        "sweep Δ AUROC at 10 %",
        "AUROC -0.5 [-2.6, +1.4]",
        SWEEP,
        "AUROC " + ci95("[variant=student_pruned_r10_ort_fp32].auroc_delta_pt"),
    ),
    ("sweep ratio 20", "20 %", SWEEP, "{[variant=student_pruned_r20_ort_fp32].ratio_pct} %"),
    ("sweep MACs at 20 %", "76.7 M MACs", SWEEP, "{[variant=student_pruned_r20_ort_fp32].macs_m:.1f} M MACs"),
    (
        "sweep Δ AUROC at 20 %",
        "-2.8 [-5.0, -0.8] ▼",
        SWEEP,
        ci95("[variant=student_pruned_r20_ort_fp32].auroc_delta_pt"),
    ),
    (
        "sweep Δ AUROC at 40 %",
        "40 %: -6.0 [-8.9, -3.5] ▼",
        SWEEP,
        "{[variant=student_pruned_r40_ort_fp32].ratio_pct} %: "
        + ci95("[variant=student_pruned_r40_ort_fp32].auroc_delta_pt"),
    ),
    ("greedy fine-tune epochs", "16 fine-tune epochs", GREEDY_PRUNE, "{epochs} fine-tune epochs"),
    ("greedy MACs", "68.7 M MACs", GREEDY_PRUNE, "{macs_after_m:.1f} M MACs"),
    (
        "greedy Δ AUROC, FP32",
        "AUROC -1.0 [-2.7, +0.8]",
        recovery("exp-greedy"),
        "AUROC " + ci95(f"{ORT}.auroc_delta_pt"),
    ),
    ("greedy seed 1 Δ AUROC, FP32", "-1.4 [-3.4, +0.3]", recovery("exp-greedy-s1"), ci95(f"{ORT}.auroc_delta_pt")),
    ("greedy seed 2 Δ AUROC, FP32", "-1.6 [-3.5, +0.2]", recovery("exp-greedy-s2"), ci95(f"{ORT}.auroc_delta_pt")),
    ("uniform 21 % Δ AUROC, FP32", "-2.1 [-4.3, -0.1] ▼", recovery("exp-u21"), ci95(f"{ORT}.auroc_delta_pt")),
    ("default pruned MACs", "68.7 M MACs", PRUNE, "{macs_after_m:.1f} M MACs"),
    (
        "default pruned INT8 Δ AUROC vs unpruned INT8",
        "-1.3 [-3.1, +0.5] in INT8",
        "plots/report/sweep.csv",
        ci95("[variant=student_pruned_int8_auto].auroc_delta_pt") + " in INT8",
    ),
    ("default prune minutes", "8.3 minutes", PRUNE, "{train_minutes:.1f} minutes"),
    # Beyond ELPV (lab/datasets: one row per data set)
    ("tire deployed speed-up", "8.15x [7.54, 8.82] ▲", DATASETS, ds("ds-tire", "speedup_x", **X)),
    ("BSData deployed speed-up", "8.64x [8.44, 8.85] ▲", DATASETS, ds("ds-bsdata", "speedup_x", **X)),
    (
        "fewest and most test defects",
        "9 to 59 defects",
        DATASETS,
        "{[run=ds-bottle].test_defect} to {[run=ds-bsdata].test_defect} defects",
    ),
    ("screw image size", "at 128 px", DATASETS, "at {[run=ds-screw].image_size} px"),
    ("screw teacher AUROC", "0.839 [0.739, 0.924]", DATASETS, ds("ds-screw", "ref_auroc", spec=".3f", verdict=False)),
    ("screw deployed speed-up", "2.60x [2.25, 3.00] ▲", DATASETS, ds("ds-screw", "speedup_x", **X)),
    ("screw image size, larger", "at 224 px", DATASETS, "at {[run=ds-screw-224].image_size} px"),
    (
        "screw teacher AUROC at 224 px",
        "0.909 [0.821, 0.974]",
        DATASETS,
        ds("ds-screw-224", "ref_auroc", spec=".3f", verdict=False),
    ),
    ("screw deployed speed-up at 224 px", "5.79x [5.46, 6.14] ▲", DATASETS, ds("ds-screw-224", "speedup_x", **X)),
    (
        "screw deployed Δ AUROC at 224 px",
        "AUROC +1.4 [-3.9, +7.3]",
        DATASETS,
        "AUROC " + ds("ds-screw-224", "auroc_pt"),
    ),
    # What the evidence cannot tell
    ("largest latency CoV over rounds", "31.8 %", HEADLINE, "{max_cov_pct:.1f} %"),
]

# Claims in words that no quoted number carries: (what, source, path, value the prose assumes).
CLAIMS = [
    (
        "select judges speed at the steadier thread count, with paired intervals, and ties go to quality",
        "metrics/select.json",
        "timing.rule",
        "timings are compared at the thread count whose batch-1 p50 was steadier over rounds (lower median CoV); a "
        "variant is slower than the fastest only when the paired speed-up interval over rounds excludes 1x, otherwise "
        "they tie (with fewer than 3 rounds everything ties)",
    ),
    ("speed was judged at 1 thread in this run", "metrics/select.json", "timing.threads", 1),
    ("the deployed variant runs in OpenVINO", "metrics/select.json", f"{DEPLOYED}.runtime", "openvino"),
    ("the ORT twin does not tie with it", "metrics/select.json", f"variants.{TWIN}.speed.tie", False),
    (
        "int8_auto kept the distilled student all INT8",
        "metrics/quantize/student_kd_int8_auto.json",
        "fp32_layers_kept",
        [],
    ),
    ("... and the teacher", "metrics/quantize/teacher_int8_auto.json", "fp32_layers_kept", []),
    (
        "... and one convolution of the deployed pruned student",
        "metrics/quantize/student_pruned_int8_auto.json",
        "auto_fp32_layers",
        1,
    ),
    (
        "OpenVINO runs INT8 faster on VNNI: this run's INT8 used it",
        "metrics/quantize/student_kd_int8_auto.json",
        "cpu_vnni",
        True,
    ),
    (
        "this run's CPU has AVX-512 VNNI and BF16",
        MACHINE,
        "cpu_flags",
        ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16"],
    ),
    (
        "lab/datasets ran on AVX2 only",
        study("datasets", "ds-elpv/metrics/fingerprint.json"),
        "cpu_flags",
        ["avx2", "fma", "f16c"],
    ),
    ("the deployed pruned model is not distinguishably worse", REPORT, f"{DEPLOYED}.auroc_delta_pt_verdict", "same"),
    ("... at matched recall either", REPORT, f"{DEPLOYED}.fpr_at_recall_95pct_delta_pt_verdict", "same"),
    ("the sweep prunes with L2 group importance", SWEEP_PRUNE, "importance", "l2"),
    ("the sweep cuts the same share from every stage", SWEEP_PRUNE, "scope", "uniform"),
    ("the sweep cuts in one shot", SWEEP_PRUNE, "iterative_steps", 1),
    ("the default 25 % cut is distinguishably worse in the sweep", SWEEP, f"{ORT}.auroc_delta_pt_verdict", "worse"),
    ("the 70 % cut too", SWEEP, "[variant=student_pruned_r70_ort_fp32].auroc_delta_pt_verdict", "worse"),
    ("the recovery recipe is the greedy allocation", GREEDY_PRUNE, "scope", "greedy"),
    ("the uniform comparison is uniform", recovery("exp-u21", PRUNE), "scope", "uniform"),
    ("... at the greedy run's ratio", recovery("exp-u21", PRUNE), "ratio", 0.21),
    ("... and epochs", recovery("exp-u21", PRUNE), "epochs", 16),
    ("the greedy run's ratio", GREEDY_PRUNE, "ratio", 0.21),
    (
        "bottle, tire and BSData ship the pruned INT8 student",
        DATASETS,
        "[run=ds-bottle].deployed",
        "student_pruned_int8_auto",
    ),
    ("... tire", DATASETS, "[run=ds-tire].deployed", "student_pruned_int8_auto"),
    ("... BSData", DATASETS, "[run=ds-bsdata].deployed", "student_pruned_int8_auto"),
    ("... with no loss shown (bottle)", DATASETS, "[run=ds-bottle].auroc_pt_verdict", "same"),
    ("... (tire)", DATASETS, "[run=ds-tire].fpr_pt_verdict", "same"),
    ("... (BSData, AUROC even better)", DATASETS, "[run=ds-bsdata].fpr_pt_verdict", "same"),
    ("screw ships the teacher in ORT", DATASETS, "[run=ds-screw].deployed", "teacher_ort_fp32"),
    (
        "at 224 px the pruned INT8 student ships on screw",
        DATASETS,
        "[run=ds-screw-224].deployed",
        "student_pruned_int8_auto",
    ),
    ("the default pruned model is greedy", PRUNE, "scope", "greedy"),
]


def split(source):
    """(file in the working tree, member of it or None): `lab/x/runs.tar.xz:run/metrics/report.json` names a member."""
    file, _, member = source.partition(".tar.xz:")
    return (f"{file}.tar.xz", member) if member else (source, None)


@functools.cache
def archive(file):
    """Every file of a .tar.xz by name, read in one pass (an xz stream cannot seek: each member read alone would
    decompress the archive up to it again)."""
    with tarfile.open(ROOT / file) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


@functools.cache
def load(source):
    file, member = split(source)
    if member:
        text = archive(file)[member].decode()
    else:
        text = (ROOT / file).read_text()
    if source.endswith(".csv"):
        return [{k: cell(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]
    return json.loads(text)


def cell(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def lookup(data, path):
    for key, value, name in re.findall(r"\[([^=\]]+)=([^\]]*)\]|([^.\[\]]+)", path):
        if name:
            data = data[int(name)] if isinstance(data, list) else data[name]
            continue
        rows = [row for row in data if str(row.get(key)) == value]
        if len(rows) != 1:
            raise KeyError(f"[{key}={value}] matches {len(rows)} rows, not 1")
        data = rows[0]
    return data


def render(template, data):
    def field(match):
        value = lookup(data, match[1])
        spec = match[2] or ""
        if spec == "mark":
            return MARKS[value]
        if spec.startswith("%"):
            return format(value * 100, spec[1:])
        return format(value, spec)

    return re.sub(r"\{([^{}:]+)(?::([^{}]*))?\}", field, template)


def flat(text):
    """Line breaks and runs of spaces as one space, so a quote may wrap."""
    return re.sub(r"\s+", " ", text)


@pytest.fixture(scope="module")
def analysis():
    return flat(ANALYSIS.read_text())


def test_quotes_match_their_sources():
    problems = []
    for what, text, source, template in QUOTES:
        if not (ROOT / split(source)[0]).exists():
            problems.append(f"{what}: {split(source)[0]} does not exist; re-point the quote (a study's: see `study()`)")
            continue
        try:
            now = render(template, load(source))
        except (KeyError, IndexError, TypeError, ValueError, tarfile.TarError) as e:
            problems.append(f"{what}: {source} has no {template!r} ({type(e).__name__}: {e})")
            continue
        if now != text:
            problems.append(f"{what}: ANALYSIS.md quotes {text!r}, {source} now gives {now!r}")
    assert not problems, (
        "replace each old text with the new one in ANALYSIS.md and in QUOTES (tests/test_analysis.py):\n"
        + "\n".join(problems)
    )


def test_quotes_appear_in_analysis(analysis):
    missing = [f"{what}: {text!r}" for what, text, _, _ in QUOTES if text not in analysis]
    assert not missing, "ANALYSIS.md no longer has these quotes; fix the text or drop the entry:\n" + "\n".join(missing)


def test_every_number_is_quoted(analysis):
    spans = [
        (m.start(), m.end())
        for text in [text for _, text, _, _ in QUOTES] + list(NOT_RESULTS)
        for m in re.finditer(re.escape(text), analysis)
    ]
    loose = [
        f"{m[0]!r} in '...{analysis[max(0, m.start() - 40) : m.end() + 20]}...'"
        for m in NUMBER.finditer(analysis)
        if not any(start <= m.start() and m.end() <= end for start, end in spans)
    ]
    assert not loose, "numbers in ANALYSIS.md with no entry in QUOTES (add one: source, path, format):\n" + "\n".join(
        loose
    )


def test_claims_hold():
    wrong = [
        f"{what}: {source} {path} is {lookup(load(source), path)!r}, ANALYSIS.md assumes {value!r}"
        for what, source, path, value in CLAIMS
        if lookup(load(source), path) != value
    ]
    assert not wrong, "reword ANALYSIS.md and update CLAIMS:\n" + "\n".join(wrong)


def test_sources_are_committed():
    sources = sorted({split(source)[0] for _, _, source, _ in QUOTES} | {split(s)[0] for _, s, _, _ in CLAIMS})
    tracked = subprocess.run(["git", "ls-files", "--", *sources], cwd=ROOT, capture_output=True, text=True, check=True)
    untracked = set(sources) - set(tracked.stdout.split())
    assert not untracked, f"ANALYSIS.md quotes files that git does not track: {sorted(untracked)}"


def test_figures_exist_and_length(analysis):
    figures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", analysis)
    assert len(figures) <= MAX_FIGURES, f"ANALYSIS.md shows {len(figures)} figures; at most {MAX_FIGURES}"
    assert all((ROOT / f).is_file() for f in figures), (
        f"missing figures: {[f for f in figures if not (ROOT / f).is_file()]}"
    )
    words = len(analysis.split())
    assert words <= MAX_WORDS, f"ANALYSIS.md has {words} words; at most {MAX_WORDS}"


def test_render_reads_csv_json_and_archives(tmp_path):
    (tmp_path / "t.csv").write_text('variant,ratio_pct,d,d_ci95,d_verdict\na,10,-2.84,"[-4.96, -0.81]",worse\n')
    rows = load(str(tmp_path / "t.csv"))  # an absolute path stays itself under ROOT
    assert render("{[variant=a].ratio_pct} %: " + ci95("[variant=a].d"), rows) == "10 %: -2.8 [-5.0, -0.8] ▼"
    with pytest.raises(KeyError):
        lookup(rows, "[variant=b].d")
    run = tmp_path / "exp" / "metrics"
    run.mkdir(parents=True)
    data = {"v": [{"name": "x", "fpr": 0.3542, "s": 12.914, "s_ci95": [12.493, 13.349], "s_verdict": "same"}]}
    (run / "report.json").write_text(json.dumps(data))
    with tarfile.open(tmp_path / "runs.tar.xz", "w:xz") as tar:
        tar.add(tmp_path / "exp", arcname="exp")
    source = f"{tmp_path}/runs.tar.xz:exp/metrics/report.json"
    assert split(source) == (f"{tmp_path}/runs.tar.xz", "exp/metrics/report.json")
    assert render("{v.[name=x].fpr:%.1f} %, " + ci95("v.0.s", **X), load(source)) == "35.4 %, 12.91x [12.49, 13.35]"
