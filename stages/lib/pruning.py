"""Structured channel pruning with Torch-Pruning: the pruned model is physically smaller.

Four steps, as in Torch-Pruning's quick start: importance -> pruner -> prune -> fine-tune
(the fine-tune is training.fit with the teacher, done by the prune stage).
"""

import logging

import torch
import torch_pruning as tp

log = logging.getLogger(__name__)


def prune_channels(model, ratio, image_size, round_to=8):
    """Remove `ratio` of the channels of every prunable layer by L2 magnitude, in place.

    The classifier is never pruned (its outputs are the classes). `round_to` keeps channel
    counts multiples of 8, which vectorised CPU kernels and INT8 GEMMs prefer.
    Returns (model, dict of MACs and params before/after).
    """
    model.eval()
    example = torch.rand(1, 3, image_size, image_size)
    macs_before, params_before = tp.utils.count_ops_and_params(model, example)
    head = model.net.get_classifier()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[head],
        round_to=round_to,
    )
    pruner.step()
    macs_after, params_after = tp.utils.count_ops_and_params(model, example)
    stats = {
        "macs_before_m": round(macs_before / 1e6, 2),
        "macs_after_m": round(macs_after / 1e6, 2),
        "params_before_m": round(params_before / 1e6, 4),
        "params_after_m": round(params_after / 1e6, 4),
        "macs_ratio": round(macs_after / macs_before, 4),
        "params_ratio": round(params_after / params_before, 4),
    }
    log.info("pruned %.0f%% of channels: MACs %.1fM -> %.1fM, params %.3fM -> %.3fM", ratio * 100,
             stats["macs_before_m"], stats["macs_after_m"], stats["params_before_m"], stats["params_after_m"])  # fmt: skip
    return model, stats
