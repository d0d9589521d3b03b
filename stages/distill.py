"""distill: train the student (same architecture and recipe as train_student) from the frozen teacher.

    python -m stages.distill data/prepared artifacts/teacher/model.pt artifacts/student_kd \
        plots/train/student_kd metrics/distill.json
"""

import argparse
import logging

from stages.lib import models, params, training

log = logging.getLogger("distill")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("teacher", help="model.pt of the fine-tuned teacher")
    parser.add_argument("out_dir", help="folder for model.pt and card.json")
    parser.add_argument("live_dir", help="dvclive folder for per-epoch curves")
    parser.add_argument("metrics")
    args = parser.parse_args()
    p = params.load()
    params.check_base(p["base"])
    training.check_recipe(p["train"])
    training.check_kd("distill", p["distill"])
    student = p["train_student"]
    models.check_spec("train_student", student["model"], student["weights"])
    params.setup(p["base"])

    teacher, card = training.frozen_teacher(args.teacher)
    log.info("teacher %s (val_auroc %.4f) frozen; T=%s alpha=%s", card["arch"], card["val_auroc"],
             p["distill"]["temperature"], p["distill"]["alpha"])  # fmt: skip
    training.run("distill", p, args.data_dir, args.out_dir, args.live_dir, args.metrics,
                 student["model"], student["weights"], teacher=teacher, kd=p["distill"])  # fmt: skip


if __name__ == "__main__":
    main()
