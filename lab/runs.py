"""One run snapshot inside a study archive, the `dvc exp run` command that reproduces it, and number formats.

The command is the run's params.yaml against the archive's reference params.yaml (97f4a89's for the studies
moved out of reports/): every value that differs becomes `-S key=value`, every key the reference lacks
`-S '+key=value'`. Keys the run lacks were added to params.yaml after it ran; their defaults keep the old
behaviour, so they are left out. Values that `auto` resolves to on a CNN-only run (train.lr, prune.importance) and
sparsify knobs of a run without sparse models are left out too: they change nothing.
"""

import csv
import io
import json
import re

import yaml

VIT = "vit_"  # timm names of the transformer family used here (vit_tiny_patch16_224)
MARK = {"worse": " ▼", "better": " ▲"}  # the 95 % interval excludes no change


class Run:
    def __init__(self, archive, name):
        self.archive, self.name = archive, name
        self.params = archive.yaml(f"{name}/params.yaml")

    def has(self, path):
        return f"{self.name}/{path}" in self.archive

    def json(self, path):
        return self.archive.json(f"{self.name}/{path}")

    def csv(self, path):
        return list(csv.DictReader(io.StringIO(self.archive.text(f"{self.name}/{path}"))))

    def prune(self):
        """{model: metrics} of the run's pruned (or sparsified) models, from metrics/prune/*.json."""
        names = self.archive.glob(f"{self.name}/metrics/prune/", ".json")
        return {n.rsplit("/", 1)[1].removesuffix(".json"): self.archive.json(n) for n in names}

    def model_md5(self, model):
        """md5 of a pruned model in the run's dvc.lock: equal in two runs = the same model (prune reused).

        Read from the lock's text (its prune stage's model.pt entry): parsing the whole lock as YAML is slow."""
        stage = "prune" if model == "student_pruned" else f"prune_sweep@{model.rsplit('_r', 1)[-1]}"
        lock = self.archive.text(f"{self.name}/dvc.lock")
        block = re.search(rf"^  {re.escape(stage)}:\n(.*?)(?=^  \S|\Z)", lock, re.M | re.S)
        parts = block.group(1).split("\n    outs:\n", 1) if block else []
        outs = parts[1] if len(parts) == 2 else ""  # not the deps: the parent's model.pt is one of them
        found = re.search(r"path: \S*/model\.pt\n(?:\s+\w+: .*\n)*?\s+md5: (\w+)", outs)
        return found.group(1) if found else None

    def seed(self):
        """The prune fine-tunes' seed: prune.seed, or base.seed when that is null (or the run predates the key)."""
        seed = self.params["prune"].get("seed")
        return self.params["base"]["seed"] if seed is None else seed

    def changes(self, reference):
        """{key: (value, added)} of what this run's params set differently from `reference`."""
        out = {}
        diff(self.params, reference, "", out)
        models = [self.params.get(s, {}).get("model", "") for s in ("finetune_teacher", "train_student")]
        if not any(m.startswith(VIT) for m in models):  # `auto` picks the CNN family's value for these
            cnn = reference.get("families", {}).get("cnn", {})
            for key, family_key in (("train.lr", "lr"), ("prune.importance", "prune_importance")):
                if key in out and out[key][0] == cnn.get(family_key):
                    del out[key]
        if not self.params.get("sparsify", {}).get("models"):
            out = {k: v for k, v in out.items() if not k.startswith("sparsify.")}
        return out

    def command(self, reference, stage=None):
        """The `dvc exp run` line that reproduces this run on the reference params."""
        sets = [set_arg(k, v, added) for k, (v, added) in self.changes(reference).items()]
        return " ".join(["dvc exp run", *([stage] if stage else []), *sets])


def diff(run, ref, prefix, out):
    for key, value in run.items():
        path = f"{prefix}{key}"
        if not isinstance(ref, dict) or key not in ref:
            out[path] = (value, True)
        elif isinstance(value, dict) and isinstance(ref[key], dict):
            diff(value, ref[key], f"{path}.", out)
        elif value != ref[key]:
            out[path] = (value, False)


def flow(value):
    """A params value as DVC's `-S` reads it: YAML flow style, lists without spaces ([a,b])."""
    if isinstance(value, list):
        return "[" + ",".join(flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str) and (yaml.safe_load(value) != value or any(c in value for c in ":,[]{}#")):
        return f'"{value}"'  # e.g. "2:4", which YAML would read as a number in base 60
    return str(value)


def set_arg(key, value, added=False):
    arg = f"{'+' if added else ''}{key}={flow(value)}"
    return f"-S '{arg}'" if any(c in arg for c in "[]{} :'\"*?$") else f"-S {arg}"


def num(value, digits):
    """A number rounded for the tables and the CSV (None stays empty)."""
    return None if value is None else round(float(value), digits)


def interval(row, key, spec="+.1f", unit=""):
    """'-2.0 [-4.3, +0.1] ▼' from row[key], row[key_lo], row[key_hi], row[key_verdict]; '—' when absent."""
    if row.get(key) is None:
        return "—"
    lo, hi = format(row[f"{key}_lo"], spec), format(row[f"{key}_hi"], spec)
    return f"{format(row[key], spec)}{unit} [{lo}, {hi}]" + MARK.get(row.get(f"{key}_verdict"), "")


def delta(key, value, bounds, verdict, digits=1):
    """CSV fields key, key_lo, key_hi, key_verdict of a paired delta (bounds: [lo, hi] or its JSON text)."""
    lo, hi = json.loads(bounds) if isinstance(bounds, str) else bounds
    return {
        key: num(value, digits),
        f"{key}_lo": num(lo, digits),
        f"{key}_hi": num(hi, digits),
        f"{key}_verdict": verdict,
    }


def fmt(value, spec="", none="—"):
    return none if value is None or value == "" else format(value, spec)
