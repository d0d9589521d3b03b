"""finetune_teacher: fine-tune the pretrained teacher on the train split, keep its best val epoch.

python -m stages.finetune_teacher data/prepared artifacts/teacher plots/train/teacher metrics/finetune_teacher.json
"""

import argparse

from stages.lib import models, params, training


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("out_dir", help="folder for model.pt and card.json")
    parser.add_argument("live_dir", help="dvclive folder for per-epoch curves")
    parser.add_argument("metrics")
    args = parser.parse_args()
    p = params.load()
    params.check_base(p["base"])
    training.check_recipe(p["train"])
    sec = p["finetune_teacher"]
    models.check_spec("finetune_teacher", sec["model"], sec["weights"])
    params.setup(p["base"])
    training.run(
        "finetune_teacher", p, args.data_dir, args.out_dir, args.live_dir, args.metrics, sec["model"], sec["weights"]
    )


if __name__ == "__main__":
    main()
