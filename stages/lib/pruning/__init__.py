"""Structured pruning with Torch-Pruning: the pruned model is physically smaller.

Four steps, as in Torch-Pruning's quick start: importance -> pruner -> prune -> fine-tune.
The fine-tune is a callback (the prune stage passes a KD `training.fit`), so an iterative
schedule fine-tunes between its steps.

The stem and the classifier are never pruned: the stem sees the raw image (3 input channels,
cheap, and everything downstream depends on it), the classifier's outputs are the classes.
Channel counts stay multiples of `round_to`.

How the ratio is spread over the layers (`scope`): uniform (every layer loses `ratio`), global (one ranking
over all layers) or greedy (per-stage ratios searched at uniform's MACs: pruning/greedy.py). ViTs lose whole
attention heads and MLP width (pruning/vit.py); the CNN pruner and criteria are in pruning/pruners.py.
"""

import logging

from stages.lib import params, schema
from stages.lib.pruning.greedy import allocate
from stages.lib.pruning.pruners import (
    IMPORTANCE,
    attention_layers,
    build_pruner,
    count,
    is_vit,
    stages,
    taylor_gradients,
)
from stages.lib.pruning.vit import build_vit_pruner, sync_heads

log = logging.getLogger(__name__)


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
        raise params.ParamError(
            f"prune.max_ratio={sec['max_ratio']!r} is below prune.ratio={sec['ratio']!r}; "
            f"expected max_ratio >= ratio (the cap on any one layer)"
        )
    params.check_int("prune.epochs", sec["epochs"], sec["iterative_steps"])
    return sec


def epochs_per_step(epochs, steps):
    """The fine-tune budget split over the steps (one-shot and iterative cost the same); the rest goes last."""
    share = [epochs // steps] * steps
    share[-1] += epochs - sum(share)
    return share


def check_for_model(importance, model, key="prune.importance", scope=None):
    """What the model family cannot do, refused before any work: ViTs have no BatchNorm scales to rank, and
    their heads are pruned the same in every block (greedy allocates over CNN stages)."""
    if attention_layers(model) and importance == "bn_scale":
        raise params.ParamError(
            f"{key}='bn_scale' ranks BatchNorm scales, which a ViT has none of; "
            f"expected one of {sorted(set(IMPORTANCE) - {'bn_scale'})}"
        )
    if scope == "greedy" and is_vit(model):
        raise params.ParamError(
            "prune.scope='greedy' allocates ratios over a CNN's stages; a ViT's heads and MLP "
            "width are pruned alike in every block: expected 'uniform' or 'global'"
        )
    if scope == "greedy":
        try:
            stages(model)
        except ValueError as e:
            raise params.ParamError(
                f"prune.scope='greedy' allocates ratios over a CNN's stages, but {e}; "
                "expected 'uniform' or 'global' for this model"
            ) from None


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
        log.info(
            "step %d/%d (%s, %s): MACs %.1fM -> %.1fM",
            step + 1,
            cfg["iterative_steps"],
            cfg["importance"],
            cfg["scope"],
            macs_before / 1e6,
            macs / 1e6,
        )
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
