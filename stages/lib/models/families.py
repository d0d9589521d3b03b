"""Model families and the knobs that work differently for them (params `families`).

A knob set to `auto` takes its family's value: `train.lr` (the fine-tune learning rate) and
`prune.importance`. The INT8 recipe's `op_types: auto` follows the family too (lib/recipes.py:
transformers keep Softmax, LayerNorm, GELU and residual adds in float). A number or a name given by
the user is used as it is, for every family.
"""

from stages.lib import params

FAMILIES = ("cnn", "transformer")
TRANSFORMER_ARCHS = (
    "vit",
    "deit",
    "swin",
    "beit",
    "eva",
    "levit",
    "convit",
    "cait",
    "xcit",
    "mobilevit",
    "efficientformer",
)  # timm name prefixes
KEYS = {"lr": float, "prune_importance": str}


def family(arch):
    """'transformer' for ViT-like and hybrid (MobileViT) architectures, 'cnn' for the rest."""
    return "transformer" if is_transformer(arch) else "cnn"


def is_transformer(arch):
    return str(arch).lower().startswith(TRANSFORMER_ARCHS)


def check(fams):
    """Stop on a bad `families` section before any work, naming the key, the value and what is allowed
    (the importance names are checked by lib/pruning.py, which knows them)."""
    from stages.lib import schema

    schema.check_keys("families", fams, set(FAMILIES))
    for name in FAMILIES:
        where = f"families.{name}"
        if not isinstance(fams[name], dict):
            raise params.ParamError(
                f"{where}={fams[name]!r} is not allowed; expected a mapping with keys {sorted(KEYS)}"
            )
        schema.check_keys(where, fams[name], set(KEYS))
        params.check_range(f"{where}.lr", fams[name]["lr"], 0, 1, lo_inclusive=False)
    return fams


def check_auto(key, value, check_value):
    """`auto`, or a number that `check_value(key, value)` accepts."""
    if value == "auto":
        return value
    if isinstance(value, str):
        raise params.ParamError(f"{key}={value!r} is not allowed; expected 'auto' (the model family's) or a number")
    return check_value(key, value)


def lr(train, fams, arch):
    """train.lr, or the family's with train.lr = auto."""
    return fams[family(arch)]["lr"] if train["lr"] == "auto" else train["lr"]


def importance(prune, fams, arch):
    """prune.importance, or the family's with prune.importance = auto."""
    return fams[family(arch)]["prune_importance"] if prune["importance"] == "auto" else prune["importance"]
