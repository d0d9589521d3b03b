"""check_params: the whole params.yaml checked before any other stage runs, so a mistake costs nothing.

    python -m stages.check_params dvc.yaml artifacts/params_checked.txt

Every stage in dvc.yaml depends on this stage's output, so `dvc repro` and `dvc exp run` run it first and
stop at its one-line error before DVC removes any other stage's outputs. It runs the stages' own checks
(each stage still runs them itself, for direct runs) on every section, and checks the names that tie
sections together: `compare.models` (a model some stage makes: the training stages' artifacts/<model>/model.pt
in dvc.yaml, student_pruned_r<pct> for each prune.sweep ratio, each sparsify.models entry),
`compare.recipes` (entries of quantize.recipes), `report.reference` (a compared variant) and `report.steps`
(variants some model and recipe would make; a step whose variants are not compared is left out by the report,
as before).

The output holds the same bytes whenever params are valid, so a change to one knob reruns only the stages
that read it. Not checked here: what needs the data (select.max_fpr on a multi-class set; the training split's
counts per class, which prepare checks) or a model (a pruning criterion the architecture cannot use).
"""

import argparse
import re

import yaml

from stages.lib import errors, params, schema
from stages.lib.outputs import write_text

PASSED = "params.yaml passed python -m stages.check_params\n"  # never varies: see the module docstring
MODEL_OUT = re.compile(r"artifacts/([^/]+)/model\.pt")


def models_made(spec, p):
    """Names of the models dvc.yaml's stages write as artifacts/<name>/model.pt, `foreach` resolved from `p`."""
    made = set()
    for stage in spec.get("stages", {}).values():
        body = stage.get("do", stage)
        items = foreach_items(stage.get("foreach"), p)
        for out in body.get("outs", []):
            path = next(iter(out)) if isinstance(out, dict) else out
            match = MODEL_OUT.fullmatch(path)
            if match:
                names = [match[1].replace("${item}", str(i)).replace("${key}", str(i)) for i in items]
                made.update(n for n in names if "${" not in n)
    return made


def foreach_items(expression, p):
    """The items a `foreach: ${a.b}` runs over (a list's items, a mapping's keys); [None] for a plain stage."""
    if expression is None:
        return [None]
    value = p
    for part in str(expression).removeprefix("${").removesuffix("}").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return list(value) if isinstance(value, (list, dict)) else []


def check_stages(p):
    """Each stage's own check on every section it reads. Imported here, after the quick checks: torch, timm and
    torchao take seconds to load, and most mistakes are caught before that."""
    from stages import prepare

    prepare.check(p)
    from stages import benchmark, evaluate, prune, quantize, sparsify
    from stages.lib import metrics, models
    from stages.lib.deploy import selection

    for section in ("finetune_teacher", "train_student"):
        models.check_spec(section, p[section]["model"], p[section]["weights"])
    prune.check(p)  # with base, train, families and distill
    for pct in p["prune"]["sweep"]:
        if not 0 <= pct < 100:  # as prune_sweep's own check
            raise params.ParamError(f"prune.sweep item {pct!r} is out of range; expected percent in [0, 100)")
    for name in p["sparsify"]["models"] or {}:
        sparsify.check(p, name)
    for name in p["quantize"]["recipes"]:
        quantize.check(p, name, runs=name in p["compare"]["recipes"])
    evaluate.check(p)
    benchmark.check(p)
    selection.check(p["select"], "binary")  # select.max_fpr on a multi-class set: the select stage, once it knows
    ev = p["evaluate"]
    curves = [
        n for n in metrics.binary_ci_names(ev["target_recall"], ev["fixed_fpr_pct"]) if metrics.parse_curve_name(n)
    ]
    params.check_choice("report.quality", p["report"]["quality"], {"auroc", *curves})  # as the report stage


def unknown(key, name, known, rest):
    """`<key> has '<name>' (did you mean ...?), which <rest>`: a name that ties sections together and is not known."""
    return params.ParamError(f"{key} has {name!r}{schema.suggest(name, known)}, which {rest}")


