"""REPORT.md's GPU section, written only when the benchmark ran GPU rounds (lib/runtime/gpu_rounds).

Per PyTorch variant: batch-1 latency host to host (image copied in, logits copied back, inside the time) in the
headline dtype with its interval over rounds and in every dtype, throughput over the batch sweep (CUDA graphs, and
compiled where `benchmark.gpu_compile` asked), compile time apart from run time, peak GPU memory; and the distance to
the GPU targets the project holds itself to.
"""

import pandas as pd

from stages.lib.report.formatting import ms

# The targets on an H100/H200-class GPU for the Lite0 student at 128 px (issue 26): host to host at batch 1, and
# the best throughput of the sweep.
TARGET_B1_MS = 1.0
TARGET_IMG_S = 100_000


def best_throughput(g):
    """(img/s, batch, compiled?) of the highest throughput any sweep reached."""
    found = [(v, int(b), False) for b, v in g.get("throughput_img_s", {}).items() if v]
    found += [(v, int(b), True) for b, v in g.get("throughput_img_s_compiled", {}).items() if v]
    return max(found, default=(None, None, False))


def rows(variants):
    out = []
    for name, b in variants.items():
        g = b.get("gpu")
        if not g or "skipped" in g:
            continue
        lo, hi = g.get("latency_ms_p50_b1_ci95", [None, None])
        b1 = ms(g["latency_ms_p50_b1"]) + (f" [{ms(lo)}, {ms(hi)}]" if lo is not None else "")
        top, batch, compiled = best_throughput(g)
        dtypes = ", ".join(f"{d} {ms(v)}" for d, v in g.get("latency_ms_p50_b1_by_dtype", {}).items())
        compile_s = g.get("compile_s", {})
        out.append(
            {
                "variant": name,
                f"b1 ms, {g['dtype']} [95% CI]": b1,
                "b1 ms by dtype": dtypes,
                "best img/s (batch)": f"{top:,.0f} ({batch}{', compiled' if compiled else ''})" if top else "—",
                "compile s": ", ".join(f"b{k} {v:g}" for k, v in compile_s.items()) or "—",
                "peak GPU MB": f"{g['peak_gpu_mem_mb']:.0f}" if g.get("peak_gpu_mem_mb") is not None else "—",
            }
        )
    return out


def section(bench):
    """Markdown lines, or [] when the benchmark ran no GPU rounds."""
    table = rows(bench["variants"])
    if not table:
        return []
    facts = bench.get("gpu", {}).get("device", {})
    out = [
        "## GPU",
        "",
        f"{facts.get('name', 'GPU')} (driver {facts.get('driver')}, CUDA {facts.get('cuda')}). Batch 1 host to host: "
        "a pinned host image is copied in, a captured CUDA graph replays the model, the logits are copied back and "
        "synchronised, all inside the time; median over rounds of fresh processes. Throughput: the batch sweep with "
        "the input on the device (CUDA graphs; compiled with torch.compile where `benchmark.gpu_compile` names the "
        "variant, compile seconds apart).",
        "",
        pd.DataFrame(table).set_index("variant").to_markdown(),
        "",
    ]
    skipped = {n: b["gpu"]["skipped"] for n, b in bench["variants"].items() if "skipped" in b.get("gpu", {})}
    if skipped:
        out += ["Not timed on the GPU: " + "; ".join(f"`{n}` ({why})" for n, why in skipped.items()) + ".", ""]
    named = [n for n in bench.get("gpu", {}).get("gpu_compile", []) if n in bench["variants"]]
    if named:
        out.append(targets_line(bench["variants"], named))
    return out


def targets_line(variants, names):
    """The variants the targets are about (`benchmark.gpu_compile`: the Lite0 to deploy) against them."""
    parts = []
    for name in names:
        g = variants[name].get("gpu", {})
        if "skipped" in g or "latency_ms_p50_b1" not in g:
            continue
        top = best_throughput(g)[0]
        b1 = g["latency_ms_p50_b1"]
        parts.append(
            f"`{name}` {ms(b1)} ms ({'met' if b1 <= TARGET_B1_MS else f'{b1 / TARGET_B1_MS:.2f}x the target'}), "
            + (
                f"{top:,.0f} img/s ({'met' if top >= TARGET_IMG_S else f'{top / TARGET_IMG_S:.0%} of it'})"
                if top
                else ""
            )
        )
    return (
        f"Targets (Lite0 at 128 px on an H100/H200): batch 1 host to host <= {TARGET_B1_MS:g} ms, >= "
        f"{TARGET_IMG_S:,} img/s. " + "; ".join(parts) + "."
    )
