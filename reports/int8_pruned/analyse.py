"""Where static INT8 loses a pruned student: the quantization error layer by layer, local and accumulated.

    python reports/int8_pruned/analyse.py reports/int8_pruned \
        unpruned=/work/exp-g20:student_kd uniform_0.21=/work/exp-u21:student_pruned global_0.2=/work/exp-g20:student_pruned

Each NAME=CHECKOUT:MODEL names a checkout of a finished run (its `dvc repro` outputs in the workspace) and a model
of it; read are its FP32 ONNX model (artifacts/variants/MODEL_ort_fp32), its static INT8 QDQ model as the pipeline
made it (MODEL_int8_static_pc, evaluated and benchmarked as it is) and the checkout's validation images.

ONNX Runtime's `qdq_loss_debug` runs both graphs on 64 validation images with every intermediate tensor as an
output. For the output of each Conv / Gemm three SQNRs (dB, higher is cleaner):
- local: the INT8 graph's tensor through its own QuantizeLinear -> DequantizeLinear (against the value clipped to
  the representable range): the noise this one rounding adds;
- accumulated: the INT8 graph's dequantized tensor vs the FP32 graph's: the noise of every layer up to here, as the
  network carried (amplified or damped) it;
- alone: the logits when only this layer (with its fused activation) is INT8 and every other layer float, with the
  pipeline's calibrated ranges (sensitivity.output_sensitivity: what `fp32_layers: k` now ranks by).
Local SQNRs that match between models while the accumulated ones part mean one network amplifies noise more.
Writes layers.csv, accumulated_sqnr.png and summary.json (logit SQNR and val AUROC of the whole INT8 model) to OUT.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import onnx
import pandas as pd
from onnx import numpy_helper
from onnxruntime.quantization import qdq_loss_debug as dbg
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from stages.lib import data, quantization, runtime, sensitivity

IMAGES = 64  # validation images whose every intermediate tensor is kept (memory grows with their number)
RANK_IMAGES = 16  # validation images the rankings use: quantize.sensitivity_images, as the pipeline does
FALLBACK_K = (1, 2, 3)  # layers kept in float


def activations(path, x, scratch):
    """{tensor name: array over the images} of every intermediate tensor of the ONNX graph at `path`."""
    augmented = scratch / f"{Path(path).parent.name}_{Path(path).stem}_all.onnx"
    dbg.modify_model_output_intermediate_tensors(str(path), str(augmented))
    return dbg.collect_activations(str(augmented), quantization.ImageReader(x))


def run_logits(path, x, batch_size=64):
    runner = runtime.load_runner(path, "onnxruntime", threads=2)
    return np.concatenate([runner(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).astype(np.float64)


def conv_layers(graph):
    """(quantized output tensor, node name, op, output channels, groups) of every Conv / Gemm in graph order. A Conv
    followed by its activation (Clip = ReLU6) runs fused in INT8: the quantizer drops the Clip (the output's range
    does the clipping) and the Conv writes the Clip's tensor (sensitivity.fused_activation)."""
    inits = {t.name: numpy_helper.to_array(t).shape for t in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    rows = []
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            fused = sensitivity.fused_activation(graph, node.name)
            out = by_name[fused[0]].output[0] if fused else node.output[0]
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            rows.append((out, node.name, node.op_type, inits[node.input[1]][0], groups))
    return rows


def quantized_ranges(graph):
    """{tensor: (scale, zero point)} of every activation the QDQ graph quantizes (QuantizeLinear of a non-weight)."""
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {n.input[0]: (inits[n.input[1]], inits[n.input[2]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}  # fmt: skip


def sqnr_db(reference, noisy):
    return round(sensitivity.sqnr_db([reference], [noisy]), 2)


def analyse(name, checkout, model, scratch):
    root = Path(checkout)
    fp32 = root / f"artifacts/variants/{model}_ort_fp32/model.onnx"
    qdq = root / f"artifacts/variants/{model}_int8_static_pc/model.onnx"
    prep = quantization.preprocess(fp32, scratch / f"{name}_prep.onnx")  # the graph the quantizer read: same names
    size = onnx.load(str(fp32)).graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    x_all, y_all = data.load_split(root / "data/prepared", "val", size)
    x_all, y_all = data.to_float(x_all).numpy(), np.asarray(y_all)
    x = np.ascontiguousarray(x_all[:IMAGES])
    matched = dbg.create_activation_matching(activations(qdq, x, scratch), activations(prep, x, scratch))
    ranges = quantized_ranges(onnx.load(str(qdq)).graph)
    cache = Path(shutil.copy(qdq.with_name("calibration.json"), scratch / f"{name}_calibration.json"))

    def requantize(out, **kw):  # the pipeline's int8_static_pc settings on this CPU, its calibrated ranges
        return quantization.quantize_static_qdq(prep, scratch / out, cache=cache, preprocessed=True, **kw)

    layers = conv_layers(onnx.load(str(prep)).graph)
    x_rank = x_all[:RANK_IMAGES]
    by_input = sensitivity.layer_sensitivity(prep, qdq, x_rank)  # the ranking fp32_layers used before
    by_output = sensitivity.output_sensitivity(prep, [node for _, node, *_ in layers], x_rank, 2,
                                               lambda names, out: requantize(out, only=names))  # fmt: skip
    alone = {r["node"]: r["sqnr_db"] for r in by_output}
    rows = []
    for i, (tensor, node, op, width, groups) in enumerate(layers):
        local = accumulated = None
        if tensor in matched and tensor in ranges:
            m, (scale, zero_point) = matched[tensor], ranges[tensor]
            local = round(sensitivity.fake_quant_sqnr(np.concatenate(m["pre_qdq"]), scale, zero_point), 2)
            accumulated = sqnr_db(np.concatenate(m["float"]), np.concatenate(m["post_qdq"]))
        rows.append({"model": name, "layer": i, "node": node, "op": op, "out_channels": width,
                     "depthwise": groups > 1, "local_sqnr_db": local, "accumulated_sqnr_db": accumulated,
                     "alone_logit_sqnr_db": alone[node]})  # fmt: skip
    # the whole validation split, as the pipeline runs the graphs: FP32, INT8, and INT8 with the k worst layers of
    # either ranking kept in float
    layer_of = {node: i for i, (_, node, *_) in enumerate(layers)}
    logits = {"fp32": run_logits(fp32, x_all), "int8": run_logits(qdq, x_all)}
    fallback = []
    for ranking, ranked in (("input noise", by_input), ("logits", by_output)):
        for k in FALLBACK_K:
            keep = sensitivity.most_sensitive(ranked, k)
            mixed = run_logits(requantize(f"{name}_k{k}.onnx", exclude=keep), x_all)
            fallback.append({"ranking": ranking, "k": k, "layers": [layer_of[r["node"]] for r in ranked[:k]],
                             "logit_sqnr_db": sqnr_db(logits["fp32"], mixed), "val_auroc": auroc(y_all, mixed)})  # fmt: skip
    branch, commit = (git(root, "rev-parse", *a, "HEAD") for a in (["--abbrev-ref"], ["--short"]))
    summary = {"model": name, "checkout": str(checkout), "branch": branch, "commit": commit, "variant": model,
               "val_images": len(x_all),
               "logit_sqnr_db": sqnr_db(logits["fp32"], logits["int8"]),
               "top1_agreement": round(float(np.mean(logits["fp32"].argmax(1) == logits["int8"].argmax(1))), 4),
               "val_auroc_fp32": auroc(y_all, logits["fp32"]), "val_auroc_int8": auroc(y_all, logits["int8"]),
               "fallback": fallback}  # fmt: skip
    return pd.DataFrame(rows), summary


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def auroc(labels, logits):
    return round(float(roc_auc_score(labels, runtime.softmax(logits)[:, 1])), 4)


def plot(table, path):
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    ref = table[table["model"] == table["model"].iloc[0]].set_index("layer")["out_channels"]
    for i, (name, rows) in enumerate(table.groupby("model", sort=False)):
        rows, color = rows.set_index("layer"), f"C{i}"
        top.plot(rows.index, rows["accumulated_sqnr_db"], marker=".", color=color, label=f"{name}: accumulated")
        top.plot(rows.index, rows["local_sqnr_db"], ls=":", color=color, alpha=0.7, label=f"{name}: local")
        middle.plot(rows.index, rows["alone_logit_sqnr_db"], marker=".", color=color, label=name)
        bottom.plot(rows.index, rows["out_channels"] / ref, marker=".", color=color, label=name)
    top.set_ylabel("SQNR at the layer's output, dB")
    top.set_title("Static INT8 (ONNX Runtime, per-channel, minmax), every Conv / Gemm of the student, input to output")
    middle.set_ylabel("logit SQNR, only this\nlayer INT8, dB")
    bottom.set_ylabel(f"output channels /\n{table['model'].iloc[0]}'s")
    bottom.set_xlabel("layer (0 = stem conv, 1 = its depthwise conv)")
    for ax in (top, middle, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def readme(table, summaries, command):
    """README.md: the command, then every number from the tables this run wrote."""
    first = table[table["layer"] <= 1].pivot(index="model", columns="layer", values="alone_logit_sqnr_db")
    last = table.groupby("model", sort=False)["accumulated_sqnr_db"].apply(lambda v: v.dropna().iloc[-1])
    lines = ["# Where static INT8 loses a pruned student", "",
             "Generated by `reports/int8_pruned/analyse.py` (its docstring defines every column):", "",
             "```", command, "```", "",
             "## The INT8 models as the pipeline made them (int8_static_pc, validation split)", "",
             "| model | val AUROC FP32 | val AUROC INT8 | logit SQNR, dB | top-1 agreement | accumulated SQNR at the "
             "last conv, dB | median local SQNR, dB | stem conv alone, dB | its depthwise conv alone, dB |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in summaries:
        m = s["model"]
        local = table[table["model"] == m]["local_sqnr_db"].median()
        lines.append(f"| {m} | {s['val_auroc_fp32']:.4f} | {s['val_auroc_int8']:.4f} | {s['logit_sqnr_db']:.1f} | "
                     f"{s['top1_agreement']:.3f} | {last[m]:.1f} | {local:.1f} | {first.loc[m, 0]:.1f} | "
                     f"{first.loc[m, 1]:.1f} |")  # fmt: skip
    lines += ["", "## Layers kept in float, chosen by either ranking (same calibrated ranges; validation split)", "",
              "`input noise`: the ranking `fp32_layers` used before (sensitivity.layer_sensitivity); `logits`: the one "
              "it uses now (sensitivity.output_sensitivity). Layers are numbered as in layers.csv (0 = stem conv, "
              "1 = its depthwise conv).", "",
              "| model | ranking | k | layers kept | logit SQNR, dB | val AUROC |", "|---|---|---|---|---|---|"]  # fmt: skip
    for s in summaries:
        lines.append(f"| {s['model']} | none | 0 | — | {s['logit_sqnr_db']:.1f} | {s['val_auroc_int8']:.4f} |")
        for f in s["fallback"]:
            lines.append(f"| {s['model']} | {f['ranking']} | {f['k']} | {', '.join(map(str, f['layers']))} | "
                         f"{f['logit_sqnr_db']:.1f} | {f['val_auroc']:.4f} |")  # fmt: skip
    runs = ", ".join(f"{x['model']} = `{x['variant']}` of branch `{x['branch']}` at `{x['commit']}`" for x in summaries)
    lines[7:7] = ["", f"Models: {runs} (reports/prune_recovery has each run's lock, metrics and report)."]
    names = [x["model"] for x in summaries]
    layer0 = table[table["layer"] == 0].set_index("model").loc[names]
    by = {(s["model"], f["ranking"], f["k"]): f for s in summaries for f in s["fallback"]}
    worst = min(summaries, key=lambda x: x["logit_sqnr_db"])
    w, fix = worst["model"], by[(worst["model"], "logits", 2)]
    lines += ["", "## What it shows", "",
              f"- Every layer rounds about as finely in every model (median local SQNR {local_range(table)} dB), yet the "
              f"noise reaching the last conv differs ({', '.join(f'{m} {v:.1f}' for m, v in last.items())} dB): the "
              "pruned networks, the globally pruned one most, amplify the same rounding noise more on its way out.",
              f"- The layer whose INT8 alone costs the logits most is the stem conv in every model ("
              f"{', '.join(f'{m} {first.loc[m, 0]:.1f}' for m in names)} dB), then its depthwise conv. The stem's "
              f"own output rounding is fine (local {', '.join(f'{m} {v:.0f}' for m, v in layer0['local_sqnr_db'].items())} "
              "dB); its error comes in with its inputs, the image and its weights (accumulated at its output "
              f"{', '.join(f'{m} {v:.1f}' for m, v in layer0['accumulated_sqnr_db'].items())} dB), and every later layer "
              f"carries it. The input-noise ranking the fallback used before picks neither among its first "
              f"{max(FALLBACK_K)}: it ranks by the noise a layer reads, not by what that noise does to the output, so "
              "keeping its picks in float changed nothing.",
              f"- Keeping the stem conv and its depthwise conv in float brings {w} from val AUROC "
              f"{worst['val_auroc_int8']:.4f} (INT8) to {fix['val_auroc']:.4f} (FP32 {worst['val_auroc_fp32']:.4f}; "
              f"logit SQNR {worst['logit_sqnr_db']:.1f} -> {fix['logit_sqnr_db']:.1f} dB). On the test split, in the "
              "pipeline, with the fallback ranking by logits (`int8_static_fallback3`): section exp-g20-fb of "
              "[reports/prune_recovery](../prune_recovery/README.md).",
              "", "![accumulated SQNR](accumulated_sqnr.png)", ""]  # fmt: skip
    return "\n".join(lines)


def local_range(table):
    med = table.groupby("model", sort=False)["local_sqnr_db"].median()
    return f"{med.min():.1f}-{med.max():.1f}"


def main():
    if sys.argv[1:2] == ["--readme"]:  # README.md again from the files a run wrote (no models needed)
        out = Path(sys.argv[2])
        summaries = json.loads((out / "summary.json").read_text())
        (out / "README.md").write_text(readme(pd.read_csv(out / "layers.csv"), summaries, summaries[0]["command"]))
        return
    out, specs = Path(sys.argv[1]), sys.argv[2:]
    if not specs or any("=" not in s or ":" not in s for s in specs):
        raise SystemExit("usage: analyse.py OUT NAME=CHECKOUT:MODEL ... | analyse.py --readme OUT (see the docstring)")
    out.mkdir(parents=True, exist_ok=True)
    command = "python reports/int8_pruned/analyse.py " + " ".join(sys.argv[1:])
    tables, summaries = [], []
    with tempfile.TemporaryDirectory(prefix="int8_pruned.") as tmp:
        for spec in specs:
            name, rest = spec.split("=", 1)
            checkout, model = rest.rsplit(":", 1)
            table, summary = analyse(name, checkout, model, Path(tmp))
            tables.append(table)
            summaries.append({**summary, "command": command})
            print(json.dumps(summary))
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "layers.csv", index=False)
    plot(table, out / "accumulated_sqnr.png")
    (out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (out / "README.md").write_text(readme(table, summaries, command))


if __name__ == "__main__":
    main()
