"""train_student: the student with the teacher's recipe and no teacher - the baseline for KD.

    python -m stages.train_student data/prepared artifacts/student plots/train/student metrics/train_student.json

Arguments, checks and the recipe are shared with finetune_teacher (lib/training/supervised.py);
the model comes from the `train_student` section of params.yaml.
"""

from stages.lib import errors
from stages.lib.training import supervised


def main():
    supervised.main("train_student", __doc__)


if __name__ == "__main__":
    errors.run(main, "train_student")
