"""Honest deps: each stage in dvc.yaml lists its script and every stages.lib module it imports."""

import ast
from pathlib import Path

import yaml


def lib_imports(path, root, seen=None):
    """stages/lib/*.py files imported by `path`, followed transitively (also through another stage's
    script, e.g. prune_sweep -> prune; that script is then returned too)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module in ("stages", "stages.lib"):
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stages.lib"):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("stages.lib.")]
        for name in names:
            dep = root / (name.replace(".", "/") + ".py")
            if dep not in seen:
                seen.add(dep)
                lib_imports(dep, root, seen)
    return seen


def test_every_stage_lists_what_it_imports(root):
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    lib = next(v["lib"] for v in spec["vars"] if "lib" in v)
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        deps = {d.replace("${lib}", lib) for d in body["deps"]}
        script = f"stages/{name}.py"
        assert script in deps, f"{name}: {script} missing from deps"
        assert f"python -m stages.{name} " in body["cmd"], f"{name}: stage and module names differ"
        needed = {str(p.relative_to(root)) for p in lib_imports(root / script, root)}
        assert {n for n in needed if not n.startswith(lib)} <= deps, f"{name}: deps miss a stage it runs"
        assert needed <= deps, f"{name}: deps miss {sorted(needed - deps)}"
        unused = {d for d in deps if d.startswith(lib) or (d.startswith("stages/") and d != script)} - needed
        assert not unused, f"{name}: deps list modules it does not import {sorted(unused)}"


def test_every_variant_is_plotted_and_evaluated(root):
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    variants = next(v["variants"] for v in spec["vars"] if "variants" in v)
    plotted = Path(root / "dvc.yaml").read_text()
    for v in variants:
        assert f"plots/evaluate/roc/{v}.csv" in plotted and f"plots/evaluate/pr/{v}.csv" in plotted


def test_benchmark_depends_on_every_variant_it_measures(root):
    """One benchmark stage takes all variants (DVC unpacks the dict into its command): each model is a dep."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    variants = next(v["variants"] for v in spec["vars"] if "variants" in v)
    bench = spec["stages"]["benchmark"]
    assert "${variants}" in bench["cmd"]
    missing = {v for v, item in variants.items() if item["model"] not in bench["deps"]}
    assert not missing, f"benchmark deps miss the models of {sorted(missing)}"
    assert "metrics/fingerprint.json" in bench["deps"]  # another machine re-measures everything
    assert spec["stages"]["fingerprint"].get("always_changed") is True


def test_only_the_headline_is_a_declared_metric(root):
    """`dvc exp show` lists declared metrics: only the compact headline, so it fits a terminal."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    declared = [next(iter(m)) if isinstance(m, dict) else m
                for stage in spec["stages"].values() for m in stage.get("do", stage).get("metrics", [])]  # fmt: skip
    assert declared == ["metrics/headline.json"]
