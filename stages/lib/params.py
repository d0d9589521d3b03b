"""Read params.yaml, check knobs before any work starts, and set up a stage run.

Every stage calls `load(*sections)` first, with the sections it reads (its `params:` in dvc.yaml):
an unknown, missing or mistyped key (lib/schema.py) or a bad value stops the stage with a
`ParamError` that names the key, the value and what is allowed, before any data is read or any
output is touched.
"""

import logging
import random
import re
import sys

import numpy as np
import yaml

from stages.lib import schema
from stages.lib.errors import ParamError

log = logging.getLogger(__name__)


class Loader(yaml.SafeLoader):
    """YAML 1.2 numbers, as DVC writes them (`dvc exp run -S` rewrites params.yaml in YAML 1.2): `3e-05` is a float
    (PyYAML's own 1.1 rules want a dot in the mantissa and read a string), and `2:4` is a string (1.1 reads the
    base-60 integer 124; DVC writes sparsify's `pattern: '2:4'` without the quotes)."""


NUMBERS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
Loader.yaml_implicit_resolvers = {
    first: [(tag, re.compile(r"^(?![^:]*:)" + rx.pattern[1:], rx.flags) if tag in NUMBERS else rx) for tag, rx in rules]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def load(*sections, path="params.yaml"):
    """params.yaml as a dict, with `sections` checked against lib/schema.py."""
    try:
        with open(path) as f:
            params = yaml.load(f, Loader=Loader)  # a SafeLoader
    except FileNotFoundError as e:
        raise ParamError(f"{path} not found; stages run from the repository root, where params.yaml lives") from e
    except yaml.YAMLError as e:
        raise ParamError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from e
    return schema.check(params, sections)


def with_defaults(key, recipe, defaults, kind):
    """A recipe of `kind` with its defaults filled in; an option the kind does not take is refused by name."""
    allowed = {"kind", *defaults}
    unknown = sorted(set(recipe) - allowed)
    if unknown:
        raise ParamError(
            f"{key}.{unknown[0]} is not a {kind} option{schema.suggest(unknown[0], allowed)}; "
            f"expected one of {sorted(allowed)}"
        )
    return {**defaults, **recipe}


def check_choice(key, value, allowed):
    if value not in allowed:
        raise ParamError(f"{key}={value!r} is not allowed; expected one of {sorted(allowed)}")
    return value


def check_range(key, value, lo, hi, lo_inclusive=True, hi_inclusive=True):
    """Check lo <= value <= hi (inclusive or open on either end)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value >= lo if lo_inclusive else value > lo) and (value <= hi if hi_inclusive else value < hi)
    if not ok:
        interval = f"{'[' if lo_inclusive else '('}{lo}, {hi}{']' if hi_inclusive else ')'}"
        raise ParamError(f"{key}={value!r} is out of range; expected a number in {interval}")
    return value


def check_int(key, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ParamError(f"{key}={value!r} is not allowed; expected an integer >= {minimum}")
    return value


def check_base(base):
    check_int("base.seed", base["seed"], 0)
    size = check_int("base.image_size", base["image_size"], 32)
    if size % 32:
        raise ParamError(f"base.image_size={size} is not allowed; expected a multiple of 32 (the network stride)")
    check_int("base.threads", base["threads"], 1)
    check_choice("base.channels_last", base["channels_last"], {True, False})
    check_choice("base.device", base["device"], {"cpu", "cuda"})
    if base["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ParamError("base.device='cuda' but torch sees no CUDA device; expected 'cpu' on this machine")
    return base


def setup(base):
    """Logging, threads and seeds: the same start for every stage.

    torch's threads and seed are set only where the stage has loaded torch by now (its modules import it): a stage
    that runs ONNX Runtime or OpenVINO alone never loads it (~2 s a process; its peak memory is the runtime's).
    A stage that loads torch later sets what it needs there (lib/runtime's TorchRunner sets its threads).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(base["threads"])
    seed_everything(base["seed"])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
