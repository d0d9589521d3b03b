"""quantize: make one variant, a trained model under one recipe of `quantize.recipes`.

    python -m stages.quantize student_kd_int8_static_pc int8_static_pc data/prepared \
        artifacts/student_kd/model.pt artifacts/teacher/model.pt artifacts/variants/student_kd_int8_static_pc \
        metrics/quantize/student_kd_int8_static_pc.json

Writes <out_dir>/<model file> (model.pt or model.onnx) and <out_dir>/variant.json (runtime, file,
size, resolved recipe: evaluate and benchmark read it); static INT8 also writes
<out_dir>/calibration.json (the activation ranges ORT calibrated). The metrics say how far the
variant moved from the FP32 model on validation images (never test): top-1 agreement, logit
difference, paired deltas in AUROC and FPR at the target recall, and whether that drop is larger
than `quantize.max_drop_pt` ("PTQ hurt"); static INT8 adds its most sensitive layers. Kind `ort_auto`
(accuracy-controlled INT8) also records the loop that chose its float layers: `auto_steps` (the paired deltas
against the ONNX FP32 graph at each step), `fp32_layers_kept`, `auto_fit`. Kind `openvino` makes no new file: it
copies the ONNX file of its `source` recipe's variant (the sibling folder <model>_<source>, or `--source`) and records
`runtime_options` (OpenVINO's precision) and how far OpenVINO's scores are from ONNX Runtime's on the same file and
validation images (`val_*_vs_ort`, `ort_agreement_ok` against lib/runtime/openvino TOLERANCE).
"""

import argparse
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from stages.lib import data, errors, metrics, models, params, quantization, runtime
from stages.lib.outputs import write_json
from stages.lib.quantization import clustering, pt2e, qat, recipes, sensitivity
from stages.lib.runtime import openvino as ov_runtime

log = logging.getLogger("quantize")


def check(p, recipe_name, runs=True):
    """The quantize section and the recipe; `runs`: also what running it needs installed (check_params checks
    every recipe of the menu, and this only for the compared ones)."""
    params.check_base(p["base"])
    q = p["quantize"]
    params.check_range("quantize.max_drop_pt", q["max_drop_pt"], 0, 100)
    params.check_int("quantize.sensitivity_images", q["sensitivity_images"], 1)
    recipe = recipes.find(q["recipes"], recipe_name)
    if runs and recipe["kind"] in ("pt2e", "qat"):
        pt2e.check_installed(f"quantize.recipes.{recipe_name}", recipe["kind"])
    return q, recipe


