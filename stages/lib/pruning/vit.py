"""ViTs (timm `Attention`): whole attention heads are removed (head_dim kept, so the attention kernels keep
their shape) and the MLP hidden width is pruned; the residual width is kept."""

import torch
import torch_pruning as tp

from stages.lib.pruning.pruners import IMPORTANCE, attention_layers


def build_vit_pruner(model, image_size, cfg, head_ratio=None):
    """A MetaPruner for a timm ViT: `head_ratio` (default cfg ratio) of the attention heads (whole heads,
    head_dim kept, never every head) and cfg ratio of the MLP hidden units; the residual width is kept.

    Torch-Pruning removes heads only while it prunes channels: the MLP ratio must be > 0."""
    ratio = cfg["ratio"]
    head_ratio = ratio if head_ratio is None else head_ratio
    if not 0 < ratio < 1:
        raise ValueError(f"ViT MLP ratio={ratio!r}; expected a number in (0, 1)")
    net, attns = model.net, attention_layers(model)
    # Torch-Pruning removes ceil(ratio * heads) heads; pass a ratio that removes floor(head_ratio * heads),
    # never all of them.
    heads = attns[0].num_heads
    removed = min(int(head_ratio * heads + 1e-9), heads - 1)
    # The residual stream (embedding width) is kept: every layer that writes it is ignored, which
    # leaves only the heads (qkv out, proj in) and the MLP hidden width (fc1 out, fc2 in) prunable.
    writers = [net.patch_embed.proj, net.get_classifier()]
    writers += [m.proj for m in attns] + [b.mlp.fc2 for b in net.blocks]
    glob = cfg["scope"] == "global"
    return tp.pruner.MetaPruner(
        model,
        torch.rand(1, 3, image_size, image_size),
        importance=IMPORTANCE[cfg["importance"]](),
        pruning_ratio=ratio,
        global_pruning=glob,
        isomorphic=glob,
        max_pruning_ratio=cfg["max_ratio"] if glob else 1.0,
        iterative_steps=cfg["iterative_steps"],
        num_heads={m.qkv: m.num_heads for m in attns},
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=(removed - 0.5) / heads if removed else 0.0,
        ignored_layers=writers,
        round_to=cfg["round_to"],
    )


def sync_heads(pruner, attns):
    """timm's attention forward reshapes with num_heads and attn_dim: set them to what is left."""
    for m in attns:
        m.num_heads = pruner.num_heads[m.qkv]
        m.attn_dim = m.num_heads * m.head_dim
