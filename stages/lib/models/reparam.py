"""Structural re-parameterisation (MobileOne): train the multi-branch form, deploy the fused one.

A MobileOne block trains as k parallel conv+BN branches, a 1x1 conv+BN branch and a BN skip; after
training they add up to one conv with a bias (timm's `reparameterize_model`). The training stages
train the multi-branch form and save the fused one (card `reparameterized: true`), so export, INT8,
pruning and the benchmark all see the model that would be deployed.

A fused checkpoint (MobileOne-S0 `reparam_in1k`) is loaded into the fused form and then unfused for
training (`unfuse`): each block's fused kernel goes into its first branch, whose BatchNorm is set on a
batch of training images so that the multi-branch model computes exactly what the fused one does on
that batch; the other branches start silent (BN scale and shift 0) and grow during the fine-tune.
"""

import torch
from timm.utils.model import reparameterize_model


def blocks(net):
    """(name, module) of every block that fuses itself (MobileOne, RepVGG, FastViT ...)."""
    return [(n, m) for n, m in net.named_modules() if hasattr(m, "reparameterize") or hasattr(m, "switch_to_deploy")]


def is_fused(net):
    return any(getattr(m, "reparam_conv", None) is not None for _, m in blocks(net))


def is_multi_branch(module):
    """Re-parameterisable blocks in their training form (not fused)."""
    return bool(blocks(module)) and not is_fused(module)


def is_fused_state(state):
    return any(".reparam_conv." in k for k in state)


def fuse(model):
    """The Classifier with its multi-branch blocks fused in place (eval mode); a no-op for other models."""
    if blocks(model.net) and not is_fused(model.net):
        model.eval()
        reparameterize_model(model.net, inplace=True)
    return model


@torch.no_grad()
def unfuse(fused, multi, calib):
    """Load the fused Classifier `fused` into `multi` (same architecture, multi-branch) and return it.

    `calib`: float images (N, 3, S, S) in [0, 1] on which each first-branch BatchNorm is set to pass its
    conv output through unchanged (scale = batch std, shift = batch mean + fused bias), so the training-mode
    model starts where the fused one is; its running statistics are those of the same batch.
    """
    src = fused.state_dict()
    dst = multi.state_dict()
    todo = {k for k in src if ".reparam_conv." not in k}
    for k in todo:
        if k not in dst or dst[k].shape != src[k].shape:
            raise ValueError(
                f"fused checkpoint tensor {k} {tuple(src[k].shape)} has no match in the multi-branch model"
            )
        dst[k].copy_(src[k])
    hooks = []
    for name, block in blocks(multi.net):
        if not hasattr(block, "conv_kxk"):
            raise ValueError(f"{name}: {type(block).__name__} cannot be unfused (only MobileOne blocks can)")
        conv = fused.net.get_submodule(name).reparam_conv
        first = block.conv_kxk[0]
        first.conv.weight.copy_(conv.weight)
        silent = [b.bn for b in list(block.conv_kxk)[1:]] + ([block.conv_scale.bn] if block.conv_scale else [])
        for bn in silent + ([block.identity] if block.identity is not None else []):
            bn.weight.zero_()
            bn.bias.zero_()
        hooks.append(first.bn.register_forward_hook(_pass_through(conv.bias.detach().clone())))
    multi.eval()(calib)  # the hooks set each first-branch BN in order, on the activations the fused model sees
    for h in hooks:
        h.remove()
    return multi


def _pass_through(bias):
    def hook(bn, inputs, _output):
        z = inputs[0]
        mean = z.mean((0, 2, 3))
        var = z.var((0, 2, 3), unbiased=False)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_((var + bn.eps).sqrt())
        bn.bias.copy_(mean + bias)
        return z + bias.view(1, -1, 1, 1)  # what the fused conv gives: downstream blocks see the same input

    return hook
