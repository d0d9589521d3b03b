"""Structured pruning with Torch-Pruning: the pruned model is physically smaller.

Four steps, as in Torch-Pruning's quick start: importance -> pruner -> prune -> fine-tune.
The fine-tune is a callback (the prune stage passes a KD `training.fit`), so an iterative
schedule fine-tunes between its steps.

The stem and the classifier are never pruned: the stem sees the raw image (3 input channels,
cheap, and everything downstream depends on it), the classifier's outputs are the classes.
Channel counts stay multiples of `round_to`.

How the ratio is spread over the layers (`scope`): uniform (every layer loses `ratio`), global (one ranking
over all layers) or greedy: per-stage ratios from a search that removes the same MACs as uniform pruning at
`ratio`, each step cutting further into the stage whose cut distorts the unpruned model's outputs least per
MAC saved (NetAdapt, Yang et al. 2018, and AMC, He et al. 2018, search per-layer ratios the same way; here
without a fine-tune inside the loop, measured as the KL divergence of the logits on training images).

ViTs (timm `Attention`): whole attention heads are removed (head_dim kept, so the attention
kernels keep their shape) and the MLP hidden width is pruned; the residual width is kept.
"""

import copy
import logging
import time

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from stages.lib import params, schema

log = logging.getLogger(__name__)

# Importance criteria (params `prune.importance`) -> Torch-Pruning scorer.
IMPORTANCE = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),  # group L1 norm of the coupled weights
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),  # group L2 norm (Torch-Pruning's default)
    "bn_scale": lambda: tp.importance.BNScaleImportance(),  # |gamma| of the BatchNorm (network slimming)
    "taylor": lambda: tp.importance.GroupTaylorImportance(),  # |w * dL/dw|: needs gradients (calibration batch)
    "lamp": lambda: tp.importance.LAMPImportance(p=2),  # layer-adaptive magnitude score
    "random": lambda: tp.importance.RandomImportance(),  # control: shows whether the criterion matters
}


def check(sec, fams=None):
    """Stop on a bad `prune` section (and the families' importances) before any work, naming the key, the
    value and what is allowed. Each knob's own rule is lib/schema.py's (the one place a prune knob is
    declared); here: the importance names, which only this module knows, and the rules between knobs.
    importance `auto` is the model family's (params families, lib/families.py)."""
    schema.check_section("prune", sec)
    params.check_choice("prune.importance", sec["importance"], set(IMPORTANCE) | {"auto"})
    for name, fam in (fams or {}).items():
        params.check_choice(f"families.{name}.prune_importance", fam["prune_importance"], set(IMPORTANCE))
    if sec["scope"] != "uniform" and sec["max_ratio"] < sec["ratio"]:
        raise params.ParamError(f"prune.max_ratio={sec['max_ratio']!r} is below prune.ratio={sec['ratio']!r}; "
                                f"expected max_ratio >= ratio (the cap on any one layer)")  # fmt: skip
    params.check_int("prune.epochs", sec["epochs"], sec["iterative_steps"])
    return sec


