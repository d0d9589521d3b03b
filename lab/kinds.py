"""The tables of the studies other than pruning: each kind reads an archive and returns (rows, columns, lines).

rows are the results CSV (one dict per row, numbers rounded as shown), columns the README table (header, cell
function of a row), lines what the README says under the table, every number from the archive.
"""

import csv
import io

from lab import crossdata, pruning
from lab.runs import Run, delta, fmt, interval, num


def pruned(archive, study, reference):
    rows = pruning.rows(archive, study.runs(archive), reference, study.stage)
    columns = pruning.COLUMNS
    if all(r["int8_auroc_pt"] is None for r in rows):  # the runs compared FP32 only
        columns = [c for c in columns if not c[0].startswith("INT8")]
    return rows, columns, pruning.summary(rows)


def paired(row, key, field, digits=1):
    """The delta fields of `key` from a comparison.csv row's `field` and its _ci_low, _ci_high, _verdict."""
    bounds = [float(row[f"{field}_ci_low"]), float(row[f"{field}_ci_high"])]
    return delta(key, float(row[field]), bounds, row.get(f"{field}_verdict"), digits)


def variants(archive, study, reference):
    """One run, every variant paired against the run's report.reference; the report's steps under the table."""
    (name,) = study.runs(archive)
    run = Run(archive, name)
    rows = []
    for v in run.csv("plots/report/comparison.csv"):
        rows.append(
            {
                "variant": v["variant"],
                **paired(v, "auroc", "auroc", 3),
                **paired(v, "auroc_pt", "auroc_delta_pt"),
                **paired(v, "fpr95_pt", "fpr_at_recall_95pct_delta_pt"),
                "latency_ms_p50": num(v["latency_ms_p50"], 2),
                **paired(v, "speedup_x", "speedup_x", 2),
                "size_mb": num(v["size_mb"], 2),
            }
        )
    reference_variant = run.params["report"]["reference"]
    columns = [
        ("variant", lambda r: r["variant"]),
        ("test AUROC [95% CI]", lambda r: interval(r, "auroc", ".3f")),
        (f"Δ AUROC vs {reference_variant}, pt", lambda r: interval(r, "auroc_pt")),
        ("Δ FPR @95 % recall, pt", lambda r: interval(r, "fpr95_pt")),
        ("p50 ms (2 threads)", lambda r: f"{r['latency_ms_p50']:.2f}"),
        ("speed-up", lambda r: interval(r, "speedup_x", ".2f", "x")),
        ("size MB", lambda r: f"{r['size_mb']:.2f}"),
    ]
    lines = [
        f"Paired against `{reference_variant}` on the same test images and benchmark rounds. Steps of the run's report:"
    ]
    for step, s in run.json("metrics/report.json")["steps"].items():
        d = s["delta"]
        auroc = delta("x", d["auroc_delta_pt"], d["auroc_delta_pt_ci95"], d["auroc_delta_pt_verdict"])
        fpr = delta(
            "x",
            d["fpr_at_recall_95pct_delta_pt"],
            d["fpr_at_recall_95pct_delta_pt_ci95"],
            d["fpr_at_recall_95pct_delta_pt_verdict"],
        )
        lines.append(
            f"- {step} ({s['before']} → {s['after']}): Δ AUROC {interval(auroc, 'x')}, Δ FPR {interval(fpr, 'x')}"
        )
    sparse = {model: m for model, m in run.prune().items() if "size_deflate_mb" in m}
    lines += ["", "What the zeros save in storage (PyTorch state dict):"] if sparse else []
    for model, m in sparse.items():
        lines.append(
            f"- {model}: {100 * m['sparsity_target_layers']:.1f} % zeros; state dict {m['size_dense_mb']:.2f} MB "
            f"dense, {m['size_deflate_mb']:.2f} deflated, {m['size_bitmask_mb']:.2f} as bitmask + values"
        )
    return rows, columns, lines


