"""Pack finished runs into a study's archive: DVC experiments, or branches committed after their `dvc repro`.

    python -m lab.collect prune_recovery exp-greedy-s3                 # a name from `dvc exp show`, or a git revision
    python -m lab.collect --changed-only vit_options vit-lr0.003       # a `dvc exp run <stage>` run of some stages
    python -m lab.collect datasets ds-elpv=3f2c1a9                     # NAME=REVISION: a committed run, named NAME
    python -m lab.tables prune_recovery && python -m lab.tables        # then its tables and lab/README.md

`dvc exp run` keeps each experiment as a git ref that is not pushed with the branch. For every name the archive
gains <name>/ with what that run produced, byte for byte: params.yaml, dvc.lock, REPORT.md, the metrics JSON and
the report's CSV and PNG plots, plus experiment.json naming the experiment commit and the commit it ran on. A run of
only some stages still carries every other stage's files from its base commit; --changed-only keeps params.yaml,
dvc.lock and only the files the experiment changed. A new study is added to lab/studies.py first (and a new run to
its `runs_only`, where it has one); a new archive starts with HEAD's params.yaml as the reference its commands are
written against.
"""

import argparse
import json
import logging
import subprocess

from lab.archive import MAX_MB, NAME, Archive
from lab.studies import BY_NAME
from lab.tables import LAB

KEEP_DIRS = ("metrics/", "plots/report/")
KEEP_FILES = ("params.yaml", "dvc.lock", "REPORT.md")
log = logging.getLogger("lab.collect")


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, check=True).stdout


def revision(name):
    """The experiment's ref; a name that is no experiment may be any git revision (a branch run by `dvc repro`)."""
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps").decode().split()
    found = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    if len(found) == 1:
        return found[0]
    exists = subprocess.run(["git", "rev-parse", "-q", "--verify", f"{name}^{{commit}}"], capture_output=True)
    if not found and exists.returncode == 0:
        return name
    raise SystemExit(
        f"{name!r}: expected one experiment under refs/exps (dvc exp show) or a git revision, found {len(found)}"
    )


def snapshot(spec, changed_only=False):
    """{archive member: bytes} of one finished run: `spec` is an experiment or revision, or NAME=REVISION."""
    name, _, rev = spec.partition("=")
    commit = git("rev-parse", revision(rev or name)).decode().strip()
    files = git("ls-tree", "-r", "--name-only", commit).decode().splitlines()
    wanted = [
        f for f in files if f in KEEP_FILES or (f.startswith(KEEP_DIRS) and f.endswith((".json", ".png", ".csv")))
    ]
    if changed_only:
        changed = set(git("diff", "--name-only", f"{commit}^", commit).decode().splitlines())
        wanted = [f for f in wanted if f in changed or f in ("params.yaml", "dvc.lock")]
    members = {f"{name}/{f}": git("show", f"{commit}:{f}") for f in wanted}
    base = git("rev-parse", f"{commit}^").decode().strip()
    info = {
        "name": name,
        **({"revision": rev} if rev else {}),
        "experiment_commit": commit,
        "baseline_commit": base,
        "files": len(wanted),
        "changed_only": changed_only,
    }
    members[f"{name}/experiment.json"] = (json.dumps(info, indent=2) + "\n").encode()
    log.info("%s: %d files from %s (run on %s)", name, len(wanted), commit[:7], base[:7])
    return members


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", help="a study of lab/studies.py")
    ap.add_argument(
        "names", nargs="+", help="experiment names (dvc exp show), git revisions, or NAME=REVISION to name a run"
    )
    ap.add_argument("--changed-only", action="store_true", help="only the files the experiment changed")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.study not in BY_NAME:
        ap.error(f"unknown study {args.study!r}: add it to lab/studies.py (known: {', '.join(BY_NAME)})")
    path = LAB / args.study / NAME
    if path.exists():
        members = Archive.read(path).members
    else:
        head = git("rev-parse", "HEAD")
        members = {"reference/params.yaml": git("show", "HEAD:params.yaml"), "reference/commit": head}
    for name in args.names:
        members.update(snapshot(name, args.changed_only))
    path.parent.mkdir(parents=True, exist_ok=True)
    Archive(members).write(path)
    size_mb = path.stat().st_size / 2**20
    log.info("%s: %d members, %.2f MB", path, len(members), size_mb)
    if size_mb > MAX_MB:
        raise SystemExit(f"{path} is {size_mb:.1f} MB, over {MAX_MB} MB: split the study or keep fewer plots per run")


if __name__ == "__main__":
    main()
