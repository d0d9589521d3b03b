"""REPORT.md's first section: the answer on one screen.

The deployed variant against the FP32 reference (quality deltas with paired intervals, speed-up, size,
memory), what each compression step of `report.steps` bought and cost, the risk, and the command that
reproduces it. Every number comes from the comparison table and the metrics of the run; the rest of the
report is the appendix that backs it.
"""

from stages.lib.report.formatting import fmt_delta, fmt_speedup, interval, label, ms, num, with_ci


def plural(n, word):
    return f"{n} {word}{'' if int(n) == 1 else 's'}"


def quality_rows(table, chosen, reference, names):
    rows = []
    for name in names:
        r, c = table.loc[reference], table.loc[chosen]
        key = f"{name}_delta_pt"
        delta = fmt_delta(c[key], interval(c, key), c.get(f"{key}_verdict", "same"), " pt")
        rows.append(
            f"| {label(name)} | {with_ci(name, r[name], interval(r, name))} | "
            f"{with_ci(name, c[name], interval(c, name))} | {delta} |"
        )
    return rows


def cost_rows(table, chosen, reference, threads, main_threads):
    r, c = table.loc[reference], table.loc[chosen]
    sfx = "" if threads == main_threads else "_1t"
    speed = fmt_speedup(c[f"speedup_x{sfx}"], interval(c, f"speedup_x{sfx}"), c[f"speedup_x{sfx}_verdict"])
    return [
        f"| batch-1 latency, p50 ms at {plural(threads, 'thread')} | {ms(r[f'latency_ms_p50{sfx}'])} | "
        f"{ms(c[f'latency_ms_p50{sfx}'])} | {speed} faster |",
        f"| throughput, img/s (batch) | {r['throughput_img_s']:.0f} | {c['throughput_img_s']:.0f} | "
        f"{c['throughput_img_s'] / r['throughput_img_s']:.2f}x |",
        f"| model file, MB | {r['size_mb']:.2f} | {c['size_mb']:.2f} | {c['size_ratio']:.2f}x |",
        f"| peak memory of the process, MB | {r['peak_rss_mb']:.0f} | {c['peak_rss_mb']:.0f} | "
        f"{c['peak_rss_mb'] / r['peak_rss_mb']:.2f}x |",
    ]


def step_line(name, step, guards, sfx):
    d = step["delta"]
    parts = [f"{fmt_speedup(d[f'speedup_x{sfx}'], d[f'speedup_x{sfx}_ci95'], d[f'speedup_x{sfx}_verdict'])}"]
    for g in guards:
        key = f"{g}_delta_pt"
        if key in d:
            parts.append(f"{label(g)} {fmt_delta(d[key], d.get(f'{key}_ci95'), d.get(f'{key}_verdict', 'same'))}")
    return f"- **{name}**: " + "; ".join(parts) + "."


def render(table, ctx, selected):
    """Markdown lines of the summary. `ctx` as writeup.render's; `selected`: metrics/select.json or None."""
    ref, guards, steps = ctx["reference"], ctx["guards"], ctx["steps"]
    bench, prepared, fp = ctx["bench"], ctx["prepared"], ctx["fingerprint"]
    main_threads = bench["threads"][-1]
    deployed = selected["selected"] if selected else None
    timing = (selected or {}).get("timing") or {}
    threads = timing.get("threads", main_threads)
    if deployed:
        chosen = deployed
        head = (
            f"**Deployed: `{chosen}`** (`artifacts/deploy/`, run by `python -m stages.screen`), picked by `select` "
            "from validation metrics and the benchmark only: the fastest that meets every constraint, where speeds "
            "within the benchmark's noise tie and a tie goes to fewer validation false alarms."
        )
    else:
        chosen = ctx["recommended"]
        head = (
            f"**Nothing deployed** (no variant met every `select.*` constraint; see the banner above). The report's "
            f"recommendation, decided on test metrics and shown for reference: **`{chosen}`**."
        )
    out = [
        "## Summary",
        "",
        head,
        "",
        f"| on the shared test split, {prepared['test_images']} images | `{ref}` (reference) | `{chosen}` | "
        "change (paired 95 % CI) |",
        "|---|---|---|---|",
        *quality_rows(table, chosen, ref, guards),
        *cost_rows(table, chosen, ref, threads, main_threads),
        "",
        "What each step of `report.steps` bought (speed-up) and cost (quality deltas, points); ▲ / ▼: distinguishable:",
        "",
    ]
    sfx = "" if threads == main_threads else "_1t"
    out += [step_line(name, s, guards, sfx) for name, s in steps.items() if f"speedup_x{sfx}" in s["delta"]]
    n_def, n_good = prepared.get("test_defect"), prepared.get("test_good")
    split = f"{n_good} good and {n_def} defective" if n_def is not None else f"{prepared['test_images']}"
    split = split[0].upper() + split[1:]
    recall = table.loc[chosen].get("recall")
    caught = f" (one missed defect: {num('recall', 1 / n_def)} pt of recall)" if n_def and recall else ""
    covs = ", ".join(f"{plural(n, 'thread')} {c:g} %" for n, c in timing.get("median_cov_pct", {}).items())
    out += [
        "",
        f"**Risk.** {split} test images{caught}: a difference without ▲ / ▼ is not shown to exist. Speeds are "
        f"from one machine (`{fp['id']}`, {fp['cpu']}, {fp['usable_cpus']} CPUs)"
        + (f", judged at {plural(threads, 'thread')}, the steadier (median CoV {covs})" if covs else "")
        + ". Threshold and pick were decided on validation; test was read once, here.",
        "",
        "**Reproduce**: `dvc repro` on this commit (`dvc.lock` pins data, code and params).",
        "",
    ]
    return out
