"""A study's runs.tar.xz: every run snapshot of the study, read into memory and written deterministically.

An archive holds one folder per run (`<run>/params.yaml`, `dvc.lock`, `metrics/...`, `plots/...`, `REPORT.md` and
`experiment.json`, which names the experiment commit and the commit it ran on), `reference/params.yaml` (the
params.yaml the `dvc exp run` commands are written against, its commit in `reference/commit`) and whatever else
the study kept (its earlier long README.md, analysis scripts and their outputs).

Written deterministically: members sorted by name, mtime 0, uid/gid 0, no user or group names, mode 0644, so
packing the same files twice gives the same bytes.
"""

import io
import json
import lzma
import tarfile
from pathlib import Path

import yaml

NAME = "runs.tar.xz"
MAX_MB = 5  # each archive stays under this (tests/test_lab.py checks it): the repository is cloned whole


class Archive:
    """The members of one archive as {name: bytes}, with readers for the formats the tables need."""

    def __init__(self, members):
        self.members = dict(sorted(members.items()))

    @classmethod
    def read(cls, path):
        with tarfile.open(path, "r:xz") as tar:
            return cls({m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()})

    def write(self, path):
        """Write the archive to `path` (deterministic bytes for the same members)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in self.members.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
        Path(path).write_bytes(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))

    def __contains__(self, name):
        return name in self.members

    def text(self, name):
        return self.members[name].decode()

    def json(self, name):
        return json.loads(self.members[name])

    def yaml(self, name):
        return yaml.load(self.members[name], Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: 10x

    def glob(self, prefix, suffix=""):
        """Names under `prefix` ending in `suffix`, sorted."""
        return [n for n in self.members if n.startswith(prefix) and n.endswith(suffix)]

    def runs(self):
        """Names of the run folders (those with an experiment.json), sorted."""
        names = [n.removesuffix("/experiment.json") for n in self.members if n.count("/") == 1]
        return sorted(n for n in names if f"{n}/experiment.json" in self.members)


def pack_folder(folder):
    """{name: bytes} of every file under `folder`, names relative to it (to build or extend an archive)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
