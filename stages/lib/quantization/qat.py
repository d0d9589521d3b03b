"""Quantization-aware training (PT2E QAT, torchao) exported to an ONNX QDQ graph for ONNX Runtime.

The plan runs QAT "only if PTQ hurts too much"; `ptq_verdict` states both halves by the rule in
params (`quantize.max_drop_pt`): did PTQ hurt, and did QAT recover it.

How:
  1. `prepare`: torch.export the float model, then torchao's `prepare_qat_pt2e` with the X86
     quantizer's QAT config inserts fake quantization with straight-through gradients at the places
     the INT8 model will quantize: weights int8 symmetric per output channel, activations uint8
     asymmetric per tensor (moving-average min-max ranges) - ONNX Runtime's static QDQ scheme, and
     BatchNorm folding into the convolutions is simulated while training.
  2. `fine_tune`: training.fit (AdamW one-cycle, best validation epoch) with the KD loss, so the
     distilled student is fine-tuned by the same recipe that made it, now seeing its own rounding.
  3. `export_onnx`: convert_pt2e (the learned ranges become quantize/dequantize pairs with fixed
     scales) -> torch.onnx.export: the QuantizeLinear/DequantizeLinear graph ONNX Runtime fuses into
     int8 kernels. No re-calibration: the ranges are the ones QAT learned.
  4. `agreement`: the exported graph in ONNX Runtime against the fake-quant model it came from.

Two ONNX routes, both checked by `agreement`:
  `export_onnx`     - the converted PT2E graph itself: exactly the ranges QAT learned. But it follows the
                      X86 scheme, which fuses conv + residual add with no quantization in between, and
                      ONNX Runtime's QDQ fusion needs a QuantizeLinear right after a Conv: on Lite0
                      (ORT 1.31) the convolutions that feed a residual Add stayed float Conv on dequantized
                      weights (25 QLinearConv of 44 quantized convs), so it is not ORT's fastest INT8 graph.
  `export_onnx_ort` - the QAT-fine-tuned float weights quantized by ORT's own static QDQ tool
                      (quantization.quantize_int8, per-channel, min-max on `calib_x`): ORT's fully fused
                      graph. Weight codes match what QAT simulated (per-channel symmetric scales commute
                      with BatchNorm folding); activation ranges are re-calibrated, and ORT also quantizes
                      a few tensors QAT did not (conv outputs before residual adds).

Recipe (params.yaml, `quantize.recipes.<name>`), e.g.
    int8_qat: {kind: qat, epochs: 2, lr: 0.0001, batch_size: 32, weight_decay: 0.0, onnx: pt2e}
  epochs       - fine-tuning epochs (a fake-quant epoch costs ~2x a float one on CPU)
  lr           - peak AdamW LR, ~10x below training's: the weights only adjust to the rounding
  batch_size   - as train.batch_size
  weight_decay - 0: no pull on weights that are already trained
  onnx         - pt2e (export_onnx: the ranges QAT learned) | ort (export_onnx_ort: ORT's fused graph); `export` picks
KD temperature / alpha come from the `distill` section. Runtime: "onnxruntime"; size: the .onnx file.
"""

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.lib import metrics, params, quantization, runtime, training
from stages.lib.quantization import pt2e

log = logging.getLogger(__name__)

KIND = "qat"
RUNTIME = "onnxruntime"
DEFAULTS = {"epochs": 2, "lr": 1e-4, "batch_size": 32, "weight_decay": 0.0, "onnx": "pt2e"}
ONNX_ROUTES = ("pt2e", "ort")  # see the module docstring: exact learned ranges vs ORT's fully fused graph


def check_recipe(key, recipe):
    """Fail fast on a bad QAT recipe (`key` is its params path); pt2e.check_installed checks torchao."""
    recipe = params.with_defaults(key, recipe, DEFAULTS, "qat")
    params.check_int(f"{key}.epochs", recipe["epochs"], 1)
    params.check_int(f"{key}.batch_size", recipe["batch_size"], 1)
    params.check_range(f"{key}.lr", recipe["lr"], 0, 1, lo_inclusive=False)
    params.check_range(f"{key}.weight_decay", recipe["weight_decay"], 0, 1)
    params.check_choice(f"{key}.onnx", recipe["onnx"], set(ONNX_ROUTES))
    return recipe


class QatModel(nn.Module):
    """The fake-quant graph behind the nn.Module interface training.fit uses.

    An exported graph cannot switch train/eval by `.train()`; torchao swaps its BatchNorm and
    dropout ops instead (move_exported_model_to_train / _eval), which `train` here calls. Eval also
    freezes the activation ranges (observers off): without that, every validation or agreement
    forward pass moved the ranges, so the model changed while it was being measured.
    """

    def __init__(self, graph_module):
        super().__init__()
        self.graph_module = graph_module

    def train(self, mode=True):
        from torchao.quantization import pt2e as ao

        (ao.move_exported_model_to_train if mode else ao.move_exported_model_to_eval)(self.graph_module)
        self.graph_module.apply(ao.enable_observer if mode else ao.disable_observer)
        self.training = mode
        return self

    def forward(self, x):
        return self.graph_module(x)


