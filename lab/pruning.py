"""The table of the pruning studies: one row per pruned model of every run, paired against the unpruned distilled
student of the same run, in ONNX Runtime FP32 and after static INT8 (`int8_static_pc`), with the recovery target.

A run with plots/report/sweep.csv (the report stage's per-model table) gives every pruned model and INT8 recipe;
an older run without it gives its one pruned model in FP32, from metrics/report.json's `pruning` step.
"""

from lab.runs import Run, delta, flow, interval, num

FP32, INT8 = "ort_fp32", "int8_static_pc"
NOT_INT8 = (FP32, "torch_fp32")
MIN_MACS_CUT = 0.40  # the recovery target: at least 40 % fewer MACs ...
# ... and neither threshold-free delta (AUROC, FPR at 95 % recall) distinguishably worse


def sweep_result(row):
    return {
        "ratio_pct": int(row["ratio_pct"]),
        "macs_m": float(row["macs_m"]),
        "auroc": float(row["auroc"]),
        **delta("auroc_pt", float(row["auroc_delta_pt"]), row["auroc_delta_pt_ci95"], row["auroc_delta_pt_verdict"]),
        **delta(
            "fpr95_pt",
            float(row["fpr_at_recall_95pct_delta_pt"]),
            row["fpr_at_recall_95pct_delta_pt_ci95"],
            row["fpr_at_recall_95pct_delta_pt_verdict"],
        ),
    }


def results(run, prune):
    """({model: {recipe: result}}, base MACs) of the run's pruned models, each paired against the unpruned model."""
    if run.has("plots/report/sweep.csv"):
        rows = run.csv("plots/report/sweep.csv")
        base = next(float(r["macs_m"]) for r in rows if r["ratio_pct"] == "0" and r["model"] not in prune)
        out = {}
        for r in rows:
            if r["model"] in prune:
                out.setdefault(r["model"], {})[r["recipe"]] = sweep_result(r)
        return out, base
    report, m = run.json("metrics/report.json"), prune["student_pruned"]
    step = report["steps"]["pruning"]
    d = step["delta"]
    result = {
        "ratio_pct": round(100 * m["ratio"]),
        "macs_m": m["macs_after_m"],
        "auroc": report["variants"][step["after"]]["auroc"],
        **delta("auroc_pt", d["auroc_delta_pt"], d["auroc_delta_pt_ci95"], d["auroc_delta_pt_verdict"]),
        **delta(
            "fpr95_pt",
            d["fpr_at_recall_95pct_delta_pt"],
            d["fpr_at_recall_95pct_delta_pt_ci95"],
            d["fpr_at_recall_95pct_delta_pt_verdict"],
        ),
    }
    return {"student_pruned": {FP32: result}}, m["macs_before_m"]


def target(result, base):
    if result is None or result["ratio_pct"] == 0:
        return "—"
    cut = result["macs_m"] <= (1 - MIN_MACS_CUT) * base
    worse = "worse" in (result["auroc_pt_verdict"], result["fpr95_pt_verdict"])
    return "met" if cut and not worse else "not met"


def epochs(m):
    """'16', or '8 sparse (decoupled, reg 1.0) + 8' with sparse learning before the cut."""
    if not m.get("sparse_epochs"):
        return str(m["epochs"])
    return f"{m['sparse_epochs']} sparse ({m.get('reg_form', 'gradient')}, reg {m['reg']}) + {m['epochs']}"