def make(kind, setting, model_pt, model, card, out, calib, tmp, ctx):
    """Write the variant's model file into `out`; returns (path, extra metrics).

    `ctx`: what only QAT needs: data_dir, teacher (model.pt for the KD loss), params; kind openvino: source (the
    source variant's folder)."""
    if kind == "openvino":  # the source variant's ONNX file as it is, run in OpenVINO: nothing is re-exported
        src, _, info = runtime.read_variant(ctx["source"])
        return Path(shutil.copy(src, out / src.name)), {"openvino": {"source_variant": info["variant"]}}
    if kind == "torch":
        return Path(shutil.copy(model_pt, out / "model.pt")), {}
    if kind == "cluster":  # k-means weights; still a dense float model, run in PyTorch
        clustered, info = clustering.apply_recipe(model, setting, seed=0)
        models.save(out, clustered, {**card, **info})
        return out / "model.pt", {"clustering": info}
    if kind == "pt2e":  # PyTorch-native INT8 (torchao PT2E, X86 Inductor quantizer), run compiled
        return pt2e.save(pt2e.quantize(model, calib), out / "model.pt2"), {}
    if kind == "qat":  # fake-quant fine-tune with the KD loss, exported to ONNX QDQ (lib/qat.py)
        size, p = calib.shape[-1], ctx["params"]
        train_xy, val_xy = (data.load_split(ctx["data_dir"], s, size) for s in ("train", "val"))
        teacher, _ = models.load(ctx["teacher"])
        qm, info = qat.fine_tune(
            qat.prepare(model, calib[:2]),
            train_xy,
            val_xy,
            setting,
            tmp / "live",
            p["base"],
            teacher=teacher,
            kd=p["distill"],
        )
        path = qat.export(qm, model, out / "model.onnx", size, calib, route=setting["onnx"])
        x_val = data.to_float(val_xy[0]).numpy()
        info = {f"qat_fake_quant_{k}": v for k, v in info.items()}  # the fake-quant model's own best epoch
        return path, {"qat": {**info, **qat.agreement(qm, path, x_val, threads=p["base"]["threads"])}}
    size = calib.shape[-1]
    fp32 = quantization.export_onnx(model, tmp / "fp32.onnx", size)
    target = out / "model.onnx"
    if kind == "onnx_fp32":
        return Path(shutil.copy(fp32, target)), {}
    if kind == "onnx_fp16":
        return quantization.to_fp16(fp32, target), {}
    ops = recipes.op_types(setting["op_types"])
    if kind == "ort_dynamic":
        path = quantization.quantize_dynamic_int8(
            fp32, target, setting["per_channel"], setting["weight_type"], setting["reduce_range"], ops
        )
        return path, {}
    prep = quantization.preprocess(fp32, tmp / "prep.onnx")
    opts = recipes.static_options(setting) | {"preprocessed": True}
    cache = out / "calibration.json"
    path = quantization.quantize_static_qdq(prep, target, calib, cache=cache, op_types=ops, **opts)
    return path, {"prep": prep, "opts": opts, "cache": cache, "ops": ops}


def openvino_source(given, out, model_name, setting):
    """Kind openvino: the folder of the variant whose file it runs (given, or the sibling <model>_<source>), checked
    to be that recipe's variant; None for other kinds."""
    if setting["kind"] != "openvino":
        return None
    folder = Path(given) if given else out.parent / f"{model_name}_{setting['source']}"
    expected = f"{model_name}_{setting['source']}"
    if folder.name != expected:
        raise params.ParamError(f"--source {folder}: expected the folder of variant {expected!r} (recipe source)")
    if not (folder / "variant.json").is_file():
        raise errors.InputError(f"{folder}/variant.json not found; make variant {expected!r} (quantize) first")
    return folder


def publish(partial, out, path):
    """Move every file made in `partial` into `out` (os.replace: each appears whole); returns the model's new path."""
    for f in partial.iterdir():
        os.replace(f, out / f.name)
    return out / path.name


def fallback(static, target, x_sens, setting, threads, x_val=None, judge=None):
    """Per-layer sensitivity of the static INT8 graph; with `fp32_layers: k` > 0, re-quantize keeping in float the k
    layers whose INT8 alone costs the logits most (lib/sensitivity.py says why not the cheaper input-noise ranking);
    kind `ort_auto` keeps as many as the validation drop needs (sensitivity.keep_until_fit: `judge` scores a graph's
    logits on the images `x_val` against the float graph's, `val_deltas` with the labels and rule bound)."""
    rows = sensitivity.layer_sensitivity(static["prep"], target, x_sens)
    out = {f"sensitive_{i + 1}": r for i, r in enumerate(rows[:5])}
    prep, kw = static["prep"], {"cache": static["cache"], "op_types": static["ops"], **static["opts"]}

    def rank():
        only = lambda names, path: quantization.quantize_static_qdq(prep, path, only=names, **kw)  # noqa: E731
        return sensitivity.output_sensitivity(prep, [r["node"] for r in rows], x_sens, threads, quantize_only=only)

    def requantize(keep, path):
        return quantization.quantize_static_qdq(prep, path, exclude=keep, **kw)

    if setting["kind"] == "ort_auto":
        cap = setting["max_fp32_layers"]
        found = sensitivity.keep_until_fit(target, prep, x_val, judge, rank, requantize, cap, threads)
        return {"layers_quantized": len(rows), **found, **out}
    keep = []
    if setting["fp32_layers"]:
        ranked = rank()
        keep = sensitivity.most_sensitive(ranked, setting["fp32_layers"])
        requantize(keep, target)
        out |= {f"output_sensitive_{i + 1}": r for i, r in enumerate(ranked[:5])}
    return {"layers_quantized": len(rows), "fp32_layers_kept": keep, **out}


