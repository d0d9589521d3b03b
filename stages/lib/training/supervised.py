"""The stages that train a model from ImageNet weights: finetune_teacher, train_student and distill.

One command line and one body: data -> training.fit (with KD from a frozen teacher for distill) -> model.pt,
card.json and the stage's metrics.
"""

import argparse
import logging
import time

from stages.lib import data, models, params, training
from stages.lib.models import families, reparam
from stages.lib.outputs import write_json
from stages.lib.training import distributed, losses

log = logging.getLogger(__name__)
UNFUSE_IMAGES = 64  # training images on which an unfused block's BatchNorm is set (reparam.unfuse)


def main(stage, doc, model_section=None, distill=False):
    """main() of finetune_teacher, train_student and distill: one CLI, one recipe.

    The model comes from params[`model_section`] (default: the stage's own section). With
    `distill`, a positional `teacher` model.pt follows data_dir and the loss is KD (params[stage]).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    if distill:
        parser.add_argument("teacher", help="model.pt of the fine-tuned teacher")
    parser.add_argument("out_dir", help="folder for model.pt and card.json")
    parser.add_argument("live_dir", help="dvclive folder for per-epoch curves")
    parser.add_argument("metrics")
    args = parser.parse_args()
    model_section = model_section or stage
    p = params.load("base", "train", "families", model_section, *([stage] if distill else []))
    params.check_base(p["base"])
    training.check_recipe(p["train"])
    families.check(p["families"])
    spec = p[model_section]
    models.check_spec(model_section, spec["model"], spec["weights"])
    if distill:
        losses.check_kd(stage, p[stage])
    params.setup(p["base"])
    distributed.launch(p["train"]["processes"])

    teacher = kd = None
    if distill:
        teacher, card = losses.frozen_teacher(args.teacher)
        kd = p[stage]
        log.info(
            "teacher %s (val_auroc %.4f) frozen; T=%s alpha=%s",
            card["arch"],
            card["val_auroc"],
            kd["temperature"],
            kd["alpha"],
        )
    run(stage, p, args.data_dir, args.out_dir, args.live_dir, args.metrics, spec["model"], spec["weights"], teacher, kd)


def run(stage, p, data_dir, out_dir, live_dir, metrics_path, model_name, weights, teacher=None, kd=None):
    """The body shared by finetune_teacher, train_student and distill: data -> fit -> save."""
    base = p["base"]
    size = base["image_size"]
    train_xy = data.load_split(data_dir, "train", size)
    val_xy = data.load_split(data_dir, "val", size)
    log.info("%s: %d train / %d val images at %dx%d", stage, len(train_xy[0]), len(val_xy[0]), size, size)
    classes = data.read_info(data_dir)["classes"]
    model = models.pretrained(model_name, weights, num_classes=len(classes), image_size=size)
    if reparam.is_fused(model.net):  # a deployed-form checkpoint (MobileOne): train the multi-branch form from it
        multi = models.build(model_name, num_classes=len(classes), image_size=size)
        model = reparam.unfuse(model, multi, data.to_float(train_xy[0][:UNFUSE_IMAGES]))
        log.info("%s: fused checkpoint unfused into %d multi-branch blocks", model_name, len(reparam.blocks(model.net)))
    recipe = {**p["train"], "lr": families.lr(p["train"], p["families"], model_name)}
    log.info("%s (%s family): peak LR %g", model_name, families.family(model_name), recipe["lr"])
    start = time.perf_counter()
    model, best = training.fit(model, train_xy, val_xy, recipe, live_dir, base, teacher, kd)
    minutes = (time.perf_counter() - start) / 60
    model = reparam.fuse(model)  # MobileOne is saved, exported and deployed fused; other models are unchanged
    if not distributed.is_main():
        return  # rank 0 writes the outputs
    card = models.save(out_dir, model, {**models.make_card(model_name, weights, size, model, classes), **best})
    adapted = {k: card[k] for k in ("adapted_to_input", "reparameterized") if k in card}  # ViT grid, MobileOne
    write_json(
        metrics_path,
        {**best, "lr": recipe["lr"], **adapted, "param_count": card["param_count"], "train_minutes": round(minutes, 2)},
    )
