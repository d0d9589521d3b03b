import numpy as np
import onnx
import torch
from sklearn.datasets import load_sample_images

from stages.lib import models, quantization, runtime


def crops(n, size, seed):
    """Random crops of sklearn's two sample photos: real images, no download."""
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    out = []
    for _ in range(n):
        img = photos[rng.integers(len(photos))]
        s = int(rng.integers(size, min(img.shape[:2])))
        y, x = rng.integers(0, img.shape[0] - s), rng.integers(0, img.shape[1] - s)
        t = torch.from_numpy(img[y : y + s, x : x + s].copy()).permute(2, 0, 1)[None].float() / 255
        out.append(torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True))
    return torch.cat(out).clamp(0, 1).numpy()


def test_int8_onnx_agrees_with_fp32_on_most_predictions(tmp_path):
    size = 96
    model = models.pretrained("tf_efficientnet_lite0", "pypi", num_classes=1000).eval()
    fp32 = quantization.export_onnx(model, tmp_path / "fp32.onnx", size)
    int8 = quantization.quantize_int8(fp32, tmp_path / "int8.onnx", crops(32, size, seed=0), per_channel=True)
    x = crops(48, size, seed=1)

    torch_logits = model(torch.from_numpy(x)).detach().numpy()
    fp32_logits = runtime.load_runner(fp32, "onnxruntime", threads=2)(x)
    int8_logits = runtime.load_runner(int8, "onnxruntime", threads=2)(x)
    np.testing.assert_allclose(fp32_logits, torch_logits, atol=1e-3, rtol=1e-3)  # export is exact
    agreement = np.mean(int8_logits.argmax(1) == fp32_logits.argmax(1))
    assert agreement >= 0.75, agreement  # 1000-way top-1 on hard crops: INT8 may flip a few close calls
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format


def test_onnx_has_dynamic_batch(tmp_path):
    model = models.build("tf_efficientnet_lite0", 2).eval()
    path = quantization.export_onnx(model, tmp_path / "m.onnx", 64)
    runner = runtime.load_runner(path, "onnxruntime", threads=1)
    for n in (1, 5):
        assert runner(np.random.rand(n, 3, 64, 64).astype(np.float32)).shape == (n, 2)
    # the exporter folds BatchNorm into the convolutions: the runtime holds slightly fewer weights
    assert 0.95 * models.param_count(model) < runner.param_count <= models.param_count(model)
