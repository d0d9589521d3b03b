"""ViT head and MLP-width pruning with Torch-Pruning on timm's ViT-Tiny (real weights from ../shared)."""

import pytest
import torch

from stages.lib import models, pruning
from stages.lib.quantization import export_onnx
from tests.conftest import SHARED

WEIGHTS = SHARED / "weights" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
SIZE = 64  # a tiny profile: timm resamples the position embedding to 4x4 patches


@pytest.fixture
def vit():
    if not WEIGHTS.exists():
        pytest.skip(f"ViT-Tiny weights not found at {WEIGHTS} (../shared is optional)")
    import timm
    from safetensors.torch import load_file

    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000, img_size=SIZE)
    state = load_file(WEIGHTS)
    state["pos_embed"] = timm.layers.resample_abs_pos_embed(state["pos_embed"], (SIZE // 16, SIZE // 16))
    net.load_state_dict(state)
    net.reset_classifier(2)
    cfg = net.pretrained_cfg
    return models.Classifier(net, list(cfg["mean"]), list(cfg["std"])).eval()


def prune_vit(model, head_ratio, mlp_ratio):
    """One shot, no fine-tune: `head_ratio` of the heads and `mlp_ratio` of the MLP hidden units, in place
    (the prune stage gives both the one prune.ratio). Returns (model, stats)."""
    cfg = {"importance": "l2", "scope": "uniform", "ratio": mlp_ratio, "iterative_steps": 1, "round_to": 8}
    before = pruning.count(model, SIZE)
    pruner = pruning.build_vit_pruner(model.eval(), SIZE, cfg, head_ratio)
    pruner.step()
    pruning.sync_heads(pruner, pruning.attention_layers(model))
    return model.eval(), pruning.stats(*before, *pruning.count(model, SIZE))


def test_head_pruning_drops_whole_heads_keeps_head_dim_and_exports(vit, tmp_path):
    attn = vit.net.blocks[0].attn
    heads, head_dim, embed = attn.num_heads, attn.head_dim, vit.net.embed_dim
    hidden = vit.net.blocks[0].mlp.fc1.out_features
    before = models.param_count(vit)
    model, stats = prune_vit(vit, head_ratio=0.34, mlp_ratio=0.5)
    for block in model.net.blocks:
        a = block.attn
        assert a.num_heads == heads - 1 and a.head_dim == head_dim  # one whole head of three gone
        assert a.qkv.out_features == 3 * a.num_heads * head_dim and a.proj.in_features == a.num_heads * head_dim
        assert block.mlp.fc1.out_features == hidden // 2
    assert model.net.embed_dim == embed and model.net.get_classifier().weight.shape == (2, embed)
    assert models.param_count(model) < 0.7 * before and stats["macs_after_m"] < stats["macs_before_m"]
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.isfinite(model(x)).all() and model(x).shape == (2, 2)

    import onnxruntime as ort

    path = export_onnx(model, tmp_path / "vit.onnx", SIZE)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), rtol=1e-3, atol=1e-3)


def test_head_ratio_never_removes_every_head(vit):
    model, _ = prune_vit(vit, head_ratio=0.99, mlp_ratio=0.25)
    assert all(b.attn.num_heads == 1 for b in model.net.blocks)
    assert model(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 2)
