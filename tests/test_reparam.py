"""MobileOne: a fused checkpoint unfuses into the multi-branch training form and fuses back to itself;
training happens on branches, saving, export and INT8 on the fused form."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from stages.lib import models, pruning, quantization, runtime
from stages.lib.models import reparam
from tests.conftest import ROOT, SHARED
from tests.test_families import PRUNE

ARCH = "mobileone_s0"
WEIGHTS = SHARED / "weights" / "mobileone_s0.reparam_in1k.safetensors"
SIZE = 64


def fused_checkpoint(tmp_path):
    """The shared re-parameterised ImageNet checkpoint, or (without ../shared) a fused random model saved the same way."""
    if WEIGHTS.is_file():
        return str(WEIGHTS)
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = reparam.fuse(models.build(ARCH, 1000)).net
    path = tmp_path / "fused.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return str(path)


def unfused(tmp_path, calib):
    fused = models.pretrained(ARCH, fused_checkpoint(tmp_path), num_classes=2, image_size=SIZE).eval()
    assert reparam.is_fused(fused.net)
    multi = reparam.unfuse(fused, models.build(ARCH, 2, image_size=SIZE), calib)
    return fused, multi


def test_unfused_model_computes_what_the_fused_checkpoint_does_and_fuses_back_to_it(tmp_path):
    torch.manual_seed(0)
    calib, other = torch.rand(8, 3, SIZE, SIZE), torch.rand(4, 3, SIZE, SIZE)
    fused, multi = unfused(tmp_path, calib)
    assert not reparam.is_fused(multi.net) and len(multi.net.stages[1][0].conv_kxk) == 4  # training form: branches
    with torch.no_grad():
        ref = fused(other)
        torch.testing.assert_close(multi.eval()(other), ref, rtol=1e-4, atol=1e-4)  # eval: any input
        train_mode = copy.deepcopy(multi).train()  # (a training-mode call updates the running statistics)
        torch.testing.assert_close(train_mode(calib), fused(calib), rtol=1e-4, atol=1e-4)  # train: batch stats
    refused = reparam.fuse(copy.deepcopy(multi)).net.state_dict()
    for key, value in fused.net.state_dict().items():
        atol = 1e-5
        if key.endswith("reparam_conv.bias"):  # (mean + b) - mean: float32 rounding at the scale of the activation mean
            bn = multi.net.get_submodule(key.removesuffix(".reparam_conv.bias")).conv_kxk[0].bn
            atol = 1e-6 * max(1.0, bn.running_mean.abs().max().item())
        torch.testing.assert_close(refused[key], value, rtol=1e-4, atol=atol)


def test_training_moves_the_silent_branches_and_the_fused_form_matches_the_trained_one(tmp_path):
    torch.manual_seed(0)
    fused, multi = unfused(tmp_path, torch.rand(8, 3, SIZE, SIZE))
    scale_bn = multi.net.stages[1][0].conv_scale.bn
    assert torch.count_nonzero(scale_bn.weight) == 0
    opt = torch.optim.AdamW(multi.parameters(), lr=1e-3)
    x, y = torch.rand(8, 3, SIZE, SIZE), torch.tensor([0, 1] * 4)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(multi.train()(x), y).backward()
        opt.step()
    assert torch.count_nonzero(scale_bn.weight) > 0  # the 1x1 branch has started to learn
    deployed = reparam.fuse(copy.deepcopy(multi))  # the deployed form of the trained model
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), multi.eval()(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(deployed(x), fused(x), atol=1e-3)  # the fused weights did change


def test_fused_model_saves_loads_exports_quantizes_and_prunes(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(4, 3, SIZE, SIZE)
    model = reparam.fuse(models.build(ARCH, 2, image_size=SIZE))
    card = models.make_card(ARCH, "timm", SIZE, model, ["good", "defect"])
    assert card["reparameterized"] is True and card["mean"] == pytest.approx([0.485, 0.456, 0.406])
    models.save(tmp_path / "m", model, card)
    loaded, _ = models.load(tmp_path / "m" / "model.pt")
    assert reparam.is_fused(loaded.net)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

    fp32 = quantization.export_onnx(loaded, tmp_path / "fp32.onnx", SIZE)
    ops = {n.op_type for n in __import__("onnx").load(fp32).graph.node}
    assert "BatchNormalization" not in ops  # fused: one conv (with bias) per block
    int8 = quantization.quantize_static_qdq(fp32, tmp_path / "int8.onnx", x.numpy())
    out = runtime.load_runner(int8, "onnxruntime", 2)(x.numpy())
    with torch.no_grad():
        assert np.corrcoef(out.ravel(), loaded(x).numpy().ravel())[0, 1] > 0.9

    cfg = PRUNE
    before = models.param_count(loaded)
    pruned, stats = pruning.prune_structured(copy.deepcopy(loaded), SIZE, cfg)
    assert stats["macs_after_m"] < stats["macs_before_m"]
    assert models.param_count(pruned) < before and pruned(x).shape == (4, 2)


def test_other_models_are_left_as_they_are():
    model = models.build("tf_efficientnet_lite0", 2)
    assert not reparam.blocks(model.net) and reparam.fuse(model) is model
    assert "reparameterized" not in models.make_card("tf_efficientnet_lite0", "pypi", SIZE, model, ["a", "b"])


def test_the_multi_branch_form_trains_at_128_px_with_channels_last_asked_for(tmp_path):
    """base.channels_last (on by default) must not crash MobileOne's training form: torch 2.15's CPU
    channels_last backward of its stem's 1x1 stride-2 branch corrupts the heap from ~96 px (a segfault in the
    first backward), so `training.fit` trains that form in the default layout. In a subprocess: a crash fails
    this test, not the test run."""
    script = f"""
import logging
import torch
from stages.lib import models, training
model = models.build({ARCH!r}, 2, image_size=128)
x, y = torch.randint(0, 256, (8, 3, 128, 128), dtype=torch.uint8), torch.arange(8) % 2
logging.basicConfig(level=logging.INFO)
recipe = {{"epochs": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0}}
training.fit(model, (x, y), (x, y), recipe, "live", {{"seed": 0, "device": "cpu", "channels_last": True}})
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "channels_last off for the multi-branch form" in proc.stderr
