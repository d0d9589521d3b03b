"""What params.yaml may hold: every section, its keys and their types, in one table.

`check(params, sections)` runs before a stage does any work (params.load calls it with the sections
the stage reads: its `params:` in dvc.yaml). A key that is not in the table (`train.epoch` next to
`train.epochs` would otherwise be ignored without a word), a key or section that is missing, or a
value of the wrong type stops the stage with one line that names the key and what is allowed.

The table says what a value *is*; rules between keys stay with the code that uses them (the stage's
`check`, lib/recipes.py for quantize.recipes, lib/sparsity.py for sparsify.models). The `prune` knobs
carry their ranges here too, so that a new one is declared in one place (and listed in dvc.yaml).

How to read a rule: `int`, `float` (any number), `bool`, `str`, `dict` (a mapping), `list[int]`
(a list of integers), `X | None` (null allowed), a set of allowed values, or a `Range`.
"""

import difflib
import types

from stages.lib.errors import ParamError


class Range:
    """A number in an interval, `Range(0, 1, hi_open=True)` = [0, 1); `integer=True`: an integer >= lo
    (no upper end); `null=True`: null allowed too. true/false is never a number."""

    def __init__(self, lo, hi=None, *, integer=False, lo_open=False, hi_open=False, null=False):
        self.lo, self.hi, self.integer, self.lo_open, self.hi_open, self.null = lo, hi, integer, lo_open, hi_open, null

    def holds(self, value):
        if value is None or isinstance(value, bool):
            return value is None and self.null
        if not isinstance(value, int if self.integer else (int, float)):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def __str__(self):
        if self.integer:
            text = f"an integer >= {self.lo}"
        else:
            text = f"a number in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        return f"{text} or null" if self.null else text


SCHEMA = {
    "base": {
        "seed": int,
        "image_size": int,
        "threads": int,
        "device": {"cpu", "cuda"},
        "channels_last": bool,
    },
    "prepare": {
        "dataset": str,  # the adapter names are checked by the prepare stage (datasets.DATASETS)
        "root": str | None,
        "categories": list[str] | None,
        "good_class": str | None,
        "on_bad_image": {"skip", "error"},
        "defect_threshold": float,
        "val_fraction": float,
        "test_fraction": float,
        "max_images": int,
        "max_side": int | None,
        "group_by": str | None,  # null | column:<name> | regex:<pattern>, checked by prepare (lib/data/groups.parse)
        "resize": {"squash", "pad", "crop"},  # lib/data/images.RESIZE_MODES
    },
    "train": {"epochs": int, "batch_size": int, "lr": float | str, "weight_decay": float, "processes": int},  # lr: auto
    "families": {"cnn": dict, "transformer": dict},  # each: lib/families.py
    "finetune_teacher": {"model": str, "weights": str},
    "train_student": {"model": str, "weights": str},
    "distill": {"temperature": float, "alpha": float},
    # Every prune knob, with what it may be: a new one is added here and to dvc.yaml's prune and prune_sweep
    # params (tests/test_dvc_deps.py checks that); lib/pruning.check adds the rules between knobs.
    "prune": {
        "ratio": Range(0, 1, hi_open=True),  # prune_sweep's items are checked against the same rule
        "importance": str,  # the criteria (or auto) are checked by lib/pruning.py (IMPORTANCE)
        "scope": {"uniform", "global", "greedy"},
        "max_ratio": Range(0, 1, lo_open=True, hi_open=True),
        "iterative_steps": Range(1, integer=True),
        "epochs": Range(1, integer=True),  # and >= iterative_steps (lib/pruning.check)
        "lr_scale": Range(0, 10, lo_open=True),
        "source": {"student_kd", "teacher"},
        "round_to": Range(1, integer=True),
        "taylor_batches": Range(1, integer=True),
        "greedy_step": Range(0, 0.5, lo_open=True),
        "greedy_images": Range(8, integer=True),
        "seed": Range(0, integer=True, null=True),
        "sweep": list[int],
    },
    "sparsify": {"models": dict, "epochs": int, "lr_scale": float},  # each model: lib/sparsity.py
    "compare": {"models": list[str], "recipes": list[str], "openvino": list[str]},
    "quantize": {
        "max_drop_pt": float,
        "sensitivity_images": int,
        "openvino": list[dict],
        "recipes": dict,
    },  # each recipe: lib/recipes.py
    "evaluate": {
        "target_recall": float,
        "threshold_rule": str,  # checked against lib/thresholds.py RULES by the evaluate stage
        "fixed_fpr_pct": list[float],
        "bootstrap": int,
    },
    "benchmark": {
        "rounds": int,
        "warmup_rounds": int,
        "seconds": float,
        "min_calls": int,
        "warmup": int,
        "batch_size": int,
        "core_hour_usd": float,
        "gpu_rounds": int,
        "gpu_batches": list[int],
        "gpu_dtypes": list[str],
        "gpu_compile": list[str],
    },
    "select": {
        "min_recall": float | None,
        "max_fpr": float | None,
        "max_latency_ms": float | None,
        "max_size_mb": float | None,
        "max_peak_rss_mb": float | None,
        "objective": str,  # checked against lib/selection.py OBJECTIVES
        "screen_images": int,
    },
    "report": {"reference": str, "quality": str, "steps": dict},
}


