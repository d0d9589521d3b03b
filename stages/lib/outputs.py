"""Writing stage outputs so that a file under its final name is always complete, and reading them back.

Every output is written under its own name in a temporary folder beside it and renamed into place
(`os.replace`, atomic on one file system) once it is whole. A stage that fails or is killed half-way leaves the
old file or none, never half of one that a later stage would read as damaged. `read_json` names a
missing or damaged input and the stage that makes it.
"""

import json
import os
from contextlib import contextmanager
from pathlib import Path

from stages.lib import errors


@contextmanager
def atomic(path):
    """Yield a temporary path for `path`; it replaces `path` if the block succeeds, else it is removed.

    The temporary file has the final name (writers choose the format by the suffix, and torch.save
    names its zip archive after the file: a pid in the name would change model.pt's bytes) inside a
    hidden folder next to `path`, so it lands on the same file system.
    """
    path = Path(path)
    folder = path.with_name(f".{path.name}.tmp{os.getpid()}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / path.name
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the block failed
        folder.rmdir()


def write_text(path, text):
    with atomic(path) as tmp:
        tmp.write_text(text)


def write_json(path, data):
    """Small, flat JSON files that `dvc metrics` reads, and the stages' manifests."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path):
    """Another stage's JSON output; missing or not JSON -> InputError naming the file and that stage."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise errors.damaged(path, errors.reason(e)) from e