def val_deltas(ref_logits, logits, y, task, target_recall, max_drop_pt, draws, seed):
    """Paired validation deltas (variant - FP32) in points, the worst drop among them (positive: worse), and
    whether it is larger than max_drop_pt."""
    p_ref, p_new = runtime.softmax(ref_logits), runtime.softmax(logits)
    if task == "binary":
        names = ["auroc", metrics.pct_name("fpr_at_recall", target_recall)]
        a, b = {"pred": p_new.argmax(1), "score": p_new[:, 1]}, {"pred": p_ref.argmax(1), "score": p_ref[:, 1]}
    else:
        names = ["accuracy", "macro_recall"]
        a, b = {"pred": p_new.argmax(1), "score": p_new.max(1)}, {"pred": p_ref.argmax(1), "score": p_ref.max(1)}
    k = p_ref.shape[1]
    ci = metrics.paired_delta_ci(a, b, y, names, draws, seed, k)
    whole = np.arange(len(y))[None]  # the validation set itself: one "resample" that is the identity
    va_all, vb_all = (metrics.resampled(y, d["pred"], d["score"], whole, names, k) for d in (a, b))
    out, drops = {}, []
    for name in names:
        va, vb = float(va_all[name][0]), float(vb_all[name][0])
        delta = round((va - vb) * 100, 2)
        drops.append(delta if name.startswith("fpr") else -delta)  # more false alarms, or less of the rest
        out |= {
            f"val_{name}_fp32": round(vb, 4),
            f"val_{name}": round(va, 4),
            f"val_{name}_delta_pt": delta,
            f"val_{name}_delta_pt_ci95": [round(v * 100, 2) for v in ci[name]],
        }
    worst = max(drops) + 0.0  # never -0.0
    return out | {"val_worst_drop_pt": worst}, bool(worst > max_drop_pt)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", help="<model>_<recipe>: the variant's name")
    parser.add_argument("recipe", help="a key of quantize.recipes")
    parser.add_argument("data_dir")
    parser.add_argument("model", help="model.pt of the trained model")
    parser.add_argument("teacher", help="the teacher's model.pt: the KD loss of QAT recipes")
    parser.add_argument("out_dir", help="folder for the model file, variant.json (and calibration.json)")
    parser.add_argument("metrics")
    parser.add_argument(
        "--source",
        help="kind openvino: the variant folder whose ONNX file it runs (default: "
        "<out_dir>/../<model>_<recipe source>)",
    )
    args = parser.parse_args()
    p = params.load("base", "distill", "evaluate", "quantize")
    q, recipe = check(p, args.recipe)
    if recipe["kind"] == "openvino":  # bf16 where the CPU has none: refused before any work, with the reason
        reason = ov_runtime.unavailable_reason(recipe["precision"], ov_runtime.capabilities())
        if reason:
            raise ov_runtime.PrecisionUnavailable(f"quantize.recipes.{args.recipe}.precision: {reason}")
    params.setup(p["base"])
    size, seed = p["base"]["image_size"], p["base"]["seed"]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    model, card = models.load(args.model)
    cpu = recipes.cpu_int8_features()
    setting = recipes.resolve(recipe, card["arch"], cpu)
    kind = setting["kind"]
    n_calib = setting.get("calibration_images", 2)  # QAT traces its graph on two images
    calib = data.to_float(data.load_split(args.data_dir, "train", size, limit=n_calib)[0]).numpy()
    x_val, y_val = data.load_split(args.data_dir, "val", size)
    x_val, y_val = data.to_float(x_val).numpy(), y_val.numpy()
    ev = p["evaluate"]
    judge = functools.partial(  # (FP32 logits, variant logits) on x_val -> (paired deltas, PTQ hurt?)
        val_deltas,
        y=y_val,
        task=data.read_info(args.data_dir)["task"],
        target_recall=ev["target_recall"],
        max_drop_pt=q["max_drop_pt"],
        draws=ev["bootstrap"],
        seed=seed,
    )
    # The variant's files are made in a hidden folder inside `out` and moved in when complete (publish).
    with (
        tempfile.TemporaryDirectory(prefix="quantize.") as tmp,
        tempfile.TemporaryDirectory(dir=out, prefix=".partial.") as partial,
    ):
        source = openvino_source(args.source, out, Path(args.model).parent.name, setting)
        ctx = {"data_dir": args.data_dir, "teacher": args.teacher, "params": p, "source": source}
        path, static = make(kind, setting, args.model, model, card, Path(partial), calib, Path(tmp), ctx)
        stats = {
            "variant": args.variant,
            "recipe": args.recipe,
            "kind": kind,
            **cpu,
            "settings": {k: v for k, v in setting.items() if k != "kind"},
        }
        for extra in ("clustering", "qat", "openvino"):
            stats |= static.pop(extra, {})
        if static:
            x_sens = x_val[: q["sensitivity_images"]]
            stats |= fallback(static, path, x_sens, setting, p["base"]["threads"], x_val, judge)
            stats["calibration_images"] = len(calib)
        path = publish(Path(partial), out, path)
    info = {
        "variant": args.variant,
        "model": Path(args.model).parent.name,
        "recipe": args.recipe,
        "kind": kind,
        "arch": card["arch"],
        "runtime": recipes.RUNTIME[kind],
        "file": path.name,
        "size_mb": round(path.stat().st_size / 2**20, 3),
        "settings": stats["settings"],
    }
    if kind == "openvino":  # how the runner is made: lib/runtime load_runner(options=...)
        info |= {"runtime_options": {"precision": setting["precision"]}, "source_variant": stats["source_variant"]}
    write_json(out / "variant.json", info)
    stats["size_mb"] = info["size_mb"]
    if path.suffix == ".onnx":
        stats["op_counts"] = quantization.op_counts(path)
        stats["weight_scales"] = quantization.weight_scales(path)  # what the graph holds, whatever was asked

    if kind != "torch":  # how far the variant moved from the FP32 model, on validation images
        ref = runtime.TorchRunner(args.model, p["base"]["threads"])
        runner = runtime.load_runner(path, info["runtime"], p["base"]["threads"], options=info.get("runtime_options"))
        ref_logits = np.concatenate([ref(x_val[i : i + 64]) for i in range(0, len(x_val), 64)])
        logits = np.concatenate([runner(x_val[i : i + 64]) for i in range(0, len(x_val), 64)])
        stats["val_top1_agreement"] = round(float(np.mean(ref_logits.argmax(1) == logits.argmax(1))), 4)
        stats["val_max_abs_logit_diff"] = round(float(np.abs(ref_logits - logits).max()), 4)
        deltas, hurt = judge(ref_logits, logits)
        stats |= deltas | {"ptq_hurt": hurt, "max_drop_pt": q["max_drop_pt"]}
        if kind == "openvino":  # the same file in ONNX Runtime: the two runtimes must agree (lib/runtime/openvino)
            ort = runtime.load_runner(path, "onnxruntime", p["base"]["threads"])
            stats |= ov_runtime.agreement(runtime.predict(ort, x_val), runtime.predict(runner, x_val), path)
    write_json(args.metrics, stats)
    log.info("%s (%s): %s", args.variant, card["arch"], {k: v for k, v in stats.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    errors.run(main, "quantize")
