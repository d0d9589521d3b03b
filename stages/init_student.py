"""init_student: the student as its fine-tune starts - ImageNet weights, a fresh head, no training.

    python -m stages.init_student data/prepared artifacts/student_init

What `prune.source: student_init` prunes: channels are removed before the task is learnt, and the
prune stage's KD fine-tune is then the pruned network's whole training (give it the student's
recipe: prune.lr_scale 1, prune.epochs >= train.epochs). The other sources prune a trained model
and only recover it. The architecture and weights are the `train_student` section's.
"""

import argparse

from stages.lib import data, errors, models, params, reparam


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("out_dir", help="folder for model.pt and card.json")
    args = ap.parse_args()
    p = params.load("base", "train_student")
    params.check_base(p["base"])
    spec, size = p["train_student"], p["base"]["image_size"]
    models.check_spec("train_student", spec["model"], spec["weights"])
    params.setup(p["base"])  # seeds the fresh head
    classes = data.read_info(args.data_dir)["classes"]
    model = models.pretrained(spec["model"], spec["weights"], num_classes=len(classes), image_size=size)
    model = reparam.fuse(model)  # saved as the trained students are: deployed form (MobileOne fused)
    models.save(args.out_dir, model, models.make_card(spec["model"], spec["weights"], size, model, classes))


if __name__ == "__main__":
    errors.run(main, "init_student")
