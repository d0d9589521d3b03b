import torch
import torch.nn.functional as F

from stages.lib.training import losses
from stages.lib.training.losses import kd_loss


def test_soft_term_is_zero_when_student_equals_teacher():
    logits = torch.randn(8, 2)
    y = torch.randint(0, 2, (8,))
    assert kd_loss(logits, logits.clone(), y, temperature=4.0, alpha=1.0).abs().item() < 1e-6


def test_alpha_zero_is_plain_cross_entropy():
    s, t, y = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 2, (8,))
    torch.testing.assert_close(kd_loss(s, t, y, temperature=3.0, alpha=0.0), F.cross_entropy(s, y))


def test_matches_hinton_formula():
    s, t, y = torch.randn(16, 3), torch.randn(16, 3), torch.randint(0, 3, (16,))
    T, a = 2.5, 0.7
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    expected = a * T * T * kl + (1 - a) * F.cross_entropy(s, y)
    torch.testing.assert_close(kd_loss(s, t, y, T, a), expected)


def test_gradients_flow_to_student_not_teacher():
    s = torch.randn(8, 2, requires_grad=True)
    t = torch.randn(8, 2, requires_grad=True)
    loss = kd_loss(s, t.detach(), torch.randint(0, 2, (8,)), temperature=2.0, alpha=0.5)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_soft_loss_pulls_student_towards_teacher():
    teacher = torch.tensor([[3.0, -1.0], [-2.0, 2.0]])
    student = torch.zeros(2, 2, requires_grad=True)
    opt = torch.optim.SGD([student], lr=0.5)
    y = torch.tensor([0, 1])
    before = kd_loss(student, teacher, y, 2.0, 1.0).item()
    for _ in range(50):
        opt.zero_grad()
        kd_loss(student, teacher, y, 2.0, 1.0).backward()
        opt.step()
    assert kd_loss(student, teacher, y, 2.0, 1.0).item() < 0.1 * before


def test_fit_losses_are_cross_entropy_or_kd_on_the_teachers_logits():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(12, 2))
    x, s, y = torch.randn(8, 3, 2, 2), torch.randn(8, 2, requires_grad=True), torch.randint(0, 2, (8,))
    torch.testing.assert_close(losses.make()(s, x, y), F.cross_entropy(s, y))
    kd = losses.make(teacher.train(), {"temperature": 3.0, "alpha": 0.4}).to("cpu", torch.contiguous_format)
    assert not teacher.training  # eval: no dropout in the teacher's logits
    loss = kd(s, x, y)
    torch.testing.assert_close(loss, kd_loss(s, teacher(x), y, 3.0, 0.4))
    loss.backward()
    assert s.grad.abs().sum() > 0 and all(p.grad is None for p in teacher.parameters())