def check(params, sections):
    """Check `sections` of `params` against SCHEMA; the first problem raises ParamError."""
    if not isinstance(params, dict):
        raise ParamError(f"params.yaml holds {type(params).__name__}; expected a mapping of sections {sorted(SCHEMA)}")
    for section in params:  # a stray section (a typo in `dvc exp run -S`) is read by no stage
        if section not in SCHEMA:
            raise ParamError(
                f"params.yaml section {section!r} is not a known section{suggest(section, SCHEMA)}; "
                f"expected {sorted(SCHEMA)}"
            )
    for section in sections:
        if section not in params:
            raise ParamError(
                f"params.yaml has no section {section!r}{suggest(section, params)}; this stage reads {list(sections)}"
            )
        check_section(section, params[section])
    return params


def check_section(section, values):
    """One section's keys and values against SCHEMA[section]; the first problem raises ParamError."""
    rules = SCHEMA[section]
    if not isinstance(values, dict):
        raise ParamError(f"{section}={values!r} is not allowed; expected a mapping with keys {sorted(rules)}")
    check_keys(section, values, rules)
    for key, rule in rules.items():
        if not fits(values[key], rule):
            raise ParamError(f"{section}.{key}={values[key]!r} is not allowed; expected {describe(rule)}")
    return values


def check_keys(where, values, allowed, required=None):
    """Unknown keys (with the closest known one) and missing ones; `required` defaults to all of `allowed`."""
    for key in values:
        if key not in allowed:
            raise ParamError(
                f"{where}.{key} is not a known key{suggest(key, allowed, f'{where}.')}; {where} takes {sorted(allowed)}"
            )
    for key in sorted(allowed if required is None else required):
        if key not in values:
            raise ParamError(f"{where}.{key} is missing; {where} needs {sorted(allowed)}")


def suggest(key, known, prefix=""):
    """' (did you mean 'train.epochs'?)' for the closest known name, or nothing when none is close."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def fits(value, rule):
    """Does `value` follow `rule`? true/false is never a number, and a number is never true/false."""
    if isinstance(rule, set):
        return type(value) in {type(a) for a in rule} and value in rule
    if isinstance(rule, Range):
        return rule.holds(value)
    if rule is type(None):  # the None in `X | None`
        return value is None
    if isinstance(rule, types.UnionType):  # X | None
        return any(fits(value, r) for r in rule.__args__)
    if isinstance(rule, types.GenericAlias):  # list[int]
        return isinstance(value, list) and all(fits(v, rule.__args__[0]) for v in value)
    if isinstance(value, bool):
        return rule is bool
    if rule is float:
        return isinstance(value, (int, float))
    return isinstance(value, rule)


def describe(rule):
    """`rule` in words, for messages."""
    if isinstance(rule, set):
        return f"one of {sorted(rule, key=str)}"
    if isinstance(rule, Range):
        return str(rule)
    if rule is type(None):  # the None in `X | None`
        return "null"
    if isinstance(rule, types.UnionType):
        return " or ".join(describe(r) for r in rule.__args__)
    if isinstance(rule, types.GenericAlias):
        return f"a list of {PLURALS[rule.__args__[0]]}"
    return NAMES[rule]


NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
PLURALS = {int: "integers", float: "numbers", str: "strings", dict: "mappings"}