def epochs_per_step(epochs, steps):
    """The fine-tune budget split over the steps (one-shot and iterative cost the same); the rest goes last."""
    share = [epochs // steps] * steps
    share[-1] += epochs - sum(share)
    return share


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


def greedy_search(n_stages, trial, base_macs, target_macs, step, cap):
    """Per-stage ratios that bring the MACs to `target_macs`: start from nothing pruned; each round raises by
    `step` (up to `cap`) the one stage whose raise costs the least output distortion per MAC saved, until the
    MACs are at or below the target. `trial(ratios) -> (macs, distortion)` prunes a copy and measures it.
    Returns (ratios, macs, distortion, rounds); stops early (and says so) when no stage can give more."""
    ratios, macs, dist, rounds = [0.0] * n_stages, base_macs, 0.0, []
    while macs > target_macs:
        best = None
        for i in range(n_stages):
            if ratios[i] + step > cap + 1e-9:
                continue
            cand = [*ratios[:i], round(ratios[i] + step, 4), *ratios[i + 1 :]]
            m, d = trial(cand)
            if m >= macs:
                continue  # rounding to round_to removed nothing at this step
            key = (max(d - dist, 0.0) / (macs - m), m)  # distortion per MAC saved; ties: the larger saving
            if best is None or key < best[0]:
                best = (key, cand, m, d)
        if best is None:
            log.warning("greedy: no stage can be cut further (cap %.2f); MACs stay at %.1fM, target %.1fM",
                        cap, macs / 1e6, target_macs / 1e6)  # fmt: skip
            break
        _, ratios, macs, dist = best
        rounds.append(ratios)
        log.info("greedy round %d: stage ratios %s, MACs %.1fM (target %.1fM), KL %.4f", len(rounds), ratios,
                 macs / 1e6, target_macs / 1e6, dist)  # fmt: skip
    return ratios, macs, dist, rounds


def allocate(model, image_size, cfg, images, calib=None):
    """scope greedy: the per-stage ratios (greedy_search) that remove as many MACs as uniform pruning at
    cfg ratio, each candidate cut one-shot on a copy and scored by the KL divergence of its logits from the
    unpruned model's on `images`. Returns (ratios, {what the search found, for the metrics})."""
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():
        ref = model(images).log_softmax(1)

    def trial(stage_ratios):
        """(MACs, KL from the unpruned logits) of the one-shot cut; stage_ratios None = uniform at cfg ratio."""
        pruned = copy.deepcopy(model).eval()
        one_shot = {**cfg, "iterative_steps": 1, "stage_ratios": stage_ratios}
        pruner = build_pruner(pruned, image_size, one_shot)
        if cfg["importance"] == "taylor":
            taylor_gradients(pruned, calib)
        pruner.step()
        with torch.no_grad():
            kl = F.kl_div(pruned(images).log_softmax(1), ref, log_target=True, reduction="batchmean")
        return count(pruned, image_size)[0], float(kl)

    target, uniform_kl = trial(None)
    step, n = cfg["greedy_step"], len(stages(model))
    ratios, _, kl, rounds = greedy_search(n, trial, count(model, image_size)[0], target, step, cfg["max_ratio"])
    found = {"stage_ratios": ratios, "greedy_rounds": len(rounds), "greedy_kl": round(kl, 4),
             "uniform_kl": round(uniform_kl, 4), "greedy_minutes": round((time.perf_counter() - start) / 60, 2)}  # fmt: skip
    log.info("greedy: stage ratios %s, one-shot KL %.4f (uniform at %.2f: %.4f) on %d images", ratios, kl,
             cfg["ratio"], uniform_kl, len(images))  # fmt: skip
    return ratios, found


def check_for_model(importance, model, key="prune.importance", scope=None):
    """What the model family cannot do, refused before any work: ViTs have no BatchNorm scales to rank, and
    their heads are pruned the same in every block (greedy allocates over CNN stages)."""
    if attention_layers(model) and importance == "bn_scale":
        raise params.ParamError(f"{key}='bn_scale' ranks BatchNorm scales, which a ViT has none of; "
                                f"expected one of {sorted(set(IMPORTANCE) - {'bn_scale'})}")  # fmt: skip
    if scope == "greedy" and is_vit(model):
        raise params.ParamError("prune.scope='greedy' allocates ratios over a CNN's stages; a ViT's heads and MLP "
                                "width are pruned alike in every block: expected 'uniform' or 'global'")  # fmt: skip
    if scope == "greedy":
        try:
            stages(model)
        except ValueError as e:
            raise params.ParamError(f"prune.scope='greedy' allocates ratios over a CNN's stages, but {e}; "
                                    "expected 'uniform' or 'global' for this model") from None  # fmt: skip


def is_vit(model):
    """A timm ViT (patch embedding + attention blocks); hybrids (MobileViT) are pruned like CNNs."""
    return hasattr(model.net, "patch_embed") and bool(attention_layers(model))


def attention_layers(model):
    """timm ViT attention blocks (empty for CNNs): their heads are pruned whole."""
    from timm.models.vision_transformer import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


def prune_structured(model, image_size, cfg, finetune=None, calib=None, probe=None):
    """Prune `model` in place by `cfg`; `finetune(model, step, epochs)` runs after every step.

    One-shot is iterative_steps=1; with k steps the ratio grows linearly to the same final
    ratio, with a fine-tune between steps. `calib` (x float, y) is needed for Taylor importance,
    `probe` (float images) for scope greedy, whose search scores its candidate cuts on them.
    CNNs lose `ratio` of their channels; ViTs `ratio` of their attention heads (whole heads) and
    MLP hidden units. Returns (model, MACs/params before and after).
    """
    if cfg["importance"] == "taylor" and calib is None:
        raise ValueError("taylor importance needs calibration images (calib=(x, y))")
    macs_before, params_before = count(model, image_size)
    attns = attention_layers(model)
    vit = is_vit(model)
    extra, build = {}, build_vit_pruner if vit else build_pruner
    if cfg["scope"] == "greedy":  # the allocation, then the same pruner with one ratio per stage
        if vit or probe is None:
            raise ValueError("scope greedy needs a CNN and probe images (probe=x)")
        ratios, extra = allocate(model, image_size, cfg, probe, calib)
        cfg = {**cfg, "stage_ratios": ratios}
    pruner = build(model.eval(), image_size, cfg)
    for step, epochs in enumerate(epochs_per_step(cfg["epochs"], cfg["iterative_steps"])):
        if cfg["importance"] == "taylor":
            taylor_gradients(model, calib)
        pruner.step()
        sync_heads(pruner, attns)
        model.zero_grad(set_to_none=True)
        macs, _ = count(model, image_size)
        log.info("step %d/%d (%s, %s): MACs %.1fM -> %.1fM", step + 1, cfg["iterative_steps"], cfg["importance"],
                 cfg["scope"], macs_before / 1e6, macs / 1e6)  # fmt: skip
        if finetune is not None and epochs > 0:
            model = finetune(model, step, epochs)
    return model.eval(), {**stats(macs_before, params_before, *count(model, image_size)), **extra}


def stats(macs_before, params_before, macs_after, params_after):
    return {
        "macs_before_m": round(macs_before / 1e6, 2),
        "macs_after_m": round(macs_after / 1e6, 2),
        "params_before_m": round(params_before / 1e6, 4),
        "params_after_m": round(params_after / 1e6, 4),
        "macs_ratio": round(macs_after / macs_before, 4),
        "params_ratio": round(params_after / params_before, 4),
    }


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