def precision(archive, study, reference):
    """Every recipe of every model, paired against the same model in ONNX Runtime FP32."""
    rows = []
    for name in study.runs(archive):
        for p in Run(archive, name).json("metrics/report.json")["precision"]:
            if p["recipe"] in ("torch_fp32", "ort_fp32"):  # the reference and its PyTorch twin
                continue
            rows.append(
                {
                    "run": name,
                    "model": p["model"],
                    "recipe": p["recipe"],
                    **delta("auroc_pt", p["auroc_vs_fp32_pt"], p["auroc_vs_fp32_pt_ci95"], p["auroc_vs_fp32_verdict"]),
                    **delta(
                        "fpr95_pt",
                        p["fpr_at_recall_95pct_vs_fp32_pt"],
                        p["fpr_at_recall_95pct_vs_fp32_pt_ci95"],
                        p["fpr_at_recall_95pct_vs_fp32_verdict"],
                    ),
                    **delta(
                        "speedup_x",
                        p["speedup_vs_fp32_x"],
                        p["speedup_vs_fp32_x_ci95"],
                        p["speedup_vs_fp32_verdict"],
                        2,
                    ),
                    "size_mb": num(p["size_mb"], 2),
                    "ptq_hurt": {True: "yes", False: "no"}.get(p.get("ptq_hurt"), ""),
                }
            )
    columns = [
        ("run", lambda r: r["run"]),
        ("model", lambda r: r["model"]),
        ("recipe", lambda r: r["recipe"]),
        ("Δ AUROC, pt", lambda r: interval(r, "auroc_pt")),
        ("Δ FPR @95 % recall, pt", lambda r: interval(r, "fpr95_pt")),
        ("x vs ORT FP32", lambda r: interval(r, "speedup_x", ".2f", "x")),
        ("size MB", lambda r: f"{r['size_mb']:.2f}"),
        ("PTQ hurt (val)", lambda r: r["ptq_hurt"]),
    ]
    lines = ["Paired against the same model in ONNX Runtime FP32 (same test images, same benchmark rounds)."]
    return rows, columns, lines


def finetune(archive, study, reference):
    """Runs of single stages (a fine-tune or a prune), on validation: the best epoch's AUROC and the minutes."""
    rows = []
    for name in study.runs(archive):
        run = Run(archive, name)
        pruned_model = run.has("metrics/prune/student_pruned.json") and run.params["prune"].get("source") == "teacher"
        m = run.json("metrics/prune/student_pruned.json" if pruned_model else f"metrics/{study.metrics}.json")
        knob = "prune.importance" if pruned_model else "train.lr"
        section, key = knob.split(".")
        rows.append(
            {
                "run": name,
                "knob": f"{knob}={run.params[section][key]}",
                "processes": run.params["train"].get("processes", 1),
                "best_epoch": m["best_epoch"],
                "val_auroc": num(m["val_auroc"], 4),
                "macs_m": f"{m['macs_before_m']} -> {m['macs_after_m']}" if "macs_after_m" in m else "",
                "minutes": m["train_minutes"],
                "command": run.command(reference, "prune" if pruned_model else study.stage),
            }
        )
    columns = [(h, lambda r, k=k: fmt(r[k], ".4f" if k == "val_auroc" else "")) for h, k in study.columns]
    return rows, columns, []


def gpu(archive, study, reference):
    """PyTorch on a lent GPU (benchmark.json) and 2:4 semi-structured GEMMs (sparse24.json)."""
    rows = [
        {
            "variant": name,
            "cpu_latency_ms_p50": num(e["latency_ms_p50"], 2),
            "gpu_latency_ms_p50": num(e["gpu_latency_ms_p50"], 2),
            "gpu_fp16_latency_ms_p50": num(e["gpu_fp16_latency_ms_p50"], 2),
            "gpu_throughput_img_s": round(e["gpu_throughput_img_s"]),
            "gpu_fp16_throughput_img_s": round(e["gpu_fp16_throughput_img_s"]),
        }
        for name, e in archive.json("benchmark.json")["variants"].items()
    ]
    heads = ("CPU p50 ms (2 threads)", "GPU p50 ms FP32", "GPU p50 ms FP16", "GPU img/s FP32", "GPU img/s FP16")
    columns = [("variant", lambda r: r["variant"])]
    columns += [
        (h, lambda r, k=k: f"{r[k]:.2f}" if "latency" in k else str(r[k]))
        for h, k in zip(heads, list(rows[0])[1:], strict=True)
    ]
    fp = archive.json("fingerprint.json")
    lines = [
        f"Machine: {fp['cpu']}, {fp['usable_cpus']} CPUs, {', '.join(fp['gpus'])}; eager PyTorch, batch 1 latency and batch 32 throughput."
    ]
    for key, r in archive.json("sparse24.json").items():
        if key.startswith("tokens_"):
            lines.append(
                f"- 2:4 GEMMs of the distilled student, {r['tokens']} rows: dense {r['dense_ms_total']:.3f} ms, "
                f"2:4 sparse {r['sparse_ms_total']:.3f} ms ({r['speedup_x']:.3f}x, {r['layers_timed']} layers)"
            )
    return rows, columns, lines


