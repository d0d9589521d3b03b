"""quantize: export a trained model to ONNX (FP32) and make its ONNX Runtime static INT8 version.

    python -m stages.quantize data/prepared artifacts/student_kd/model.pt artifacts/quantize/student_kd \
        metrics/quantize/student_kd.json
"""

import argparse
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stages.lib import data, models, params, quantization
from stages.lib.outputs import write_json

log = logging.getLogger("quantize")


def check(p):
    params.check_base(p["base"])
    q = p["quantize"]
    params.check_int("quantize.calibration_images", q["calibration_images"], 1)
    params.check_choice("quantize.per_channel", q["per_channel"], {True, False})
    params.check_choice("quantize.calibrate_method", q["calibrate_method"], set(quantization.CALIBRATION_METHODS))
    params.check_choice("quantize.activation_type", q["activation_type"], set(quantization.ACTIVATION_TYPES))
    return q


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("model", help="model.pt to export")
    parser.add_argument("out_dir", help="folder for fp32.onnx and int8.onnx")
    parser.add_argument("metrics")
    args = parser.parse_args()
    p = params.load()
    q = check(p)
    params.setup(p["base"])
    size = p["base"]["image_size"]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    model, card = models.load(args.model)
    fp32 = quantization.export_onnx(model, out / "fp32.onnx", size)
    calib, _ = data.load_split(args.data_dir, "train", size, limit=q["calibration_images"])
    calib = data.to_float(calib).numpy()
    int8 = quantization.quantize_int8(fp32, out / "int8.onnx", calib, q["per_channel"], q["calibrate_method"],
                                      q["activation_type"])  # fmt: skip

    # How far INT8 moved from FP32, on validation images (never on test).
    x_val, _ = data.load_split(args.data_dir, "val", size)
    x_val = data.to_float(x_val).numpy()
    logits32, logits8 = run_onnx(fp32, x_val), run_onnx(int8, x_val)
    agreement = float(np.mean(logits32.argmax(1) == logits8.argmax(1)))
    stats = {
        "fp32_size_mb": round(fp32.stat().st_size / 2**20, 3),
        "int8_size_mb": round(int8.stat().st_size / 2**20, 3),
        "val_top1_agreement": round(agreement, 4),
        "val_max_abs_logit_diff": round(float(np.abs(logits32 - logits8).max()), 4),
        "calibration_images": len(calib),
    }
    write_json(args.metrics, stats)
    log.info("%s: %s", card["arch"], stats)


if __name__ == "__main__":
    main()
