"""finetune_teacher: fine-tune the pretrained teacher on the train split, keep its best val epoch.

    python -m stages.finetune_teacher data/prepared artifacts/teacher plots/train/teacher metrics/finetune_teacher.json

Arguments, checks and the recipe are shared with train_student (lib/training/supervised.py);
the model comes from the `finetune_teacher` section of params.yaml.
"""

from stages.lib import errors
from stages.lib.training import supervised


def main():
    supervised.main("finetune_teacher", __doc__)


if __name__ == "__main__":
    errors.run(main, "finetune_teacher")