def prepare(model, example_x):
    """A QatModel (train mode) around a float Classifier; `example_x`: a few float32 NCHW images."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    example = torch.as_tensor(example_x[:2], dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=1024)
    model = copy.deepcopy(model).train()  # the exported graph shares its parameters: keep the input model as it was
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    return QatModel(prepare_qat_pt2e(exported.module(), pt2e.quantizer(is_qat=True))).train()


def fine_tune(qat_model, train_xy, val_xy, recipe, live_dir, base, teacher=None, kd=None):
    """training.fit on the fake-quant model (KD when a teacher is given): (model in eval mode, best epoch info)."""
    train_recipe = {k: recipe[k] for k in ("epochs", "batch_size", "lr", "weight_decay")}
    base = {**base, "channels_last": False}  # the fake-quant graph is trained in the layout it was exported in
    return training.fit(qat_model, train_xy, val_xy, train_recipe, live_dir, base, teacher, kd)


def convert(qat_model):
    """The real INT8 graph (quantize/dequantize with the learned ranges) of a fine-tuned QatModel."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    qat_model.eval()
    return allow_exported_model_train_eval(convert_pt2e(qat_model.graph_module))  # export_onnx calls .eval()


def export_onnx(qat_model, path, image_size):
    """ONNX QDQ graph of the fine-tuned model: input 'image' (N,3,S,S) float32 in [0, 1], output 'logits'."""
    converted = convert(qat_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantization.export_onnx(converted, path, image_size)
    return Path(path)


def float_model(qat_model, like):
    """A float Classifier (a copy of `like`, same architecture) holding the QAT-fine-tuned weights."""
    state = qat_model.graph_module.state_dict()
    model = copy.deepcopy(like).eval()
    model.load_state_dict({name: state[name] for name in model.state_dict()})
    return model


def export_onnx_ort(qat_model, like, path, image_size, calib_x):
    """ONNX Runtime's static QDQ graph (per-channel, min-max on `calib_x`) of the QAT-fine-tuned weights."""
    path = Path(path)
    fp32 = path.with_name(path.stem + "_fp32.onnx")
    quantization.export_onnx(float_model(qat_model, like), fp32, image_size)
    quantization.quantize_int8(fp32, path, calib_x, per_channel=True, calibrate_method="minmax")
    fp32.unlink()
    return path


def export(qat_model, like, path, image_size, calib_x, route="pt2e"):
    """The recipe's `onnx` route: export_onnx (pt2e) or export_onnx_ort (ort)."""
    if route == "ort":
        return export_onnx_ort(qat_model, like, path, image_size, calib_x)
    return export_onnx(qat_model, path, image_size)


def agreement(qat_model, onnx_path, x_float, threads=1, batch_size=32):
    """How the ONNX Runtime graph matches the fake-quant model on `x_float` (top-1 agreement, max logit diff)."""
    qat_model.eval()
    runner = runtime.load_runner(onnx_path, "onnxruntime", threads)
    fq, ort = [], []
    with torch.no_grad():
        for i in range(0, len(x_float), batch_size):
            xb = np.ascontiguousarray(x_float[i : i + batch_size], dtype=np.float32)
            fq.append(qat_model(torch.from_numpy(xb)).numpy())
            ort.append(runner(xb))
    fq, ort = np.concatenate(fq), np.concatenate(ort)
    prob_diff = np.abs(runtime.softmax(fq) - runtime.softmax(ort)).max()
    return {
        "qat_onnx_top1_agreement": round(float(np.mean(fq.argmax(1) == ort.argmax(1))), 4),
        "qat_onnx_max_logit_diff": round(float(np.abs(fq - ort).max()), 4),
        "qat_onnx_max_prob_diff": round(float(prob_diff), 4),
        "qat_onnx_images": len(fq),
    }


def quality(probs, labels, target_recall):
    """The two numbers the verdict compares, in [0, 1]: binary AUROC and FPR at the target recall;
    multi-class accuracy and macro recall (higher is better for all but FPR)."""
    labels = np.asarray(labels)
    if probs.shape[1] == 2:
        fpr_name = metrics.pct_name("fpr_at_recall", target_recall)
        return {
            "auroc": training.auroc(labels, probs),
            fpr_name: metrics.fpr_at_recall(probs[:, 1], labels, target_recall),
        }
    pred = probs.argmax(1)
    recalls = [np.mean(pred[labels == c] == c) for c in np.unique(labels)]
    return {"accuracy": float(np.mean(pred == labels)), "macro_recall": float(np.mean(recalls))}


def ptq_verdict(labels, fp32_probs, ptq_probs, qat_probs, target_recall, max_drop_pt):
    """Did PTQ hurt, and did QAT recover it? Validation probabilities (N, C) of the three models.

    A model "hurt" when, against FP32 on the same images, a quality number is worse by more than
    `max_drop_pt` points (AUROC / accuracy / macro recall lower, FPR at the target recall higher).
    QAT recovered it when PTQ hurt and QAT does not.
    """
    ref = quality(fp32_probs, labels, target_recall)
    out, hurt = {}, {}
    for tag, probs in (("ptq", ptq_probs), ("qat", qat_probs)):
        got = quality(probs, labels, target_recall)
        hurt[tag] = False
        for name, value in got.items():
            delta = round((value - ref[name]) * 100, 2)
            hurt[tag] |= bool(delta > max_drop_pt if name.startswith("fpr") else delta < -max_drop_pt)
            out[f"val_{name}_{tag}_delta_pt"] = delta
    out |= {
        "ptq_hurt": hurt["ptq"],
        "qat_hurt": hurt["qat"],
        "qat_recovered": hurt["ptq"] and not hurt["qat"],
        "max_drop_pt": max_drop_pt,
    }
    log.info(
        "PTQ %s; QAT %s",
        "hurt" if hurt["ptq"] else "did not hurt",
        "recovered it" if out["qat_recovered"] else ("hurt too" if hurt["qat"] else "within the rule"),
    )
    return out
