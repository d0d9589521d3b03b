import numpy as np
import pandas as pd
import pytest

from stages.lib import metrics, runtime
from stages.lib.report import comparison, deployment, gpu, summary, writeup

NAMES = metrics.binary_ci_names(0.95, [1, 5])
GUARDS = ["auroc", "fpr_at_recall_95pct"]


def predictions(labels, score, threshold=0.5):
    return pd.DataFrame(
        {
            "sha256": np.arange(len(labels)).astype(str),
            "label": labels,
            "pred": (score >= threshold).astype(int),
            "score": score,
        }
    )


def evaluated(pred, test_sha="abc"):
    y, s, p = pred["label"].to_numpy(), pred["score"].to_numpy(), pred["pred"].to_numpy()
    m = {
        **metrics.binary_metrics(s, y, 0.5),
        "task": "binary",
        "ap": metrics.average_precision(s, y),
        "test_sha256": test_sha,
        "target_recall": 0.95,
    }
    m["fpr_at_recall_95pct"] = metrics.fpr_at_recall(s, y, 0.95)
    m["recall_at_fpr_1pct"], m["recall_at_fpr_5pct"] = (
        metrics.recall_at_fpr(s, y, 0.01),
        metrics.recall_at_fpr(s, y, 0.05),
    )
    return m | {f"{k}_ci95": v for k, v in metrics.bootstrap_ci(y, p, s, NAMES, 200, 0).items()}


def bench(latency, size):
    return {
        "latency_ms_p50": latency,
        "latency_ms_p50_ci95": [latency * 0.98, latency * 1.02],
        "latency_ms_p50_cov_pct": 1.0,
        "latency_ms_p90": latency * 1.2,
        "latency_ms_p99": latency * 1.3,
        "throughput_img_s": 1000 / latency,
        "size_mb": size,
        "param_count": 1_000_000,
        "peak_rss_mb": 100,
        "cost_usd_per_1m_images": 0.1,
        "runtime": "onnxruntime",
        "fingerprint_id": "x",
        "settings": {**runtime.ORT_CPU, "threads": 2, "onnxruntime": "1.0"},
    }


def rounds(latencies, noise=0.02, n=5, seed=0):
    """Per-round p50 rows; a shared per-round factor (the machine's mood) multiplies every variant."""
    rng = np.random.default_rng(seed)
    mood = 1 + rng.normal(0, 0.2, n)
    return pd.DataFrame(
        [
            {"round": r + 1, "variant": v, "threads": 2, "latency_ms_p50": ms * mood[r] * (1 + rng.normal(0, noise))}
            for v, ms in latencies.items()
            for r in range(n)
        ]
    )


@pytest.fixture
def evidence():
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.3).astype(int)
    good = np.clip(rng.normal(0.3 + 0.45 * labels, 0.15), 0, 1)
    noisy = np.clip(good + rng.normal(0, 0.004, 400), 0, 1)  # INT8-like: same ranking, tiny noise
    broken = np.clip(rng.normal(0.45 + 0.1 * labels, 0.15), 0, 1)  # ranks defects far worse
    preds = {
        "teacher": predictions(labels, good),
        "int8": predictions(labels, noisy),
        "pruned": predictions(labels, broken),
    }
    lat = {"teacher": 10.0, "int8": 1.0, "pruned": 0.5}
    return comparison.Evidence(
        {v: evaluated(p) for v, p in preds.items()},
        {"teacher": bench(10, 20), "int8": bench(1, 5), "pruned": bench(0.5, 2)},
        rounds(lat),
        preds,
        draws=300,
        seed=0,
        threads=2,
    )


def test_deltas_speedups_and_verdicts(evidence):
    table = comparison.build_table(evidence, "teacher")
    assert list(table.index) == ["teacher", "int8", "pruned"]  # the reference first
    assert table.loc["teacher", "speedup_x"] == 1.0 and table.loc["teacher", "auroc_delta_pt_verdict"] == "same"
    assert table.loc["int8", "auroc_delta_pt_verdict"] == "same"  # tiny noise: not distinguishable
    assert table.loc["pruned", "auroc_delta_pt_verdict"] == "worse"
    assert table.loc["pruned", "fpr_at_recall_95pct_delta_pt_verdict"] == "worse"  # more false alarms is worse
    # paired over rounds: the shared per-round swings (20 %) cancel, the 10x stays tight
    assert table.loc["int8", "speedup_x"] == pytest.approx(10, rel=0.05)
    assert table.loc["int8", "speedup_x_ci_high"] / table.loc["int8", "speedup_x_ci_low"] < 1.1
    assert table.loc["int8", "speedup_x_verdict"] == "better" and table.loc["int8", "size_ratio"] == 0.25


def test_unpaired_rounds_would_be_wider(evidence):
    lat = evidence.rounds.pivot(index="round", columns="variant", values="latency_ms_p50")
    _, paired = metrics.paired_ratio(lat["teacher"], lat["int8"])
    unpaired = metrics.paired_ratio(lat["teacher"], lat["int8"].sample(frac=1, random_state=1).to_numpy())[1]
    assert paired[1] - paired[0] < unpaired[1] - unpaired[0]


