"""prune: structured channel pruning of the distilled student, then a short KD fine-tune.

    python -m stages.prune data/prepared artifacts/student_kd/model.pt artifacts/teacher/model.pt \
        artifacts/student_pruned plots/train/student_pruned metrics/prune.json
"""

import argparse
import logging
import time

from stages.lib import data, models, params, pruning, training
from stages.lib.outputs import write_json

log = logging.getLogger("prune")


def check(p):
    params.check_base(p["base"])
    training.check_recipe(p["train"])
    sec = p["prune"]
    params.check_range("prune.ratio", sec["ratio"], 0, 1, hi_inclusive=False)
    params.check_int("prune.epochs", sec["epochs"], 1)
    params.check_int("prune.round_to", sec["round_to"], 1)
    training.check_kd("distill", p["distill"])
    return sec


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("student", help="model.pt of the distilled student")
    parser.add_argument("teacher", help="model.pt of the fine-tuned teacher")
    parser.add_argument("out_dir", help="folder for model.pt and card.json")
    parser.add_argument("live_dir", help="dvclive folder for per-epoch curves")
    parser.add_argument("metrics")
    args = parser.parse_args()
    p = params.load()
    sec = check(p)
    params.setup(p["base"])
    size = p["base"]["image_size"]

    student, card = models.load(args.student)
    teacher, _ = training.frozen_teacher(args.teacher)
    student, stats = pruning.prune_channels(student, sec["ratio"], size, sec["round_to"])

    # Recover accuracy with the distillation loss, a lower LR and fewer epochs than training.
    recipe = {**p["train"], "epochs": sec["epochs"], "lr": p["train"]["lr"] * sec["lr_scale"]}
    train_xy = data.load_split(args.data_dir, "train", size)
    val_xy = data.load_split(args.data_dir, "val", size)
    start = time.perf_counter()
    student, best = training.fit(student, train_xy, val_xy, recipe, args.live_dir, p["base"], teacher, p["distill"])
    minutes = (time.perf_counter() - start) / 60
    card = models.save(args.out_dir, student, {**card, **best, "pruned": {"ratio": sec["ratio"], **stats}})
    write_json(args.metrics, {**stats, **best, "param_count": card["param_count"], "train_minutes": round(minutes, 2)})


if __name__ == "__main__":
    main()
