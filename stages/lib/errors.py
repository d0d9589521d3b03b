"""User errors: what a user can fix (a params value, a missing or damaged input) ends a stage in one line.

A stage's `if __name__ == "__main__":` calls `run(main, "<stage>")`. A `UserError` raised anywhere
below it is printed as `<stage>: <message>` on stderr and the process exits with status 2, without a
traceback: the message already says what is wrong and how to fix it. Anything else is a bug and keeps
its traceback.

Exit status, the same for every stage and for `screen` (docs/knobs.md): 0 done; 2 a user error (a params
value, an input, a path), raised before the expensive work; 1 an unexpected failure (a bug: Python's own
status for an uncaught exception, with its traceback). `screen` adds 3: finished, but skipped unreadable files.
"""

import re
import sys
from pathlib import Path

EXIT_USER_ERROR = 2  # 0: done; 1: a bug (Python's status for an uncaught exception)
EXIT_SKIPPED = 3  # screen only: finished, but skipped unreadable files


class UserError(ValueError):
    """Something the user can fix; the message names it and the fix."""


class ParamError(UserError):
    """A params.yaml value is outside what the stage accepts."""


class InputError(UserError):
    """An input file or folder is missing, damaged or not in the expected layout."""


class MissingInputError(InputError, FileNotFoundError):
    """An input that does not exist (still a FileNotFoundError for callers that catch that)."""


def run(main, stage):
    """Call `main()`; a UserError becomes one line on stderr and exit status 2."""
    try:
        main()
    except UserError as e:
        message = " ".join(str(e).split())  # one line, whatever the message holds
        print(f"{stage}: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def made_by(path, dvc_yaml="dvc.yaml"):
    """The dvc.yaml stage whose outs hold `path`, or None.

    Read from dvc.yaml so no path is written twice. Outs of `foreach`/`matrix` stages are templates
    (artifacts/${key}/model.pt); a literal out wins over a template, and of two templates the one
    with more literal text (artifacts/student_pruned_r${item}) wins over a looser one.
    """
    import yaml  # here, not at the top: benchmark's timing processes import runtime -> errors, and
    # their peak memory should be the runtime's alone

    try:
        spec = yaml.safe_load(Path(dvc_yaml).read_text())
    except (OSError, yaml.YAMLError):
        return None
    target = Path(path)
    if target.is_absolute() and target.is_relative_to(Path.cwd()):
        target = target.relative_to(Path.cwd())
    target = target.as_posix()
    best, best_score = None, -1
    for name, stage in (spec or {}).get("stages", {}).items():
        for out in stage.get("do", stage).get("outs", []):
            out = next(iter(out)) if isinstance(out, dict) else out
            literal = re.sub(r"\$\{[^}]*\}", "", out)
            pattern = re.sub(r"\\\$\\\{[^}]*\\\}", "[^/]+", re.escape(out))
            if re.fullmatch(pattern + "(/.*)?", target):
                score = 10**6 if literal == out else len(literal)
                if score > best_score:
                    best, best_score = name, score
    return best


def reason(e):
    """A short reason for a failed read: the exception's type and the whole first line of its message."""
    if isinstance(e, FileNotFoundError):
        return "not found"
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0].strip()}" if lines else type(e).__name__


def damaged(path, why):
    """InputError (MissingInputError if absent) for an input file, naming the stage that makes it."""
    stage = made_by(path)
    fix = f"it is made by stage '{stage}': run `dvc repro {stage}`" if stage else "check the path"
    cls = MissingInputError if not Path(path).exists() else InputError
    return cls(f"{path} is missing or damaged ({why}); {fix}")
