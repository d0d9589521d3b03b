"""Copy finished DVC experiments out of their refs into a folder of this repo, so their results are committed.

    python reports/collect.py reports/prune_options prune-l2 prune-taylor ...
    python reports/collect.py reports/precision_menu exp-menu     # a branch committed after its `dvc repro`
    python reports/collect.py --changed-only reports/vit_options vit-lr0.0001 ...   # `dvc exp run <stage>` runs

`dvc exp run` keeps each experiment as a git ref that is not pushed with the branch. For every name this writes
<folder>/<name>/ with what the experiment's own run produced, byte for byte: params.yaml, dvc.lock (the exact
inputs and outputs), REPORT.md, the metrics JSON files and the report's tables (CSV) and PNG plots, plus experiment.json naming
the experiment commit and the commit it was run on. Nothing is recomputed or edited. An experiment that ran
only some stages (`dvc exp run finetune_teacher`) still carries every other stage's files from the commit it
was run on; --changed-only keeps params.yaml, dvc.lock and only the files the experiment changed.
"""

import argparse
import json
import subprocess
from pathlib import Path

KEEP_DIRS = ("metrics/", "plots/report/")
KEEP_FILES = ("params.yaml", "dvc.lock", "REPORT.md")


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, check=True).stdout


def exp_ref(name):
    """The experiment's ref; a name that is no experiment may be any git revision (a branch run by `dvc repro`)."""
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps").decode().split()
    found = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    if len(found) == 1:
        return found[0]
    if not found and subprocess.run(["git", "rev-parse", "-q", "--verify", f"{name}^{{commit}}"],
                                    capture_output=True).returncode == 0:  # fmt: skip
        return name
    raise SystemExit(f"experiment {name!r}: expected one ref under refs/exps or a git revision, found {len(found)}")


def collect(name, dest, changed_only=False):
    ref = exp_ref(name)
    commit = git("rev-parse", ref).decode().strip()
    files = git("ls-tree", "-r", "--name-only", commit).decode().splitlines()
    wanted = [
        f for f in files if f in KEEP_FILES or (f.startswith(KEEP_DIRS) and f.endswith((".json", ".png", ".csv")))
    ]
    if changed_only:
        changed = set(git("diff", "--name-only", f"{commit}^", commit).decode().splitlines())
        wanted = [f for f in wanted if f in changed or f in ("params.yaml", "dvc.lock")]
    for f in wanted:
        out = dest / name / f
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(git("show", f"{commit}:{f}"))
    base = git("rev-parse", f"{commit}^").decode().strip()
    info = {
        "name": name,
        "experiment_commit": commit,
        "baseline_commit": base,
        "files": len(wanted),
        "changed_only": changed_only,
    }
    (dest / name / "experiment.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"{name}: {len(wanted)} files from {commit[:7]} (run on {base[:7]})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("names", nargs="+", help="experiment names (dvc exp show)")
    ap.add_argument("--changed-only", action="store_true", help="only the files the experiment changed")
    args = ap.parse_args()
    for name in args.names:
        collect(name, args.folder, args.changed_only)


if __name__ == "__main__":
    main()
