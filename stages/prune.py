"""prune: structured channel pruning of the distilled student, with KD fine-tunes from the teacher.

    python -m stages.prune data/prepared artifacts/student_kd/model.pt artifacts/teacher/model.pt \
        artifacts/student_pruned plots/train/student_pruned metrics/prune/student_pruned.json

Importance, uniform/global/greedy ratio, one-shot or iterative (a KD fine-tune after every step) and the
fine-tune budget come from params `prune` (see lib/pruning). The stem and the classifier are never pruned.
`prune.source: teacher` prunes the teacher instead (e.g. a ViT into a smaller ViT). `prune_sweep` runs the
same with the ratio given on the command line.
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

from stages.lib import data, errors, models, params, pruning, training
from stages.lib.models import families
from stages.lib.outputs import write_json
from stages.lib.training import distributed, losses

log = logging.getLogger("prune")
SECTIONS = ("base", "train", "families", "distill", "prune")  # dvc.yaml `params:` of prune and prune_sweep


def check(p, ratio=None):
    params.check_base(p["base"])
    training.check_recipe(p["train"])
    families.check(p["families"])
    sec = {**p["prune"], "ratio": p["prune"]["ratio"] if ratio is None else ratio}
    pruning.check(sec, fams=p["families"])
    losses.check_kd("distill", p["distill"])
    return sec


def parser(doc, sweep=False):
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if sweep:
        ap.add_argument("ratio_pct", type=int, help="share of channels removed, in percent (prune.sweep item)")
    ap.add_argument("data_dir")
    ap.add_argument("student", help="model.pt of the model to prune (params prune.source: student_kd or teacher)")
    ap.add_argument("teacher", help="model.pt of the fine-tuned teacher")
    ap.add_argument("out_dir", help="folder for model.pt and card.json")
    ap.add_argument("live_dir", help="dvclive folder for the per-epoch curves of the last fine-tune")
    ap.add_argument("metrics")
    return ap


def run(p, sec, args):
    """Load -> prune (with fine-tunes between and after steps) -> save model, card and metrics."""
    base = p["base"] if sec["seed"] is None else {**p["base"], "seed": sec["seed"]}  # prune.seed: replicate a run
    params.setup(base)
    distributed.launch(p["train"]["processes"])
    size = p["base"]["image_size"]
    student, card = models.load(args.student)
    arch, auto = card["arch"], sec["importance"] == "auto"
    sec = {**sec, "importance": families.importance(sec, p["families"], arch)}  # auto: the family's criterion
    where = f"families.{families.family(arch)}.prune_importance" if auto else "prune.importance"
    pruning.check_for_model(sec["importance"], student, where, sec["scope"])
    lr = families.lr(p["train"], p["families"], arch) * sec["lr_scale"]
    teacher, _ = losses.frozen_teacher(args.teacher)  # the KD target of the fine-tunes
    train_xy = data.load_split(args.data_dir, "train", size)
    val_xy = data.load_split(args.data_dir, "val", size)
    n_calib = 16 * sec["taylor_batches"]
    calib = (data.to_float(train_xy[0][:n_calib]), train_xy[1][:n_calib])
    probe = data.to_float(train_xy[0][: sec["greedy_images"]]) if sec["scope"] == "greedy" else None
    steps = sec["iterative_steps"]
    history = []  # each fine-tune's best epoch and val AUROC

    def finetune(model, step, epochs):
        # Recover with the distillation loss at a lower LR; only the last fine-tune's curves are kept.
        recipe = {**p["train"], "epochs": epochs, "lr": lr}
        with tempfile.TemporaryDirectory() as scratch:
            live = args.live_dir if step == steps - 1 else scratch
            model, best = training.fit(model, train_xy, val_xy, recipe, live, base, teacher, p["distill"])
        history.append(best)
        return model

    start = time.perf_counter()
    student, stats = pruning.prune_structured(student, size, sec, finetune, calib, probe)
    minutes = (time.perf_counter() - start) / 60
    if not distributed.is_main():
        return  # rank 0 writes the outputs
    best = history[-1]  # the last fine-tune: best epoch and its val AUROC
    # kd_from: what the fine-tunes distil, always the teacher; recorded as the committed runs' cards record it
    keys = ("ratio", "importance", "scope", "max_ratio", "iterative_steps", "epochs")
    setting = {**{k: sec[k] for k in keys}, "kd_from": "teacher"}
    if sec["scope"] == "greedy":  # its search's settings; what it found (stage_ratios ...) is in stats
        setting.update(greedy_step=sec["greedy_step"], greedy_images=sec["greedy_images"])
    setting["source_model"] = Path(args.student).parent.name  # pruned from; judged against lib/sweep.compared_with
    setting["lr"] = lr
    # wall times go to the metrics only: the model file stays byte-identical between runs
    timing = {k: stats.pop(k) for k in ("greedy_minutes",) if k in stats}
    card = models.save(args.out_dir, student, {**card, **best, "pruned": {**setting, **stats}})
    write_json(
        args.metrics,
        {
            **setting,
            **stats,
            **best,
            "val_auroc_per_step": [h["val_auroc"] for h in history],
            "param_count": card["param_count"],
            "train_minutes": round(minutes, 2),
            **timing,
        },
    )


def main():
    args = parser(__doc__).parse_args()
    p = params.load(*SECTIONS)
    run(p, check(p), args)


if __name__ == "__main__":
    errors.run(main, "prune")
