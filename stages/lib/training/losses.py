"""What `training.fit` minimises: cross-entropy, or knowledge distillation from a frozen teacher.

Knowledge distillation (Hinton et al. 2015):
    alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, y)

Both losses are called as loss(student_logits, images, labels): the images are what the teacher reads.
"""

import torch
import torch.nn.functional as F

from stages.lib import models, params


def check_kd(section, kd):
    params.check_range(f"{section}.temperature", kd["temperature"], 0, 100, lo_inclusive=False)
    params.check_range(f"{section}.alpha", kd["alpha"], 0, 1)


def kd_loss(student_logits, teacher_logits, targets, temperature, alpha):
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, 1),
        F.log_softmax(teacher_logits / t, 1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, targets)
    return alpha * t * t * soft + (1.0 - alpha) * hard


def frozen_teacher(path):
    """The fine-tuned teacher in eval mode with gradients off: KD only reads its logits."""
    teacher, card = models.load(path)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher, card


class CrossEntropy:
    def to(self, device, memory_format):
        return self

    def __call__(self, logits, images, labels):
        return F.cross_entropy(logits, labels)


class Distillation:
    """The KD loss against `teacher`'s logits on the same images (params `distill`: temperature, alpha)."""

    def __init__(self, teacher, temperature, alpha):
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

    def to(self, device, memory_format):
        self.teacher.eval().to(device, memory_format=memory_format)
        return self

    def __call__(self, logits, images, labels):
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return kd_loss(logits, teacher_logits, labels, self.temperature, self.alpha)


def make(teacher=None, kd=None):
    """Cross-entropy without a teacher; KD from `teacher` with the `kd` params (temperature, alpha) with one."""
    return CrossEntropy() if teacher is None else Distillation(teacher, kd["temperature"], kd["alpha"])
