"""Honest deps: each stage in dvc.yaml lists its script and every stages.lib module it imports."""

import ast

import yaml

from stages.lib import schema


def module_file(name, root):
    """stages.lib.x.y -> stages/lib/x/y.py or stages/lib/x/y/__init__.py; None when it is not a module."""
    base = root / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def lib_imports(path, root, seen=None):
    """stages/lib files imported by `path`, followed transitively (also through another stage's script, e.g.
    prune_sweep -> prune; that script is then returned too). Importing stages.lib.pkg.mod also runs
    stages/lib/pkg/__init__.py, so a package's __init__ counts as imported with any of its modules."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stages"):
            for alias in node.names:  # `from stages.lib.pkg import mod` imports a module, else a name of pkg
                sub = f"{node.module}.{alias.name}"
                names.append(sub if module_file(sub, root) else node.module)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("stages.lib.")]
        for name in names:
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # stages.lib.pkg and stages.lib.pkg.mod both run when imported
                dep = module_file(".".join(parts[:i]), root)
                if dep is not None and dep not in seen and parts[:i] != ["stages", "lib"]:
                    seen.add(dep)
                    lib_imports(dep, root, seen)
    return seen


def test_every_stage_lists_what_it_imports(root):
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    lib = next(v["lib"] for v in spec["vars"] if "lib" in v)
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        deps = {d.replace("${lib}", lib) for d in body["deps"]}
        verb = name.removesuffix("_ov")  # quantize_ov, evaluate_ov: the same verbs over the OpenVINO variants
        script = f"stages/{verb}.py"
        assert script in deps, f"{name}: {script} missing from deps"
        assert f"python -m stages.{verb} " in body["cmd"], f"{name}: stage and module names differ"
        needed = {str(p.relative_to(root)) for p in lib_imports(root / script, root)}
        assert {n for n in needed if not n.startswith(lib)} <= deps, f"{name}: deps miss a stage it runs"
        assert needed <= deps, f"{name}: deps miss {sorted(needed - deps)}"
        unused = {d for d in deps if d.startswith(lib) or (d.startswith("stages/") and d != script)} - needed
        assert not unused, f"{name}: deps list modules it does not import {sorted(unused)}"


def resolved_stages(root):
    """The stages DVC generates from dvc.yaml + params.yaml (matrix expanded), by name."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {s.name: s for s in repo.index.stages}


def compared(root):
    """(model, recipe, variant name) for every variant params `compare` asks for."""
    compare = yaml.safe_load((root / "params.yaml").read_text())["compare"]
    return [(m, r, f"{m}_{r}") for m in compare["models"] for r in compare["recipes"]]


def test_every_variant_is_made_evaluated_and_plotted(root):
    """compare.models x compare.recipes -> one quantize and one evaluate stage per variant; the report overlays
    every variant's ROC and PR points in one file each, the two curve charts of `dvc plots show`."""
    stages = resolved_stages(root)
    plots = [
        next(iter(p)) if isinstance(p, dict) else p for p in yaml.safe_load((root / "dvc.yaml").read_text())["plots"]
    ]
    for model, recipe, v in compared(root):
        quantize, evaluate = stages[f"quantize@{model}-{recipe}"], stages[f"evaluate@{model}-{recipe}"]
        assert f"artifacts/variants/{v}" in [o.def_path for o in quantize.outs]
        assert f"artifacts/{model}/model.pt" in [d.def_path for d in quantize.deps]
        assert f"artifacts/variants/{v}" in [d.def_path for d in evaluate.deps]
        for kind in ("roc", "pr"):
            assert f"plots/evaluate/{kind}/{v}.csv" in [o.def_path for o in evaluate.outs]
    report = stages["report"]
    assert "plots/evaluate" in [d.def_path for d in report.deps]
    spec_plots = yaml.safe_load((root / "dvc.yaml").read_text())["plots"]
    curves = {
        next(iter(p.values()))["template"]
        for p in spec_plots
        if isinstance(p, dict) and "template" in next(iter(p.values()))
    }
    assert "curves" in curves and not any(n.startswith("plots/evaluate") for n in plots)  # one chart, not 1 per variant
    for kind in ("roc", "pr"):
        assert f"plots/report/{kind}.csv" in [o.def_path for o in report.outs]


def test_benchmark_depends_on_every_variant_it_measures(root):
    """One benchmark stage takes all variants (DVC unpacks `compare` into its command): each variant folder
    lies under a dependency of the benchmark, so a changed variant reruns it."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    bench = spec["stages"]["benchmark"]
    assert "${compare}" in bench["cmd"] and "${compare}" in spec["stages"]["report"]["cmd"]
    stages = resolved_stages(root)
    deps = [d.def_path for d in stages["benchmark"].deps]
    made = [o.def_path for name, s in stages.items() if name.startswith("quantize@") for o in s.outs]
    for _, _, v in compared(root):
        assert f"artifacts/variants/{v}" in made
        assert any(f"artifacts/variants/{v}".startswith(d + "/") for d in deps), f"benchmark deps miss {v}"
    assert "metrics/fingerprint.json" in bench["deps"]  # another machine re-measures everything
    assert spec["stages"]["fingerprint"].get("always_changed") is True


def test_only_the_headline_is_a_declared_metric(root):
    """`dvc exp show` lists declared metrics: only the compact headline, so it fits a terminal."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    declared = [
        next(iter(m)) if isinstance(m, dict) else m
        for stage in spec["stages"].values()
        for m in stage.get("do", stage).get("metrics", [])
    ]
    assert declared == ["metrics/headline.json"]


def test_a_new_sweep_ratio_reruns_no_other_pruning_stage(root):
    """prune and prune_sweep list their prune.* keys one by one: prune.sweep (the list) is in neither, and the
    sweep's ratio comes from its item, so adding a ratio adds one stage and leaves the others as they are."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    prune, sweep = spec["prune"]["params"], spec["prune_sweep"]["do"]["params"]
    assert "prune" not in prune and "prune.sweep" not in prune and "prune.ratio" in prune
    assert "prune" not in sweep and "prune.sweep" not in sweep and "prune.ratio" not in sweep
    assert set(prune) - {"prune.ratio"} == set(sweep)  # otherwise the same knobs: a sweep point is a prune
    # ...and every other prune knob is listed: a new one added to the schema but not here would not rerun prune
    assert {k for k in prune if k.startswith("prune.")} == {f"prune.{k}" for k in schema.SCHEMA["prune"]} - {
        "prune.sweep"
    }


def test_the_lock_holds_only_stages_dvc_yaml_generates(root):
    """A stage dropped from dvc.yaml (or a variant dropped from `compare`) leaves its entry in dvc.lock until someone
    removes it; the committed lock must describe only what `dvc repro` of this dvc.yaml and params.yaml makes."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    stale = sorted(set(lock) - set(resolved_stages(root)))
    assert not stale, f"dvc.lock has entries of stages dvc.yaml does not generate: {stale}"
