"""Data-parallel training (train.processes > 1): two gloo processes take the single-process step.

Each rank augments the same global batch and keeps every second image of it; DDP averages the
gradients. Without BatchNorm or dropout (whose statistics and masks are per shard) that is the
single-process step exactly, up to float summation order, so the weights must match closely.
The stage-level run under torchrun (`dvc repro` with train.processes=2) is in test_pipeline_e2e.py.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from stages.lib import training
from stages.lib.params import seed_everything
from stages.lib.training import checkpoints, distributed

RECIPE = {"epochs": 2, "batch_size": 8, "lr": 0.01, "weight_decay": 0.01}
BASE = {"seed": 0, "device": "cpu", "channels_last": False}


def tiny_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def tiny_data(seed, n):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 2


def fit(tmp_path, live):
    """fit() on the tiny model; also the number of training images its forward passes saw."""
    seed_everything(BASE["seed"])
    model, seen = tiny_model(), []
    model.register_forward_hook(lambda m, inputs, out: seen.append(len(inputs[0])) if m.training else None)
    model, best = training.fit(model, tiny_data(0, 24), tiny_data(1, 10), RECIPE, tmp_path / live, BASE)
    return model, best, sum(seen)


def worker(rank, world_size, port, tmp_path):
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    checkpoints.CHECKPOINT_DIR = tmp_path / "ckpt_ddp"  # a fresh process: the test's monkeypatch is not here
    model, best, seen = fit(tmp_path, "ddp")
    torch.save({"state": model.state_dict(), "best": best, "seen": seen}, tmp_path / f"rank{rank}.pt")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_take_the_single_process_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", tmp_path / "ckpt_single")
    single, single_best, single_seen = fit(tmp_path, "single")
    mp.spawn(worker, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, value in single.state_dict().items():
        for r in ranks:  # every rank ends with the same weights, and they are the single-process ones
            assert torch.allclose(r["state"][name], value, atol=1e-5, rtol=1e-4), name
    assert ranks[0]["best"] == ranks[1]["best"] == single_best  # same validation, same best epoch
    assert single_seen == 2 * 24 and ranks[0]["seen"] == ranks[1]["seen"] == 24  # each rank trained on half
    assert (tmp_path / "ddp" / "metrics.json").is_file()  # rank 0 wrote the dvclive curves...
    assert not list((tmp_path / "ckpt_ddp").glob("*.pt"))  # ...and removed its checkpoint when done


def test_shards_are_disjoint_and_cover_the_batch(monkeypatch):
    batch = torch.arange(11)
    parts = []
    for rank in (0, 1, 2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        parts.append(distributed.shard(batch)[0])
    assert sorted(torch.cat(parts).tolist()) == batch.tolist()
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_a_last_batch_too_small_to_split_is_skipped(monkeypatch):
    x, y = torch.arange(5), torch.arange(5)
    assert distributed.train_shard(x, y) == (x, y)  # one process: every batch whole
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert [t.tolist() for t in distributed.train_shard(x, y)] == [[1, 3], [1, 3]]
    assert distributed.train_shard(x[:3], y[:3]) is None  # BatchNorm needs 2 images per rank


def test_bad_process_count_names_the_key():
    with pytest.raises(training.params.ParamError, match=r"train\.processes"):
        training.check_recipe({"epochs": 1, "batch_size": 8, "lr": 0.01, "weight_decay": 0.0, "processes": 0})
