"""distill: train the student (same architecture and recipe as train_student) from the frozen teacher.

    python -m stages.distill data/prepared artifacts/teacher/model.pt artifacts/student_kd \
        plots/train/student_kd metrics/distill.json

Arguments, checks and the recipe are shared with train_student (lib/training/supervised.py); the
student comes from the `train_student` section, the loss (temperature, alpha) from `distill`.
"""

from stages.lib import errors
from stages.lib.training import supervised


def main():
    supervised.main("distill", __doc__, model_section="train_student", distill=True)


if __name__ == "__main__":
    errors.run(main, "distill")
