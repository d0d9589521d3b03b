"""prune: structured channel pruning of the distilled student, with KD fine-tunes.

    python -m stages.prune data/prepared artifacts/student_kd/model.pt artifacts/teacher/model.pt \
        artifacts/student_pruned plots/train/student_pruned metrics/prune/student_pruned.json

Importance, uniform/global/greedy ratio, one-shot or iterative (a KD fine-tune after every step), the
fine-tune budget and whose logits it distils (`kd_from`) come from params `prune` (see lib/pruning). The stem and the classifier
are never pruned. `prune_sweep` runs the same with the ratio given on the command line.
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

from stages.lib import data, distributed, errors, families, models, params, pruning, training
from stages.lib.outputs import write_json

log = logging.getLogger("prune")
SECTIONS = ("base", "train", "families", "distill", "prune")  # dvc.yaml `params:` of prune and prune_sweep


def check(p, ratio=None):
    params.check_base(p["base"])
    training.check_recipe(p["train"])
    families.check(p["families"])
    sec = {**p["prune"], "ratio": p["prune"]["ratio"] if ratio is None else ratio}
    pruning.check(sec, fams=p["families"])
    training.check_kd("distill", p["distill"])
    return sec


def parser(doc, sweep=False):
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if sweep:
        ap.add_argument("ratio_pct", type=int, help="share of channels removed, in percent (prune.sweep item)")
    ap.add_argument("data_dir")
    ap.add_argument("student", help="model.pt of the model to prune (params prune.source; the distilled student)")
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
    # KD target of the fine-tunes: the fine-tuned teacher, or a frozen copy of the unpruned model (the parent)
    teacher, _ = training.frozen_teacher(args.teacher if sec["kd_from"] == "teacher" else args.student)
    train_xy = data.load_split(args.data_dir, "train", size)
    val_xy = data.load_split(args.data_dir, "val", size)
    n_calib = 16 * sec["taylor_batches"]
    calib = (data.to_float(train_xy[0][:n_calib]), train_xy[1][:n_calib])
    probe = data.to_float(train_xy[0][: sec["greedy_images"]]) if sec["scope"] == "greedy" else None
    steps = sec["iterative_steps"]
    history, sparse = [], []  # each fine-tune's best epoch and val AUROC; the sparse-learning phase's last

    def finetune(model, step, epochs, regularizer=None):
        # Recover with the distillation loss at a lower LR; only the last fine-tune's curves are kept.
        # step -1 with a regularizer: sparse learning before the first pruning step (prune.sparse_epochs); its
        # reg and form join the recipe so that a killed run resumes only from a checkpoint of the same penalty.
        recipe = {
            **p["train"],
            "epochs": epochs,
            "lr": lr,
            **({"sparse_reg": [sec["reg"], sec["reg_form"]]} if regularizer else {}),
        }
        with tempfile.TemporaryDirectory() as scratch:
            live = args.live_dir if step == steps - 1 else scratch
            model, best = training.fit(model, train_xy, val_xy, recipe, live, base, teacher, p["distill"], regularizer)
        (sparse if regularizer else history).append(best)
        return model

    start = time.perf_counter()
    student, stats = pruning.prune_structured(student, size, sec, finetune, calib, probe)
    minutes = (time.perf_counter() - start) / 60
    if not distributed.is_main():
        return  # rank 0 writes the outputs
    best = history[-1]  # the last fine-tune: best epoch and its val AUROC
    setting = {k: sec[k] for k in ("ratio", "channels", "importance", "scope", "max_ratio", "iterative_steps", "epochs",
                                   "kd_from")}  # fmt: skip
    if sec["scope"] == "greedy":  # its search's settings; what it found (stage_ratios ...) is in stats
        setting.update(greedy_step=sec["greedy_step"], greedy_images=sec["greedy_images"])
    if sec["sparse_epochs"]:  # only then, so the default run's metrics keep their keys
        setting.update(
            sparse_epochs=sec["sparse_epochs"],
            reg=sec["reg"],
            reg_form=sec["reg_form"],
            sparse_val_auroc=sparse[0]["val_auroc"],
        )
    setting["source_model"] = Path(args.student).parent.name  # pruned from; judged against lib/sweep.compared_with
    setting["lr"] = lr
    card = models.save(args.out_dir, student, {**card, **best, "pruned": {**setting, **stats}})
    write_json(args.metrics, {**setting, **stats, **best, "val_auroc_per_step": [h["val_auroc"] for h in history],
                              "param_count": card["param_count"], "train_minutes": round(minutes, 2)})  # fmt: skip


def main():
    args = parser(__doc__).parse_args()
    p = params.load(*SECTIONS)
    run(p, check(p), args)


if __name__ == "__main__":
    errors.run(main, "prune")