def test_verdict_directions():
    assert comparison.verdict("auroc", (-3, -1)) == "worse" and comparison.verdict("auroc", (1, 3)) == "better"
    assert comparison.verdict("fpr_at_recall_95pct", (1, 3)) == "worse"
    assert comparison.verdict("fpr", (-0.5, 2)) == "same"
    assert (
        comparison.verdict("speedup_x", (1.5, 2.0)) == "better"
        and comparison.verdict("speedup_x", (0.9, 1.2)) == "same"
    )
    assert comparison.verdict("auroc", (float("nan"), float("nan"))) == "same"


def test_pareto_front_on_threshold_free_quality(evidence):
    table = comparison.build_table(evidence, "teacher")
    assert {"int8", "pruned"} <= set(comparison.pareto_front(table, "latency_ms_p50", "auroc"))
    # a variant slower and worse-ranking than another is dominated, whatever its thresholded recall
    slow = table.loc[["int8"]].assign(latency_ms_p50=5.0, auroc=table.loc["int8", "auroc"] - 0.01, recall=1.0)
    both = pd.concat([table, slow.rename(index={"int8": "slow"})])
    assert "slow" not in comparison.pareto_front(both, "latency_ms_p50", "auroc")
    # false alarms at matched recall: lower is better
    fpr = pd.DataFrame({"size_mb": [1.0, 2.0, 3.0], "fpr_at_recall_95pct": [0.30, 0.10, 0.20]}, index=["a", "b", "c"])
    assert comparison.pareto_front(fpr, "size_mb", "fpr_at_recall_95pct") == ["a", "b"]


def test_recommendation_skips_variants_that_are_distinguishably_worse(evidence):
    table = comparison.build_table(evidence, "teacher")
    pick, rule = comparison.recommend(table, GUARDS, evidence)
    assert pick == "int8"  # pruned is faster but ranks worse
    assert "not distinguishably worse" in rule


def test_refuses_different_test_sets_half_measured_variants_and_unknown_reference(evidence):
    ev = dict(evidence.evaluated, int8={**evidence.evaluated["int8"], "test_sha256": "xyz"})
    with pytest.raises(ValueError, match="different test sets"):
        comparison.Evidence(ev, evidence.benchmarked, evidence.rounds, evidence.predictions)
    with pytest.raises(ValueError, match="not both"):
        comparison.Evidence(evidence.evaluated, {"teacher": bench(1, 1)}, evidence.rounds, evidence.predictions)
    with pytest.raises(ValueError, match=r"report\.reference='x'"):
        comparison.build_table(evidence, "x")


def test_report_markdown_reads_everything_from_the_table(evidence):
    table = comparison.build_table(evidence, "teacher")
    steps = {
        "int8": {"before": "teacher", "after": "int8", "delta": evidence.compare("int8", "teacher")},
        "pruning": {"before": "int8", "after": "pruned", "delta": evidence.compare("pruned", "int8")},
    }
    pick, rule = comparison.recommend(table, GUARDS, evidence)
    fp = {
        "id": "abc123",
        "cpu": "Test CPU",
        "cpu_id": "x/1/2/3",
        "usable_cpus": 2,
        "memory_gib": 8,
        "cpu_flags": ["avx2"],
        "gpus": [],
        "os": "Linux",
        "python": "3.11",
        "libraries": {"onnxruntime": "1"},
    }
    bench_json = {"variants": evidence.benchmarked, "rounds": 5, "threads": [1, 2], "batch_size": 32}
    prepared = {
        "n_images": 1200,
        "test_images": 400,
        "test_defect": 120,
        "test_good": 280,
        "val_defect": 120,
        **{f"{s}_images": 400 for s in ("train", "val")},
    }
    params = {
        "prepare": {"dataset": "elpv", "val_fraction": 0.15, "test_fraction": 0.15},
        "base": {"image_size": 128, "seed": 42},
    }
    ctx = {
        "reference": "teacher",
        "guards": GUARDS,
        "names": ["recall", "fpr", "auroc", "fpr_at_recall_95pct"],
        "steps": steps,
        "recommended": pick,
        "rule": rule,
        "fingerprint": fp,
        "bench": bench_json,
        "prepared": prepared,
        "info": {"task": "binary", "classes": ["good", "defect"]},
        "params": params,
        "target_recall": 0.95,
    }
    text = writeup.render(table, ctx)
    check_summary(table, ctx)
    assert "first that costs quality is **pruning**" in text
    assert f"**`{pick}`**" in text and "abc123" in text and "▼" in text
    auroc = table.loc["pruned", "auroc"]
    assert f"{auroc:.3f}" in text  # numbers come from the table
    # A narrowed `compare` can leave no step with both variants: the report says so instead of failing.
    text = writeup.render(table, {**ctx, "steps": {}})
    assert "No step of `report.steps` has both of its variants" in text and "No step in this run made" in text


