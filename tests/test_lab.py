"""lab/: every study's README.md and results.csv regenerate from its archive byte for byte, lab/README.md indexes
every study folder, and archives are small and deterministic."""

import re

import pytest
import yaml

from lab import tables
from lab.archive import MAX_MB, NAME, Archive
from lab.runs import Run
from lab.studies import STUDIES

LAB = tables.LAB


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    """Every study's README.md and results.csv, and lab/README.md, written from the archives into a temp folder."""
    out = tmp_path_factory.mktemp("lab")
    tables.regenerate([], out)
    return out


@pytest.mark.parametrize("study", [s.name for s in STUDIES])
def test_study_tables_regenerate_byte_for_byte(regenerated, study):
    for name in (tables.README, tables.CSV):
        committed = LAB / study / name
        assert committed.is_file(), f"{committed} missing: run python -m lab.tables {study}"
        assert (regenerated / study / name).read_bytes() == committed.read_bytes(), (
            f"lab/{study}/{name} differs from what its archive gives: run python -m lab.tables {study}"
        )


def test_index_regenerates_and_has_a_row_per_study_folder(regenerated):
    index = (LAB / tables.README).read_text()
    assert (regenerated / tables.README).read_text() == index, "lab/README.md is stale: run python -m lab.tables"
    rows = [line for line in index.splitlines() if line.startswith("| [")]
    linked = [re.match(r"\| \[(\w+)\]\(\1/README\.md\)", row).group(1) for row in rows]
    folders = sorted(p.parent.name for p in LAB.glob(f"*/{NAME}"))
    assert sorted(linked) == folders == sorted(s.name for s in STUDIES)
    for row in rows:
        archive = re.search(r"\[(lab/\w+/runs\.tar\.xz)\]", row).group(1)
        assert (LAB.parent / archive).is_file(), archive


def test_study_readmes_are_short():
    for study in STUDIES:
        size = (LAB / study.name / tables.README).stat().st_size
        assert size < 5.5 * 1024, f"lab/{study.name}/README.md is {size} bytes: the long story belongs in the archive"


def test_archives_are_small_and_written_deterministically(tmp_path):
    for path in LAB.glob(f"*/{NAME}"):
        assert path.stat().st_size < MAX_MB * 2**20, f"{path} is over {MAX_MB} MB"
    archive = Archive.read(LAB / "vit_options" / NAME)
    archive.write(tmp_path / "a.tar.xz")
    archive.write(tmp_path / "b.tar.xz")
    assert (tmp_path / "a.tar.xz").read_bytes() == (tmp_path / "b.tar.xz").read_bytes()
    assert Archive.read(tmp_path / "a.tar.xz").members == archive.members


def test_command_is_the_runs_params_against_the_reference():
    reference = {
        "families": {"cnn": {"lr": 0.001, "prune_importance": "l2"}},
        "train": {"lr": "auto", "epochs": 5},
        "prune": {"importance": "auto", "ratio": 0.25, "sweep": []},
        "sparsify": {"models": {}, "epochs": 8},
        "report": {"steps": {"int8": ["a", "b"]}},
    }
    params = {
        "train": {"lr": 0.001, "epochs": 5},  # what `auto` gives a CNN: no flag
        "prune": {"importance": "l2", "ratio": 0.21, "sweep": [10, 20]},
        "sparsify": {"models": {"s24": {"pattern": "2:4"}}, "epochs": 8},
        "report": {"steps": {"int8": ["a", "b"], "extra": ["c", "d"]}},
    }
    archive = Archive({"r/params.yaml": yaml.safe_dump(params, sort_keys=False).encode(), "r/experiment.json": b"{}"})
    assert Run(archive, "r").command(reference, "prune") == (
        "dvc exp run prune -S prune.ratio=0.21 -S 'prune.sweep=[10,20]' "
        "-S '+sparsify.models.s24={pattern: \"2:4\"}' -S '+report.steps.extra=[c,d]'"
    )
