import numpy as np
import onnx
import pytest
import torch
from sklearn.datasets import load_sample_images

from stages.lib import models, params, runtime
from stages.lib.quantization import qat
from tests.test_quantization import VNNI


def two_photo_crops(n, size, seed):
    """A real two-class task without a download: random crops of sklearn's two sample photos, label = photo."""
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    x, y = [], []
    for i in range(n):
        label = i % 2
        img = photos[label]
        s = int(rng.integers(size, min(img.shape[:2]) // 2))
        r, c = rng.integers(0, img.shape[0] - s), rng.integers(0, img.shape[1] - s)
        t = torch.from_numpy(img[r : r + s, c : c + s].copy()).permute(2, 0, 1)[None].float()
        x.append(torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True))
        y.append(label)
    return torch.cat(x).clamp(0, 255).round().to(torch.uint8), torch.tensor(y)


def test_qat_fine_tunes_with_kd_and_its_onnx_export_agrees_in_onnxruntime(tmp_path):
    size = 64
    torch.manual_seed(0)  # the fresh 2-class heads
    train_xy, val_xy = two_photo_crops(32, size, seed=0), two_photo_crops(24, size, seed=1)
    teacher = models.pretrained("tf_efficientnet_lite0", "pypi", num_classes=2).eval()
    student = models.pretrained("tf_efficientnet_lite0", "pypi", num_classes=2)
    recipe = qat.check_recipe("quantize.recipes.int8_qat", {"kind": "qat", "epochs": 1, "lr": 1e-3, "batch_size": 16})
    base = {"device": "cpu", "channels_last": False, "seed": 0}
    x_val = val_xy[0].float().numpy() / 255

    model = qat.prepare(student, x_val[:2])
    model, best = qat.fine_tune(
        model, train_xy, val_xy, recipe, tmp_path / "live", base, teacher=teacher, kd={"temperature": 2.0, "alpha": 0.5}
    )
    assert best["best_epoch"] == 1
    path = qat.export_onnx(model, tmp_path / "qat.onnx", size)

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # a QDQ graph with the learned ranges
    assert path.stat().st_size < 0.4 * models.param_count(student) * 4  # int8 weights
    stats = qat.agreement(model, path, x_val)
    assert stats["qat_onnx_images"] == 24
    fq_logits = model(torch.from_numpy(x_val)).detach().numpy()
    ort_logits = runtime.load_runner(path, "onnxruntime", threads=1)(x_val)
    assert stats["qat_onnx_top1_agreement"] >= 0.9, (stats, fq_logits, ort_logits)
    assert stats["qat_onnx_max_logit_diff"] == pytest.approx(np.abs(fq_logits - ort_logits).max(), abs=1e-3)
    # ORT runs the learned 8-bit weights; without VNNI its u8s8 kernels saturate a little more (AVX2: 0.29)
    assert stats["qat_onnx_max_logit_diff"] < (0.25 if VNNI else 0.35) * np.abs(fq_logits).max(), stats

    # ORT's own QDQ graph of the QAT weights: re-calibrated ranges, so looser, but still the same model
    ort_path = qat.export(model, student, tmp_path / "qat_ort.onnx", size, x_val[:16], route="ort")
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(ort_path)).graph.node}
    assert qat.agreement(model, ort_path, x_val)["qat_onnx_top1_agreement"] >= 0.8
    fine_tuned, trained = qat.float_model(model, student).state_dict(), model.graph_module.state_dict()
    assert all(torch.equal(fine_tuned[k], trained[k]) for k in fine_tuned)
    assert not torch.equal(fine_tuned["net.conv_head.weight"], student.state_dict()["net.conv_head.weight"])


def test_ptq_verdict_hurt_and_recovered():
    labels = np.array([0] * 50 + [1] * 50)
    good = np.r_[np.linspace(0.0, 0.4, 50), np.linspace(0.6, 1.0, 50)]  # perfectly separated
    bad = np.r_[np.linspace(0.0, 0.7, 50), np.linspace(0.3, 1.0, 50)]  # overlapping
    probs = lambda s: np.stack([1 - s, s], 1)  # noqa: E731
    verdict = qat.ptq_verdict(labels, probs(good), probs(bad), probs(good), 0.95, max_drop_pt=1.0)
    assert verdict["ptq_hurt"] and not verdict["qat_hurt"] and verdict["qat_recovered"]
    assert verdict["val_auroc_ptq_delta_pt"] < -1 and verdict["val_auroc_qat_delta_pt"] == 0
    assert verdict["val_fpr_at_recall_95pct_ptq_delta_pt"] > 1
    same = qat.ptq_verdict(labels, probs(good), probs(good), probs(bad), 0.95, max_drop_pt=1.0)
    assert not same["ptq_hurt"] and same["qat_hurt"] and not same["qat_recovered"]


@pytest.mark.parametrize(
    ("recipe", "key"),
    [({"epochs": 0}, "epochs"), ({"lr": 0}, "lr"), ({"per_tensor": True}, "per_tensor"), ({"onnx": "tflite"}, "onnx")],
)
def test_bad_recipe_names_the_key(recipe, key):
    with pytest.raises(params.ParamError, match=rf"quantize\.recipes\.q\.{key}"):
        qat.check_recipe("quantize.recipes.q", {"kind": "qat", **recipe})
