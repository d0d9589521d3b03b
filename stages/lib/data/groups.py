"""Which images belong together (prepare.group_by), so that the split keeps each group whole.

Frames of one time sequence, views of one part, tiles of one board: near-identical images that a split by
image would spread over train and test. `prepare.group_by` names where each image's group comes from:

- null: every image is its own group (exact duplicates are still kept together by the split);
- `column:<name>`: a column of `manifest.csv` in `prepare.root`, which names each image by its path
  relative to the root in a column `file` (or `path`, `source`), as the adapters record it
  (e.g. `column:sequence_key` for BSData);
- `regex:<pattern>`: `re.search` over that relative path (e.g. `good/01_200828110711_560000_000_crop_2.jpg`);
  the first capture group is the key, or the whole match when the pattern has none.

Every image needs a group: an unknown column, a file missing from the manifest, or a path the pattern does
not match stops `prepare` before any image is decoded.
"""

import re
from pathlib import Path

import pandas as pd

from stages.lib.errors import InputError, MissingInputError, ParamError

KINDS = ("column", "regex")
FILE_COLUMNS = ("file", "path", "source")  # the manifest column naming each image, the first one present
MANIFEST = "manifest.csv"


def parse(group_by):
    """prepare.group_by -> None or (kind, argument); a bad value is a ParamError naming the allowed forms."""
    if group_by is None:
        return None
    kind, _, arg = group_by.partition(":") if isinstance(group_by, str) else ("", "", "")
    if kind not in KINDS or not arg:
        raise ParamError(
            f"prepare.group_by={group_by!r} is not allowed; expected null (one group per image), "
            "'column:<manifest.csv column>' or 'regex:<pattern over the path relative to prepare.root>'"
        )
    if kind == "regex":
        try:
            re.compile(arg)
        except re.error as e:
            raise ParamError(f"prepare.group_by={group_by!r}: not a regular expression ({e})") from e
    return kind, arg


def group_keys(sources, prep):
    """One group key (str) per source path (relative to prepare.root), or None when prepare.group_by is null."""
    spec = parse(prep.get("group_by"))
    if spec is None:
        return None
    kind, arg = spec
    sources = [str(s) for s in sources]
    if kind == "regex":
        return _by_regex(sources, arg, prep["group_by"])
    return _by_column(sources, arg, prep)


def _by_regex(sources, pattern, spec):
    rx = re.compile(pattern)
    keys = []
    for source in sources:
        m = rx.search(source)
        keys.append((m.group(1) if rx.groups else m.group(0)) if m else None)
    missed = [s for s, k in zip(sources, keys, strict=True) if not k]
    if len(missed) == len(sources):
        raise ParamError(
            f"prepare.group_by={spec!r} matches none of the {len(sources)} images (e.g. {sources[0]!r}); "
            "the pattern is searched in each path relative to prepare.root"
        )
    if missed:
        raise ParamError(
            f"prepare.group_by={spec!r} gives no group for {len(missed)} of {len(sources)} images, e.g. "
            f"{_some(missed)}; every image needs one (widen the pattern or make its group optional)"
        )
    return keys


def _by_column(sources, column, prep):
    if prep.get("root") is None:
        raise ParamError(
            f"prepare.group_by='column:{column}' reads {MANIFEST} in prepare.root, which is not set "
            f"(prepare.dataset={prep.get('dataset')!r}); use 'regex:<pattern>' or null"
        )
    path = Path(prep["root"]).expanduser() / MANIFEST
    if not path.is_file():
        raise MissingInputError(
            f"prepare.group_by='column:{column}' needs {path}: a CSV with a column naming each image by its path "
            f"relative to prepare.root ({' or '.join(FILE_COLUMNS)}) and the column {column!r}"
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path} cannot be read as CSV: {' '.join(str(e).split())}") from e
    file_col = next((c for c in FILE_COLUMNS if c in table.columns), None)
    if column not in table.columns:
        raise ParamError(
            f"prepare.group_by='column:{column}': {path} has no column {column!r}; its columns: {list(table.columns)}"
        )
    if file_col is None:
        raise InputError(
            f"{path} has no column naming the images ({' or '.join(FILE_COLUMNS)}: the path relative to "
            f"prepare.root); its columns: {list(table.columns)}"
        )
    table = table.assign(file=table[file_col].map(lambda f: Path(f).as_posix()))
    per_file = table.groupby("file")[column].unique()
    ambiguous = [f for f, keys in per_file.items() if len(keys) > 1]
    if ambiguous:
        raise InputError(f"{path}: {len(ambiguous)} images have more than one {column!r}, e.g. {_some(ambiguous)}")
    lookup = per_file.str[0].to_dict()
    keys = [lookup.get(s) for s in sources]
    missed = [s for s, k in zip(sources, keys, strict=True) if not k]
    if missed:
        raise InputError(
            f"{path} gives no {column!r} for {len(missed)} of {len(sources)} images, e.g. {_some(missed)}; "
            f"every image needs a row (its path relative to prepare.root in column {file_col!r}) with a value"
        )
    return keys


def _some(names, n=3):
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" (and {len(names) - n} more)" if len(names) > n else "")