def int8_layers(archive, study, reference):
    """Where static INT8 loses a pruned student (summary.json and layers.csv of analyse.py)."""
    layers = list(csv.DictReader(io.StringIO(archive.text("layers.csv"))))
    rows = []
    for s in archive.json("summary.json"):
        best = max((f for f in s["fallback"] if f["ranking"] == "logits"), key=lambda f: f["val_auroc"])
        mine = [x for x in layers if x["model"] == s["model"]]
        rows.append(
            {
                "model": s["model"],
                "run": f"{s['branch']}:{s['variant']}",
                "val_auroc_fp32": s["val_auroc_fp32"],
                "val_auroc_int8": s["val_auroc_int8"],
                "logit_sqnr_db": num(s["logit_sqnr_db"], 1),
                "top1_agreement": num(s["top1_agreement"], 3),
                "stem_alone_sqnr_db": num(mine[0]["alone_logit_sqnr_db"], 1),
                "fallback_layers": ", ".join(map(str, best["layers"])),
                "fallback_val_auroc": best["val_auroc"],
            }
        )
    heads = (
        "model",
        "run",
        "val AUROC FP32",
        "val AUROC INT8",
        "logit SQNR, dB",
        "top-1 agreement",
        "stem conv alone INT8, logit SQNR dB",
        "best logits fallback: layers in float",
        "its val AUROC",
    )
    columns = [(h, lambda r, k=k: str(r[k])) for h, k in zip(heads, rows[0], strict=True)]
    return (
        rows,
        columns,
        ["Validation split, `int8_static_pc` as the pipeline made it; layer 0 is the stem conv, 1 its depthwise conv."],
    )


def int8_fidelity(archive, study, reference):
    """Each model's INT8 against its FP32 twin: as int8_auto shipped it (val, test) and all-INT8 by calibration size
    (val), from summary.json of fidelity.py."""
    summary, split = archive.json("summary.json"), archive.json("run/metrics/prepare.json")
    rows = []
    for r in summary["shipped_int8_auto"] + summary["all_int8_by_calibration"]:
        lo, hi = r["auroc_delta_pt_ci95"]
        verdict = "worse" if hi < 0 else "better" if lo > 0 else None
        shipped = "split" in r
        what = f"int8_auto ({r['fp32_layers']} in float)" if shipped else f"all-INT8, {r['calibration_images']} calib"
        rows.append(
            {
                "model": r["model"],
                "int8": what,
                "split": r.get("split", "val"),
                "auroc_fp32": r["auroc_fp32"],
                "auroc_int8": r["auroc_int8"],
                **delta("auroc_pt", r["auroc_delta_pt"] + 0.0, (lo, hi), verdict, 2),  # never -0.00
                "logit_sqnr_db": r["logit_sqnr_db"],
                "pairs_flipped_pct": r["pairs_flipped_pct"],
                "pairs_put_wrong_pct": r["pairs_put_wrong_pct"],
                "pairs_put_right_pct": r["pairs_put_right_pct"],
            }
        )
    columns = [
        ("model", lambda r: r["model"]),
        ("INT8 model", lambda r: r["int8"]),
        ("split", lambda r: r["split"]),
        ("AUROC FP32 -> INT8", lambda r: f"{r['auroc_fp32']:.4f} -> {r['auroc_int8']:.4f}"),
        ("Δ AUROC, pt [paired 95% CI]", lambda r: interval(r, "auroc_pt", "+.2f")),
        ("logit SQNR, dB", lambda r: f"{r['logit_sqnr_db']:.1f}"),
        ("(defect, good) pairs flipped %", lambda r: f"{r['pairs_flipped_pct']:.2f}"),
        ("put wrong %", lambda r: f"{r['pairs_put_wrong_pct']:.2f}"),
        ("put right %", lambda r: f"{r['pairs_put_right_pct']:.2f}"),
    ]
    return (
        rows,
        columns,
        [
            "Each INT8 model against its own ONNX Runtime FP32 twin, on the default run's splits (validation: "
            f"{split['val_defect']} defects, {split['val_good']} good; test: {split['test_defect']} and "
            f"{split['test_good']}). AUROC is the share of (defect, good) pairs ranked right, so its change is the "
            "pairs INT8 puts right minus those it puts wrong (up to tied scores). `all-INT8, 128 calib` is int8_auto's "
            "first step (the default calibration)."
        ],
    )


def datasets(archive, study, reference):
    """One row per run, each the default pipeline on one data set (lab/crossdata.py)."""
    rows = crossdata.rows(archive, study.runs(archive), reference)
    return rows, crossdata.COLUMNS, crossdata.summary(rows)


KINDS = {f.__name__: f for f in (pruned, variants, precision, finetune, gpu, int8_layers, int8_fidelity, datasets)}