def check_names(p, made):
    """compare.*, report.* against the models some stage makes and the recipes quantize.recipes has."""
    compare, menu = p["compare"], p["quantize"]["recipes"]
    for key, names, known, what in (
        ("compare.models", compare["models"], made, "made by a stage (dvc.yaml, prune.sweep, sparsify.models)"),
        ("compare.recipes", compare["recipes"], menu, "in quantize.recipes"),
    ):
        if not names:
            raise params.ParamError(f"{key} is empty; expected at least one of {sorted(known)}")
        for name in names:
            if name not in known:
                raise unknown(key, name, known, f"is not {what}; expected some of {sorted(known)}")
    check_openvino(compare, p["quantize"])
    compared = [f"{m}_{r}" for m in compare["models"] for r in compare["recipes"]]
    ref = p["report"]["reference"]
    if ref not in compared:
        raise params.ParamError(
            f"report.reference={ref!r} is not a compared variant{schema.suggest(ref, compared)}; "
            f"expected one of compare.models x compare.recipes: {compared}"
        )
    possible = {f"{m}_{r}" for m in made for r in menu}
    for step, pair in p["report"]["steps"].items():
        key = f"report.steps.{step}"
        if not (isinstance(pair, list) and len(pair) == 2):
            raise params.ParamError(f"{key}={pair!r} is not allowed; expected [before_variant, after_variant]")
        for name in pair:
            if name not in possible:
                raise unknown(
                    key,
                    name,
                    possible,
                    f"is no <model>_<recipe> variant; expected a model of {sorted(made)} and a "
                    "recipe of quantize.recipes",
                )


def check_openvino(compare, quantize):
    """compare.openvino: recipes of kind openvino; quantize.openvino: the same recipes, each with its recipe's source
    (dvc.yaml's quantize_ov makes every item, evaluate_ov scores compare's); each source compared, so its file exists."""
    menu = quantize["recipes"]
    ov = sorted(n for n, r in menu.items() if isinstance(r, dict) and r.get("kind") == "openvino")
    for name in compare["openvino"]:
        if name not in ov:
            raise unknown(
                "compare.openvino", name, ov, f"is no kind openvino recipe of quantize.recipes; expected some of {ov}"
            )
    pairs = {}
    for i, pair in enumerate(quantize["openvino"]):
        if not isinstance(pair, dict) or set(pair) != {"recipe", "source"}:
            raise params.ParamError(
                f"quantize.openvino item {i} = {pair!r} is not allowed; expected {{recipe: <name>, source: <name>}}"
            )
        pairs[pair["recipe"]] = pair["source"]
    if sorted(pairs) != sorted(compare["openvino"]):
        raise params.ParamError(
            f"quantize.openvino makes {sorted(pairs)} but compare.openvino lists {sorted(compare['openvino'])}; "
            "expected the same recipes in both (empty both to compare no OpenVINO variant)"
        )
    for name in compare["openvino"]:
        source = menu[name].get("source", "ort_fp32")
        if pairs[name] != source:
            raise params.ParamError(
                f"quantize.openvino item {{recipe: {name}, source: {pairs[name]}}}: recipe {name!r} runs the file of "
                f"{source!r}; expected source: {source}"
            )
        if source not in compare["recipes"]:
            raise params.ParamError(
                f"compare.openvino has {name!r}, which runs the file of recipe {source!r}, but compare.recipes "
                f"{compare['recipes']} does not make it; add {source!r} there"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dvc_yaml", help="the pipeline, for the models its stages make")
    parser.add_argument("out", help="written only when every check passes; the same bytes every time")
    args = parser.parse_args()
    p = params.load(*schema.SCHEMA)  # every section: unknown, missing and mistyped keys
    with open(args.dvc_yaml) as f:  # not a dep: DVC refuses dvc.yaml as one; its stages' outs change rarely
        check_names(p, models_made(yaml.safe_load(f), p))
    check_stages(p)
    write_text(args.out, PASSED)


if __name__ == "__main__":
    errors.run(main, "check_params")
