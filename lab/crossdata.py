"""The cross-dataset table: one row per run of the default pipeline on one data set, read from the run's
params.yaml and metrics (prepare.json, report.json, select.json and the training stages' train_minutes).

Per run: the test split, the reference variant's (report.reference) AUROC and FPR at the target recall with
their bootstrap intervals, the variant `select` deployed (or none, with the constraint that binds the closest),
its paired deltas against the reference, speed-up and size, and the first of report.steps, in their order, whose
paired delta in AUROC or FPR at the target recall is distinguishably worse: where compression first hurt.
"""

from pathlib import PurePosixPath

from lab.runs import Run, delta, interval, num

# data set folders (prepare.root's last part, or prepare.dataset when it has no root) -> table name, in row order
NAMES = {
    "elpv": "ELPV",
    "mvtec_ad": "MVTec AD",
    "mvtec_screw": "MVTec AD screw",
    "mvtec3d_tire": "MVTec 3D tire",
    "bsdata_ballscrew": "BSData",
    "NEU-DET": "NEU-DET",
    "neu": "NEU-DET",
    "dagm2007": "DAGM 2007",
}
GROUPS = {"sequence_key": "sequence"}  # manifest columns of prepare.group_by -> the word the table uses
TRAINING = ("finetune_teacher", "train_student", "distill", "prune/student_pruned")  # metrics/<stage>.json


def dataset_key(prep):
    return PurePosixPath(prep["root"]).name if prep.get("root") else prep["dataset"]


def dataset_name(prep):
    """'MVTec AD bottle', 'BSData (by sequence)': the data set as the table names it."""
    key = dataset_key(prep)
    words = [NAMES.get(key, key), *(prep.get("categories") or [])]
    group = prep.get("group_by")
    if group:
        column = group.split(":", 1)[1] if group.startswith("column:") else "file name"
        words.append(f"(by {GROUPS.get(column, column)})")
    return " ".join(words)


def pct_name(stem, fraction):
    """'fpr_at_recall', 0.95 -> 'fpr_at_recall_95pct' (as stages.lib.metrics names it)."""
    return f"{stem}_{round(100 * fraction, 4):g}pct"


def ci(key, value, lo, hi, digits):
    """CSV fields key, key_lo, key_hi of an estimate with its interval (no verdict: not a paired delta)."""
    return {key: num(value, digits), f"{key}_lo": num(lo, digits), f"{key}_hi": num(hi, digits)}


def paired(key, v, field, digits=1):
    """Delta fields of `key` from a report.json variant's `field`, field_ci_low/_high and field_verdict."""
    if v is None:
        return {key: None, f"{key}_lo": None, f"{key}_hi": None, f"{key}_verdict": None}
    bounds = [v[f"{field}_ci_low"], v[f"{field}_ci_high"]]
    return delta(key, v[field], bounds, v.get(f"{field}_verdict"), digits)


def first_hurt(steps, guards):
    """'pruning (AUROC -3.4 pt)': the first step whose paired delta of a guard ({metric: label}) is
    distinguishably worse; 'none' when no step's is."""
    for name, step in steps.items():
        d = step["delta"]
        worse = [
            (label, d[f"{g}_delta_pt"]) for g, label in guards.items() if d.get(f"{g}_delta_pt_verdict") == "worse"
        ]
        if worse:
            return f"{name} (" + ", ".join(f"{label} {value:+.1f} pt" for label, value in worse) + ")"
    return "none"


def binding(selection):
    """'' when a variant was deployed; else the constraint that binds the variant nearest to qualifying."""
    if selection.get("selected"):
        return ""
    if not selection:
        return "the run has no metrics/select.json"
    near = selection.get("closest")
    if not near:
        return "no variant in a deployable runtime"
    return f"closest {near['variant']} misses select.{near['binding']} ({near['value']} vs {near['limit']})"


def training_minutes(run):
    found = [run.json(f"metrics/{s}.json")["train_minutes"] for s in TRAINING if run.has(f"metrics/{s}.json")]
    return round(sum(found), 1) if found else None