def rows(archive, names, reference, stage=None):
    out, seen = [], {}
    for name in names:
        run = Run(archive, name)
        prune = run.prune()
        by_model, base = results(run, prune)
        changes = run.changes(reference)
        knobs = " ".join(
            f"{k.removeprefix('prune.')}={flow(v)}" for k, (v, _) in changes.items() if k.startswith("prune.")
        )
        for model in sorted(by_model, key=lambda m: prune[m]["ratio"]):
            m, recipes = prune[model], by_model[model]
            fp32, int8 = recipes[FP32], recipes.get(INT8)
            md5 = run.model_md5(model)
            others = [
                f"{recipe} {interval(r, 'auroc_pt')}, {target(r, base)}"
                for recipe, r in sorted(recipes.items())
                if recipe not in (*NOT_INT8, INT8)
            ]
            row = {
                "run": name,
                "model": model,
                "same_model_as": seen.get(md5, "") if md5 else "",
                "knobs": knobs or "defaults",
                "removed_pct": fp32["ratio_pct"],
                "macs_m": num(fp32["macs_m"], 1),
                "macs_change_pct": round(100 * (fp32["macs_m"] / base - 1)),
                "epochs": epochs(m),
                "seed": run.seed(),
                "finetune_min": m.get("train_minutes"),
                "val_auroc": num(m["val_auroc"], 3),
                "test_auroc": num(fp32["auroc"], 3),
                **{k: fp32[k] for k in fp32 if k.startswith(("auroc_pt", "fpr95_pt"))},
                "target": target(fp32, base),
                **{f"int8_{k}": (int8 or {}).get(k) for k in fp32 if k.startswith("auroc_pt")},
                "int8_target": target(int8, base),
                "other_int8": "; ".join(others),
                "command": run.command(reference, stage),
            }
            seen.setdefault(md5, name)
            out.append(row)
    return out


COLUMNS = [  # the README's; results.csv also has model, seed, test AUROC, minutes, other INT8 recipes, command
    ("run", lambda r: r["run"] + (f" (= {r['same_model_as']})" if r["same_model_as"] else "")),
    ("prune knobs", lambda r: r["knobs"]),
    ("removed %", lambda r: str(r["removed_pct"])),
    ("MACs (M)", lambda r: f"{r['macs_m']} ({r['macs_change_pct']:+d} %)"),
    ("epochs", lambda r: r["epochs"]),
    ("val AUROC", lambda r: f"{r['val_auroc']:.3f}"),
    ("Δ AUROC, pt", lambda r: interval(r, "auroc_pt")),
    ("Δ FPR @95 % recall, pt", lambda r: interval(r, "fpr95_pt")),
    ("target", lambda r: r["target"]),
    ("INT8 Δ AUROC, pt", lambda r: interval(r, "int8_auroc_pt")),
    ("INT8 target", lambda r: r["int8_target"]),
]


def summary(rows):
    """Lines under the table: who met the target, how often a recipe met it across seeds, other INT8 recipes."""
    fresh = [r for r in rows if not r["same_model_as"]]
    lines = [
        f"Test split, paired against the unpruned distilled student of the same run (▲ / ▼: the 95 % interval "
        f"excludes no change). Target: >= {MIN_MACS_CUT:.0%} fewer MACs, neither Δ worse (▼)."
    ]
    for label, key in (("FP32", "target"), ("INT8", "int8_target")):
        met = [f"{r['run']} at {r['removed_pct']} %" for r in fresh if r[key] == "met"]
        if len(fresh) > 1 and any(r[key] != "—" for r in fresh):
            lines.append(f"- {label} target met by {', '.join(met) or 'none'} (of {len(fresh)} pruned models).")
    groups = {}
    for r in fresh:
        knobs = " ".join(k for k in r["knobs"].split() if not k.startswith("seed="))
        groups.setdefault((knobs, r["removed_pct"]), []).append(r)
    for (knobs, pct), group in groups.items():
        if len(group) > 1 and pct:
            seeds = {key: sum(r[key] == "met" for r in group) for key in ("target", "int8_target")}
            lines.append(
                f"- `{knobs}` at {pct} % over {len(group)} seeds: FP32 target met {seeds['target']} of "
                f"{len(group)}, INT8 {seeds['int8_target']} of {len(group)}."
            )
    lines += [
        f"- {r['run']}, other INT8 recipes (Δ AUROC, target): {r['other_int8']}." for r in rows if r["other_int8"]
    ]
    return lines
