"""REPORT.md: the comparison written out - data, machine, tables, what each step bought and cost.

Every number is read from the comparison table and the metrics files of the run being
reported; nothing is typed in. The report stage calls `render`.
"""

import pandas as pd

from stages.lib.report.formatting import LEGEND, SPEED_LEGEND, fmt_delta, fmt_speedup, interval, label, ms, with_ci


def quality_table(table, names, guards, reference):
    show = pd.DataFrame(index=table.index)
    for name in names:
        show[f"{label(name)} [95% CI]"] = [with_ci(name, r[name], interval(r, name)) for _, r in table.iterrows()]
    for g in guards:
        key = f"{g}_delta_pt"
        show[f"Δ {label(g)}, pt vs {reference}"] = [
            fmt_delta(r[key], interval(r, key), r.get(f"{key}_verdict", "same")) for _, r in table.iterrows()
        ]
    return show.to_markdown() + "\n"


def cost_table(table, reference):
    show = pd.DataFrame(index=table.index)
    show["runtime"] = table["runtime"]
    show["p50 ms [95% CI]"] = [
        f"{ms(r['latency_ms_p50'])} [{ms(r['latency_ms_p50_ci_low'])}, {ms(r['latency_ms_p50_ci_high'])}]"
        for _, r in table.iterrows()
    ]
    show["CoV %"] = table["latency_ms_p50_cov_pct"].map(lambda v: f"{v:.1f}")
    show["p99 ms"] = table["latency_ms_p99"].map(ms)
    if "latency_ms_p50_1t" in table:
        show["p50 ms, 1 thread"] = table["latency_ms_p50_1t"].map(ms)
        show["CoV %, 1 thread"] = table["latency_ms_p50_1t_cov_pct"].map(lambda v: f"{v:.1f}")
    show[f"speed-up vs {reference} [paired CI]"] = [
        fmt_speedup(r["speedup_x"], interval(r, "speedup_x"), r["speedup_x_verdict"]) for _, r in table.iterrows()
    ]
    if "speedup_x_1t" in table:
        show["speed-up, 1 thread"] = [
            fmt_speedup(r["speedup_x_1t"], interval(r, "speedup_x_1t"), r["speedup_x_1t_verdict"])
            for _, r in table.iterrows()
        ]
    show["img/s (batch)"] = table["throughput_img_s"].map(lambda v: f"{v:.0f}")
    show["size MB"] = table["size_mb"].map(lambda v: f"{v:.2f}")
    show["params M"] = (table["param_count"] / 1e6).map(lambda v: f"{v:.2f}")
    show["peak RSS MB"] = table["peak_rss_mb"].map(lambda v: f"{v:.0f}")
    show["$ / 1M img"] = table["cost_usd_per_1m_images"].map(lambda v: f"{v:.3f}")
    return show.to_markdown() + "\n"


def noise_line(table, threads):
    """How noisy the timing was, at the table's thread count and at 1 thread, from the CoV over rounds."""
    parts = []
    for col, n in (("latency_ms_p50_cov_pct", threads), ("latency_ms_p50_1t_cov_pct", 1)):
        if col not in table or (n == 1 and threads == 1 and parts):
            continue
        cov = table[col]
        parts.append(
            f"at {n} thread{'s' if n > 1 else ''} median {cov.median():.1f} %, max {cov.max():.1f} % "
            f"(`{cov.idxmax()}`), {int((cov > 5).sum())} of {len(cov)} variants above 5 %"
        )
    text = "- **Timing noise**: latency CoV over rounds " + "; ".join(parts) + "."
    if threads > 1 and "latency_ms_p50_1t_cov_pct" in table:
        if table["latency_ms_p50_cov_pct"].median() > 2 * table["latency_ms_p50_1t_cov_pct"].median():
            text += (
                f" The {threads}-thread figures scatter far more than the 1-thread ones: some rounds did not get "
                "the second core's full speed (a shared or virtual machine); the rounds plot shows which. "
                "Speed-ups are paired within rounds, which cancels only what the variants of a round shared."
            )
    return text + " Every figure holds for this machine fingerprint only; another machine re-measures all variants."


