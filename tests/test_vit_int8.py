"""ViT-safe INT8 on ViT-Tiny (../shared/weights): only MatMul/Gemm/Conv in INT8, agreeing with FP32 at least as
well as quantizing every op ORT can, after a short fine-tune on a tiny two-class task (bright vs dark crops)."""

import numpy as np
import pytest
import timm
import torch

from stages.lib import models, quantization, runtime
from stages.lib.models import families
from stages.lib.quantization import recipes
from tests.conftest import SHARED
from tests.test_quantization import crops

WEIGHTS = SHARED / "weights" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
SIZE = 64  # 4x4 patches of 16 px: timm resamples the position embeddings
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"ViT-Tiny weights not found at {WEIGHTS}")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        num_classes=2,
        img_size=SIZE,
        pretrained_cfg_overlay={"file": str(WEIGHTS)},
    )
    cfg = net.pretrained_cfg
    model = models.Classifier(net, list(cfg["mean"]), list(cfg["std"]))
    x = crops(48, SIZE, seed=3)
    brightness = x.mean(axis=(1, 2, 3))
    y = (brightness > np.median(brightness)).astype(int)  # a real, learnable two-class task on real photos
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for _ in range(3):  # a very short fine-tune: the head and the blocks move off their ImageNet state
        for i in range(0, len(x), 16):
            loss = torch.nn.functional.cross_entropy(
                model(torch.from_numpy(x[i : i + 16])), torch.from_numpy(y[i : i + 16])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("vit")
    return quantization.export_onnx(model, folder / "fp32.onnx", SIZE), folder


def test_vit_safe_int8_keeps_softmax_layernorm_gelu_add_float_and_agrees_at_least_as_well(vit):
    fp32, folder = vit
    assert families.is_transformer("vit_tiny_patch16_224") and not families.is_transformer("tf_efficientnet_lite0")
    calib, x = crops(16, SIZE, seed=0), crops(48, SIZE, seed=5)
    safe_ops = recipes.op_types(
        recipes.resolve({"op_types": "auto"}, "vit_tiny_patch16_224", {"cpu_vnni": True})["op_types"]
    )
    safe = quantization.quantize_static_qdq(fp32, folder / "safe.onnx", calib, op_types=safe_ops)
    naive = quantization.quantize_static_qdq(fp32, folder / "naive.onnx", calib, op_types=None)

    safe_int8 = set(quantization.int8_nodes(safe).values())
    naive_int8 = set(quantization.int8_nodes(naive).values())
    assert "MatMul" in safe_int8 and safe_int8 <= set(recipes.VIT_SAFE_OPS)
    assert not safe_int8 & {"Softmax", "LayerNormalization", "Add", "Mul", "Erf", "Gelu"}
    assert naive_int8 - set(recipes.VIT_SAFE_OPS)  # the naive recipe also quantizes other ops (Add, Softmax ...)

    ref = runtime.load_runner(fp32, "onnxruntime", 2)(x)
    err = {}
    for name, path in (("safe", safe), ("naive", naive)):
        out = runtime.load_runner(path, "onnxruntime", 2)(x)
        err[name] = (float(np.mean(out.argmax(1) == ref.argmax(1))), float(np.abs(out - ref).mean()))
    assert err["safe"][0] >= err["naive"][0], err  # top-1 agreement with FP32
    assert err["safe"][1] <= err["naive"][1] * 1.05, err  # mean logit error
