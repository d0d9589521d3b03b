"""A training run that dies after an epoch resumes from its checkpoint and ends bit-identical (CE and KD)."""

import copy

import pytest
import torch
from torch import nn

from stages.lib import training
from stages.lib.params import seed_everything
from stages.lib.training import checkpoints

RECIPE = {"epochs": 4, "batch_size": 8, "lr": 0.01, "weight_decay": 0.01}
BASE = {"seed": 0, "device": "cpu", "channels_last": False}
KD = {"temperature": 2.0, "alpha": 0.5}


def tiny_model():
    torch.manual_seed(1)  # dropout draws from the global torch RNG, which a checkpoint must restore too
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(4, 2),
    )


def tiny_data(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(24) % 2


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", tmp_path / "ckpt")
    return tmp_path, tiny_model(), tiny_data(0), tiny_data(1)


def fit(model, train, val, live, teacher=None):
    seed_everything(BASE["seed"])  # what params.setup does when a stage starts
    return training.fit(copy.deepcopy(model), train, val, RECIPE, live, BASE, teacher, KD if teacher else None)


def teacher_model():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


@pytest.mark.parametrize("loss", ["cross_entropy", "kd"])
def test_killed_run_resumes_to_the_uninterrupted_result(tiny, monkeypatch, caplog, loss):
    tmp, model, train, val = tiny
    teacher = teacher_model() if loss == "kd" else None
    reference, ref_best = fit(model, train, val, tmp / "live_ref", teacher)

    calls = []
    real_auroc = training.auroc

    def dies_in_epoch_3(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")  # after epochs 1 and 2 were checkpointed
        return real_auroc(*args)

    monkeypatch.setattr(training, "auroc", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        fit(model, train, val, tmp / "live", teacher)
    (ckpt,) = (tmp / "ckpt").iterdir()
    saved = torch.load(ckpt, weights_only=True)
    assert {"model", "optimizer", "scheduler", "generator", "torch_rng", "best", "history"} <= set(saved)
    assert len(saved["history"]) == 2

    monkeypatch.setattr(training, "auroc", real_auroc)
    with caplog.at_level("INFO"):
        resumed, best = fit(model, train, val, tmp / "live", teacher)
    assert f"resuming from epoch 2 of 4 ({ckpt})" in caplog.text
    assert best == ref_best
    ref_state, state = reference.state_dict(), resumed.state_dict()
    assert ref_state.keys() == state.keys()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)
    assert not ckpt.exists()  # deleted once training finished
    for name in ("train/loss", "val/auroc", "lr"):  # dvclive curves: same steps and values
        ref, got = (
            (tmp / run / "plots/metrics" / f"{name}.tsv").read_text().splitlines() for run in ("live_ref", "live")
        )
        assert [r.split("\t")[1:] for r in got] == [r.split("\t")[1:] for r in ref], name  # all but the timestamp


def test_other_inputs_or_params_never_share_a_checkpoint(tiny):
    _, model, train, val = tiny
    key = checkpoints.path(model, train, val, RECIPE, BASE)
    assert key == checkpoints.path(copy.deepcopy(model), train, val, dict(RECIPE), dict(BASE))
    changed_model = copy.deepcopy(model)
    with torch.no_grad():
        changed_model[0].weight[0, 0, 0, 0] += 1
    others = [
        checkpoints.path(model, train, val, {**RECIPE, "lr": 0.02}, BASE),
        checkpoints.path(model, train, val, RECIPE, {**BASE, "seed": 1}),
        checkpoints.path(changed_model, train, val, RECIPE, BASE),
        checkpoints.path(model, tiny_data(2), val, RECIPE, BASE),
        checkpoints.path(model, train, val, RECIPE, BASE, teacher=tiny_model(), kd={"temperature": 4, "alpha": 0.5}),
    ]
    assert key not in others and len(set(others)) == len(others)
