import os
from pathlib import Path

import pytest

# Two xdist workers on two cores, each starting stages with base.threads threads: OpenMP threads that spin while
# they wait for a descheduled sibling slow every process many times over (a 64 px training epoch: 60 s instead of
# 6 s). Passive waiting, inherited by every stage process the tests start, gives the cores back instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
