"""Torch-Pruning's pieces for CNNs: the importance criteria, MAC counting and the pruner (uniform, global,
or one ratio per stage as greedy allocates). Stem and classifier are never pruned; channels stay multiples
of `round_to`."""

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

# Importance criteria (params `prune.importance`) -> Torch-Pruning scorer.
IMPORTANCE = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),  # group L1 norm of the coupled weights
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),  # group L2 norm (Torch-Pruning's default)
    "bn_scale": lambda: tp.importance.BNScaleImportance(),  # |gamma| of the BatchNorm (network slimming)
    "taylor": lambda: tp.importance.GroupTaylorImportance(),  # |w * dL/dw|: needs gradients (calibration batch)
    "lamp": lambda: tp.importance.LAMPImportance(p=2),  # layer-adaptive magnitude score
    "random": lambda: tp.importance.RandomImportance(),  # control: shows whether the criterion matters
}


def protected_layers(model):
    """The stem (first conv) and the classifier, whose input width is kept too (so the layer that
    feeds it, timm's `conv_head`, keeps its outputs): never pruned."""
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    feeds_head = getattr(model.net, "conv_head", None)
    return [stem, model.net.get_classifier(), *([feeds_head] if isinstance(feeds_head, nn.Conv2d) else [])]


def count(model, image_size):
    """(MACs, params) for one image, Torch-Pruning's counter."""
    example = torch.rand(1, 3, image_size, image_size)
    was_training = model.training
    macs, n_params = tp.utils.count_ops_and_params(model.eval(), example)
    model.train(was_training)
    return macs, n_params


def build_pruner(model, image_size, cfg):
    """A MetaPruner for `cfg` (a `prune` section): importance, uniform/global ratio, iterative steps.
    With `stage_ratios` (greedy's allocation, one per `stages(model)`), each stage's layers lose their own.

    Hybrids (MobileViT: convs around transformer blocks) lose conv channels and MLP width; their attention
    projections are kept whole."""
    glob = cfg["scope"] == "global"
    attns = attention_layers(model)
    per_stage = cfg.get("stage_ratios")
    extra = {}
    if per_stage is not None:
        extra["pruning_ratio_dict"] = {st: r for st, r in zip(stages(model), per_stage, strict=True) if r > 0}
    return tp.pruner.MetaPruner(
        model,
        torch.rand(1, 3, image_size, image_size),
        importance=IMPORTANCE[cfg["importance"]](),
        pruning_ratio=0.0 if per_stage is not None else cfg["ratio"],
        global_pruning=glob,
        isomorphic=glob,  # global ranking only among groups of the same structure (Fang et al. 2024)
        max_pruning_ratio=cfg["max_ratio"] if glob else 1.0,
        iterative_steps=cfg["iterative_steps"],
        ignored_layers=protected_layers(model) + [layer for m in attns for layer in (m.qkv, m.proj)],
        num_heads={m.qkv: m.num_heads for m in attns},
        round_to=cfg["round_to"],
        **extra,
    )


def taylor_gradients(model, calib, batch_size=16):
    """Accumulate dL/dw (cross-entropy on calibration images) for the Taylor criterion."""
    x, y = calib
    model.eval()  # BN statistics stay as trained
    model.zero_grad(set_to_none=True)
    for i in range(0, len(x), batch_size):
        F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size], reduction="sum").backward()


def is_vit(model):
    """A timm ViT (patch embedding + attention blocks); hybrids (MobileViT) are pruned like CNNs."""
    return hasattr(model.net, "patch_embed") and bool(attention_layers(model))


def attention_layers(model):
    """timm ViT attention blocks (empty for CNNs): their heads are pruned whole."""
    from timm.models.vision_transformer import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


def stages(model):
    """A timm CNN's stages, greedy's units: `blocks` (EfficientNet, MobileNet), `stages` (ConvNeXt, MobileOne,
    RegNet) or ResNet's layer1..4. Coupled channels (a stage's residual stream) stay inside one stage."""
    net = model.net
    for name in ("blocks", "stages"):
        seq = getattr(net, name, None)
        if isinstance(seq, nn.Sequential) and len(seq) > 1:
            return list(seq)
    layers = [getattr(net, f"layer{i}") for i in range(1, 5) if hasattr(net, f"layer{i}")]
    if not layers:
        raise ValueError(f"{type(net).__name__} has no stages (blocks, stages or layer1..4) to allocate over")
    return layers