def steps_table(steps, guards):
    if not steps:  # compare narrowed so that no step has both of its variants
        return "No step of `report.steps` has both of its variants in this run's `compare`.\n"
    rows = []
    for name, s in steps.items():
        d = s["delta"]
        row = {"step": name, "from → to": f"{s['before']} → {s['after']}"}
        for g in guards:
            key = f"{g}_delta_pt"
            row[f"Δ {label(g)}, pt"] = fmt_delta(d[key], d.get(f"{key}_ci95"), d.get(f"{key}_verdict", "same"))
        row["speed-up"] = fmt_speedup(d["speedup_x"], d["speedup_x_ci95"], d["speedup_x_verdict"])
        if "speedup_x_1t" in d:
            row["speed-up, 1 thread"] = fmt_speedup(
                d["speedup_x_1t"], d["speedup_x_1t_ci95"], d["speedup_x_1t_verdict"]
            )
        row["size"] = f"{d['size_ratio']:.2f}x"
        rows.append(row)
    return pd.DataFrame(rows).set_index("step").to_markdown() + "\n"


def step_verdict(step, guards):
    """'worse' if any guard metric got distinguishably worse, 'better' if one improved and none got worse."""
    found = {step["delta"].get(f"{g}_delta_pt_verdict", "same") for g in guards}
    return "worse" if "worse" in found else "better" if "better" in found else "same"


def data_lines(prepared, info, params):
    splits = ("train", "val", "test")
    rows = [
        {"split": s, "images": prepared[f"{s}_images"], **{c: prepared.get(f"{s}_{c}", "") for c in info["classes"]}}
        for s in splits
    ]
    p = params["prepare"]
    head = (
        f"Dataset `{p['dataset']}` ({info['task']}: {', '.join(info['classes'])}), {prepared['n_images']} "
        f"images, inputs resized to {params['base']['image_size']}x{params['base']['image_size']}. Split "
        f"{1 - p['val_fraction'] - p['test_fraction']:.0%}/{p['val_fraction']:.0%}/{p['test_fraction']:.0%}, "
        f"stratified by class and attributes, exact duplicates kept together, seed {params['base']['seed']}; "
        f"every variant is scored on the same test images."
    )
    return [head, "", pd.DataFrame(rows).set_index("split").to_markdown()]


def machine_lines(fp, bench):
    settings = {v["runtime"]: v["settings"] for v in bench["variants"].values()}
    lines = [
        f"- **Fingerprint `{fp['id']}`**: {fp['cpu']} (`{fp['cpu_id']}`), {fp['usable_cpus']} usable CPUs, "
        f"{fp['memory_gib']} GiB RAM; flags {', '.join(fp['cpu_flags']) or 'none of note'}"
        f"{'; a virtual machine' if fp.get('hypervisor') else ''}.",
        f"- GPUs: {', '.join(fp['gpus']) if fp['gpus'] else 'none (CPU numbers only)'}. {fp['os']}, Python "
        f"{fp['python']}; " + ", ".join(f"{k} {v}" for k, v in fp["libraries"].items()) + ".",
        f"- Benchmark: {bench['rounds']} rounds; in each, every variant runs once in a fresh process, in a seeded "
        f"shuffled order, after warm-up; batch-1 latency from time-boxed call sets at {' and '.join(map(str, bench['threads']))} "
        f"thread(s), throughput at batch {bench['batch_size']}. Latencies in the tables are at "
        f"{bench['threads'][-1]} threads: median over rounds, 95 % t-interval over rounds, coefficient of variation "
        f"(CoV) over rounds. Speed-ups are paired: ratios within each round, then a t-interval of their logs.",
    ]
    if "onnxruntime" in settings:
        s = settings["onnxruntime"]
        lines.append(
            f"- ONNX Runtime {s['onnxruntime']}: intra-op threads as above, inter-op "
            f"{s['inter_op_num_threads']}, {s['execution_mode']} execution, graph optimisation "
            f"'{s['graph_optimization']}', spin-waiting {'on' if s['intra_op_allow_spinning'] else 'off'}."
        )
    if "torch" in settings:
        s = settings["torch"]
        lines.append(
            f"- PyTorch {s['torch']}: {s['mode']}, channels_last {s['channels_last']}, inter-op threads "
            f"{s['interop_threads']}."
        )
    return lines


