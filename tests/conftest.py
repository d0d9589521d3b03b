from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# The tiny end-to-end `dvc repro` runs take most of the suite's time. pyproject.toml runs the suite on two
# xdist workers, a test file per worker at a time, in collection order: these files are collected first, so
# each starts at once on its own worker and the short files fill the other.
LONG_FIRST = ("test_pipeline_e2e.py", "test_datasets_e2e.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONG_FIRST.index(item.path.name) if item.path.name in LONG_FIRST else len(LONG_FIRST))


@pytest.fixture
def root():
    return ROOT


def penalty_only_finetune(image_size, steps, calls=None):
    """A stand-in for the prune stage's KD fine-tune (lib/pruning's `finetune(model, step, epochs, regularizer)`):
    with a regularizer, `steps` plain-SGD steps (LR 1) on the sparse-learning penalty alone (the task loss is zero);
    without one, nothing. Each call is appended to `calls` as (step, epochs, regularized)."""
    import torch

    def finetune(model, step, epochs, regularizer=None):
        if calls is not None:
            calls.append((step, epochs, regularizer is not None))
        if regularizer is not None:
            opt = torch.optim.SGD(model.parameters(), lr=1.0)
            for _ in range(steps):
                opt.zero_grad()
                (0 * model(torch.rand(2, 3, image_size, image_size)).sum()).backward()
                regularizer(model, 1.0)  # the LR of the step
                opt.step()
        return model

    return finetune