def row(run, reference):
    p = run.params
    prep, report, selection = run.json("metrics/prepare.json"), run.json("metrics/report.json"), {}
    if run.has("metrics/select.json"):
        selection = run.json("metrics/select.json")
    fpr = pct_name("fpr_at_recall", p["evaluate"]["target_recall"])
    guards = {"auroc": "AUROC", fpr: f"FPR @{100 * p['evaluate']['target_recall']:g} % recall"}
    ref_name = p["report"]["reference"]
    ref = report["variants"][ref_name]
    chosen = selection.get("selected")
    v = report["variants"][chosen] if chosen else None
    threads = (selection.get("timing") or {}).get("threads", p["base"]["threads"])
    sfx = "" if threads == p["base"]["threads"] else "_1t"  # the steadier thread count, as select judged
    return {
        "run": run.name,
        "dataset": dataset_name(p["prepare"]),
        "image_size": p["base"]["image_size"],
        "resize": p["prepare"].get("resize", "squash"),
        "test_good": prep.get("test_good"),
        "test_defect": prep.get("test_defect"),
        "test_groups": prep.get("test_groups"),
        "reference": ref_name,
        **ci("ref_auroc", ref["auroc"], ref["auroc_ci_low"], ref["auroc_ci_high"], 3),
        **ci("ref_fpr_pct", 100 * ref[fpr], 100 * ref[f"{fpr}_ci_low"], 100 * ref[f"{fpr}_ci_high"], 1),
        "deployed": chosen or "none",
        "binding": binding(selection),
        **paired("auroc_pt", v, "auroc_delta_pt"),
        **paired("fpr_pt", v, f"{fpr}_delta_pt"),
        "speedup_threads": threads,
        **paired("speedup_x", v, f"speedup_x{sfx}", 2),
        "size_mb": num(v["size_mb"], 2) if v else None,
        "first_hurt": first_hurt(report["steps"], guards),
        "train_minutes": training_minutes(run),
        "command": run.command(reference),
    }


def order(r):
    key = next((k for k, name in NAMES.items() if r["dataset"].startswith(name)), None)
    return (list(NAMES).index(key) if key else len(NAMES), r["dataset"], r["run"])


def rows(archive, names, reference):
    return sorted((row(Run(archive, n), reference) for n in names), key=order)


def cell(r, key, spec):
    return "—" if r[key] is None else interval(r, key, spec)


def test_split(r):
    groups = f" ({r['test_groups']} groups)" if r["test_groups"] else ""
    return f"{r['test_good']} / {r['test_defect']}{groups}"


COLUMNS = [
    ("data set", lambda r: r["dataset"]),
    ("input", lambda r: f"{r['image_size']} px, {r['resize']}"),
    ("test good / defect", test_split),
    ("reference AUROC [95% CI]", lambda r: interval(r, "ref_auroc", ".3f")),
    ("reference FPR % @ target recall", lambda r: interval(r, "ref_fpr_pct", ".1f")),
    ("deployed", lambda r: f"none: {r['binding']}" if r["binding"] else f"`{r['deployed']}`"),
    ("Δ AUROC, pt", lambda r: cell(r, "auroc_pt", "+.1f")),
    ("Δ FPR @ target recall, pt", lambda r: cell(r, "fpr_pt", "+.1f")),
    ("speed-up", lambda r: "—" if r["speedup_x"] is None else interval(r, "speedup_x", ".2f", "x")),
    ("size MB", lambda r: "—" if r["size_mb"] is None else f"{r['size_mb']:.2f}"),
    ("compression first hurt", lambda r: r["first_hurt"]),
    ("training min", lambda r: "—" if r["train_minutes"] is None else f"{r['train_minutes']:g}"),
]


def summary(rows):
    """The lines under the table: what the columns mean, then each run's knobs against the reference params."""
    refs = sorted({r["reference"] for r in rows})
    lines = [
        f"Reference: `{'`, `'.join(refs)}` (report.reference); intervals are bootstrap 95 % over the test images, "
        "Δ paired against the reference on the same resamples; ▼ / ▲: distinguishably worse / better. Speed-up: "
        "batch-1 p50 at the thread count `select` judged steadier. First hurt: the first of report.steps, in "
        "order, whose paired Δ AUROC or Δ FPR at the target recall is ▼. Training: the four training stages.",
        "",
        "What each run set against the reference params (the full command is in the CSV):",
    ]
    for r in rows:
        knobs = r["command"].removeprefix("dvc exp run").strip().replace("-S ", "")
        lines.append(f"- {r['dataset']} (`{r['run']}`): {f'`{knobs}`' if knobs else 'the defaults'}")
    return lines