def render(table, ctx):
    """The whole REPORT.md. `ctx`: reference, guards, names, steps, recommended, rule, fingerprint, bench,
    prepared, info, params, target_recall."""
    ref, guards = ctx["reference"], ctx["guards"]
    steps = ctx["steps"]
    verdicts = {name: step_verdict(s, guards) for name, s in steps.items()}
    first_hurt = next((n for n, v in verdicts.items() if v == "worse"), None)
    worse = [v for v in table.index if any(table.loc[v].get(f"{g}_delta_pt_verdict") == "worse" for g in guards)]
    rec = table.loc[ctx["recommended"]]
    prepared, info = ctx["prepared"], ctx["info"]
    n_def, n_good = prepared.get("test_defect"), prepared.get("test_good")

    out = [
        "# Defect screening: what each compression step bought and cost",
        "",
        "_Written by the `report` stage of `dvc repro` from the metrics of one run (committed with its "
        "`dvc.lock`). Do not edit: rerun the pipeline._",
        "",
        "## Data and split",
        "",
    ]
    out += data_lines(prepared, info, ctx["params"])
    if info["task"] == "binary":
        rule = (
            "the highest threshold that still catches"
            if ctx["params"].get("evaluate", {}).get("threshold_rule", "highest") == "highest"
            else "the highest threshold at which the one-sided 95 % lower bound of validation recall reaches"
        )
        out += [
            "",
            f"Operating point: for each variant, {rule} "
            f"{ctx['target_recall']:.0%} of the {prepared['val_defect']} validation defects; it is then applied "
            f"unchanged to test. Quality is compared at matched recall (FPR at {ctx['target_recall']:.0%} recall) "
            f"and threshold-free (AUROC), so a variant cannot look better by a luckier threshold.",
        ]
    out += ["", "## Machine", "", *machine_lines(ctx["fingerprint"], ctx["bench"])]
    out += [
        "",
        "## Quality on the test split",
        "",
        "Brackets: bootstrap 95 % intervals over test images; Δ columns are paired against "
        f"`{ref}` on the same resamples. {LEGEND}",
        "",
        quality_table(table, ctx["names"], guards, ref),
    ]
    out += ["## Cost", "", SPEED_LEGEND, "", cost_table(table, ref)]
    out += [
        "## What each step bought and cost",
        "",
        "Each step compares two variants directly (not via the "
        "reference), paired on the same test images and the same benchmark rounds.",
        "",
        steps_table(steps, guards),
    ]
    for name, s in steps.items():
        d = s["delta"]
        change = {
            "worse": "made the screen distinguishably worse",
            "better": "made the screen distinguishably better",
            "same": "changed the screen by no detectable amount",
        }[verdicts[name]]
        out.append(
            f"- **{name}** ({s['before']} → {s['after']}) {change}; it ran {d['speedup_x']:.2f}x as fast "
            f"({'distinguishable' if d['speedup_x_verdict'] != 'same' else 'not distinguishable'}) from a "
            f"{d['size_ratio']:.2f}x file."
        )
    out += ["", "## Where compression starts to hurt", ""]
    if first_hurt:
        s = steps[first_hurt]
        out.append(
            f"In the order of the steps above, the first that costs quality is **{first_hurt}** "
            f"({s['before']} → {s['after']})."
        )
    else:
        out.append("No step in this run made the screen distinguishably worse.")
    out.append(
        f"Variants distinguishably worse than `{ref}` on {' or '.join(map(label, guards))}: "
        f"{', '.join(f'`{v}`' for v in worse) if worse else 'none'}."
    )
    out += [
        "",
        "## Recommended variant",
        "",
        f"Rule: {ctx['rule']}.",
        "",
        f"**`{ctx['recommended']}`**: "
        + ", ".join(f"{label(g)} {with_ci(g, rec[g], interval(rec, g))}" for g in guards)
        + f"; {rec['latency_ms_p50']:.3g} ms at batch 1 ({fmt_speedup(rec['speedup_x'], interval(rec, 'speedup_x'))} "
        f"vs `{ref}`), {rec['size_mb']:.2f} MB, {rec['peak_rss_mb']:.0f} MB peak RSS.",
    ]
    out += [
        "",
        "## Caveats",
        "",
        noise_line(table, ctx["bench"]["threads"][-1]),
        f"- **Test set size**: {prepared['test_images']} images"
        + (
            f", {n_def} defects and {n_good} good parts: one defect is {100 / n_def:.1f} pt of recall, one false "
            f"alarm {100 / n_good:.2f} pt of FPR. Read the intervals before ranking close variants."
            if n_def
            else "."
        )
        + "",
        "- **Selection on test**: the recommendation reads the test split that also reports its quality; with "
        "many variants, confirm the pick on fresh data.",
        "- Reproduce: `dvc repro` (every number here), `dvc plots show` (ROC, PR, Pareto, benchmark rounds).",
    ]
    return "\n".join(out) + "\n"