def check_summary(table, ctx):
    """REPORT.md's first section: the deployed variant against the reference, on one screen, from the table."""
    selected = {"selected": "int8", "rule": "r", "timing": {"threads": 2, "median_cov_pct": {"1": 3.0, "2": 20.0}}}
    text = "\n".join(summary.render(table, ctx, selected))
    assert len(text.split()) <= 350 and "**Deployed: `int8`**" in text
    row = table.loc["int8"]
    delta = f"{row['auroc_delta_pt']:+.1f} [{row['auroc_delta_pt_ci_low']:+.1f}, {row['auroc_delta_pt_ci_high']:+.1f}]"
    speed = f"{row['speedup_x']:.2f}x [{row['speedup_x_ci_low']:.2f}, {row['speedup_x_ci_high']:.2f}] ▲"
    assert delta in text and speed in text and f"{row['size_mb']:.2f}" in text  # numbers from the table
    assert "- **pruning**" in text and "▼" in text  # each step with its price
    assert "120 defective test images" in text and "judged at 2 threads" in text and "`abc123`" in text
    # nothing deployed: the summary says so and shows the report's own recommendation instead
    text = "\n".join(summary.render(table, ctx, {"selected": None}))
    assert "**Nothing deployed**" in text and f"**`{ctx['recommended']}`**" in text


def test_gpu_section_only_with_gpu_rounds_and_against_the_targets():
    cpu = {"variants": {"a_torch_fp32": {"runtime": "torch"}}}
    assert gpu.section(cpu) == []  # a CPU-only benchmark: no section
    g = {
        "device": "H200",
        "dtype": "float16",
        "latency_ms_p50_b1": 0.8,
        "latency_ms_p50_b1_ci95": [0.78, 0.83],
        "latency_ms_p50_b1_by_dtype": {"float32": 1.1, "float16": 0.8},
        "throughput_img_s": {"1": 1200.0, "1024": 79000.0},
        "throughput_img_s_compiled": {"1024": 145000.0},
        "compile_s": {"1024": 18.2},
        "peak_gpu_mem_mb": 900.0,
    }
    bench = {
        "variants": {
            "student_kd_torch_fp32": {"runtime": "torch", "gpu": g},
            "teacher_torch_fp32": {"runtime": "torch", "gpu": {**g, "latency_ms_p50_b1": 1.5, "compile_s": {}}},
            "student_kd_int8_auto": {"runtime": "onnxruntime", "gpu": {"skipped": "no CUDA provider"}},
        },
        "gpu": {"device": {"name": "H200", "driver": "1", "cuda": "13"}, "gpu_compile": ["student_kd_torch_fp32"]},
    }
    text = "\n".join(gpu.section(bench))
    assert text.startswith("## GPU") and "0.800 [0.780, 0.830]" in text and "145,000 (1024, compiled)" in text
    assert "`student_kd_int8_auto` (no CUDA provider)" in text
    assert "`student_kd_torch_fp32` 0.800 ms (met), 145,000 img/s (met)" in text  # the targets name the Lite0 only
    assert "`teacher_torch_fp32` 1.50" not in text


def test_screen_limit_is_the_least_of_the_model_the_decoders_and_the_shared_cores():
    """2 cores. Model 2 threads at 1000 images/s (2 ms of CPU an image), decoding 2 ms an image on 1 thread: the
    decoder and the shared cores allow 500 images/s. The model on 1 thread at 400 images/s: it is the limit."""
    scr = {"images": 100, "decode_seconds": 0.2, "threads": 2, "cpu_count": 2, "model_only_throughput_img_s": 1000.0}
    scr |= {"images_per_s": 400.0, "workers": 1, "runtime_settings": {"intra_op_allow_spinning": False}}
    text = " ".join(deployment.screen_limit(scr))
    assert "End to end is 40 % of the model alone at the same 2 thread(s)" in text
    assert "2.00 ms of CPU an image, the model 2.00 ms" in text and "2 cores shared by both allow ~500" in text
    assert "at most ~500 (50 %)" in text and "do not spin-wait" in text
    one = {**scr, "threads": 1, "model_only_threads": 1, "model_only_throughput_img_s": 400.0, "images_per_s": 360.0}
    one |= {"benchmark_threads": 2, "benchmark_throughput_img_s": 1000.0, "model_only_batch_size": 32}
    text = " ".join(deployment.screen_limit(one))
    assert (
        "90 % of the model alone at the same 1 thread(s)" in text and "at most ~400 (100 %), set by the model" in text
    )
    assert deployment.model_alone(one) == (
        "the model alone in the benchmark at the same 1 thread(s): 400.0 images/s; at the benchmark's 2: 1000.0 "
        "images/s (batch 32, median over rounds)"
    )
    assert deployment.screen_runs({"images_per_s_runs": [410.9, 473.2, 398.0]}) == "; the median of 3 runs, 398.0-473.2"
    assert deployment.screen_runs({}) == ""  # one run (a select.json from before): no range claimed
    assert deployment.screen_limit({**scr, "cpu_count": None}) == []  # a select.json from before: nothing claimed
