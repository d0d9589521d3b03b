"""Structured pruning: every criterion and schedule on a tiny Lite0, stem and classifier kept, bad params."""

import copy
import subprocess
import sys

import pytest
import torch
import yaml

from stages.lib import models, pruning, schema
from stages.lib.params import ParamError
from stages.lib.pruning import greedy

SIZE = 64
SCOPES = sorted(schema.SCHEMA["prune"]["scope"])


def config(**kw):
    cfg = {
        "importance": "l2",
        "scope": "uniform",
        "ratio": 0.4,
        "max_ratio": 0.8,
        "iterative_steps": 1,
        "round_to": 8,
        "epochs": 1,
        "lr_scale": 0.3,
        "taylor_batches": 1,
    }
    return {**cfg, **kw}


@pytest.fixture(scope="module")
def lite0():
    """Lite0 with trained-looking BatchNorm scales (fresh BN has every gamma = 1: nothing to rank)."""
    torch.manual_seed(0)
    model = models.build("tf_efficientnet_lite0", 2).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.1, 1.5)
    return model


def calib():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(16, 3, SIZE, SIZE, generator=gen), torch.randint(0, 2, (16,), generator=gen)


def probe():
    return torch.rand(32, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def widths(model):
    return [m.weight.shape for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def shapes(model):
    return model.net.conv_stem.weight.shape, model.net.get_classifier().weight.shape


RANKED = ("uniform", "global")  # scopes with one ratio for the ranking; greedy searches per-stage ratios (below)


@pytest.mark.parametrize("importance", sorted(pruning.IMPORTANCE))
@pytest.mark.parametrize("scope", RANKED)
def test_every_criterion_and_scope_prunes_and_keeps_outputs(lite0, importance, scope):
    model = copy.deepcopy(lite0)
    stem, head = shapes(model)
    model, stats = pruning.prune_structured(model, SIZE, config(importance=importance, scope=scope), calib=calib())
    assert stats["macs_after_m"] < 0.8 * stats["macs_before_m"] and stats["params_ratio"] < 0.8
    assert model(torch.rand(3, 3, SIZE, SIZE)).shape == (3, 2)
    assert shapes(model) == (stem, head)  # the stem and the classifier are never pruned
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    assert all(c.out_channels % 8 == 0 for c in convs)


def test_global_scope_caps_every_layer(lite0):
    model, _ = pruning.prune_structured(copy.deepcopy(lite0), SIZE, config(scope="global", ratio=0.5, max_ratio=0.6))
    before = {n: m.out_channels for n, m in lite0.named_modules() if isinstance(m, torch.nn.Conv2d)}
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert all(after[n] >= 0.4 * before[n] - 8 for n in before)  # no layer loses more than max_ratio (+ rounding)
    assert any(after[n] < before[n] for n in before)


# Shared by the iterative and the greedy tests: greedy's search (each candidate cut pruned and scored) is the
# costly part, so its one-shot result is computed once per module.
ITERATIVE = {"ratio": 0.3, "max_ratio": 0.6, "greedy_step": 0.2}


@pytest.fixture(scope="module")
def greedy_one_shot(lite0):
    return pruning.prune_structured(copy.deepcopy(lite0), SIZE, config(scope="greedy", **ITERATIVE), probe=probe())


@pytest.mark.parametrize("scope", SCOPES)
def test_iterative_steps_reach_the_one_shot_ratio_with_a_finetune_between(lite0, scope, request):
    kw = {"scope": scope, **ITERATIVE}
    if scope == "greedy":  # asked for here only, so the other scopes alone do not pay for its search
        one_shot, s1 = request.getfixturevalue("greedy_one_shot")
    else:
        one_shot, s1 = pruning.prune_structured(copy.deepcopy(lite0), SIZE, config(**kw), probe=probe())
    calls = []

    def finetune(model, step, epochs):
        calls.append((step, epochs))
        assert model(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 2)  # a working model between steps
        return model

    cfg = config(**kw, iterative_steps=3, epochs=4)
    model, s3 = pruning.prune_structured(copy.deepcopy(lite0), SIZE, cfg, finetune=finetune, probe=probe())
    assert calls == [(0, 1), (1, 1), (2, 2)]  # the budget is split over the steps
    if scope != "global":  # every layer ends at the same width as one-shot (greedy: its search runs once, first)
        assert widths(model) == widths(one_shot) and s3["macs_after_m"] == s1["macs_after_m"]
    else:  # global: per-layer widths may differ, the removed share of channels is the same
        assert s3["macs_ratio"] == pytest.approx(s1["macs_ratio"], abs=0.1)
    assert model(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 2)


def test_epochs_split_over_steps():
    assert pruning.epochs_per_step(2, 1) == [2] and pruning.epochs_per_step(5, 2) == [2, 3]


def test_greedy_search_cuts_first_where_the_outputs_move_least_per_mac(caplog):
    """greedy_search on a made-up network: each 0.1 of stage i's ratio saves SAVES[i] MACs and adds COST[i]
    distortion. Per MAC, stage 2 is cheapest (0.025), then stage 0 (0.1); stage 1 saves nothing (its channels
    round to the same width) and is never taken, free as it is. Stage 2 goes to the cap, then stage 0."""
    saves, cost = [10.0, 0.0, 20.0], [1.0, 0.0, 0.5]

    def trial(ratios):
        steps = [round(r / 0.1) for r in ratios]
        return 1000 - sum(s * m for s, m in zip(steps, saves, strict=True)), sum(
            s * c for s, c in zip(steps, cost, strict=True)
        )

    ratios, macs, dist, rounds = greedy.greedy_search(3, trial, 1000, 910, 0.1, 0.3)
    assert ratios == [0.3, 0.0, 0.3] and macs == 910 and dist == pytest.approx(4.5)
    assert rounds[:3] == [[0.0, 0.0, 0.1], [0.0, 0.0, 0.2], [0.0, 0.0, 0.3]] and len(rounds) == 6
    # a target beyond what the cap allows: every stage at the cap, and a warning, not a loop
    ratios, macs, _, _ = greedy.greedy_search(3, trial, 1000, 800, 0.1, 0.3)
    assert ratios == [0.3, 0.0, 0.3] and macs == 910 and "no stage can be cut further" in caplog.text


def test_greedy_scope_removes_the_uniform_macs_with_its_own_ratio_per_stage(lite0, greedy_one_shot):
    """scope greedy on a tiny Lite0: at least the MACs uniform pruning at the same ratio removes, the ratios it
    searched are the ones each stage got (a stage at 0 keeps its output widths), stem and classifier kept."""
    _, uniform = pruning.prune_structured(copy.deepcopy(lite0), SIZE, config(ratio=ITERATIVE["ratio"]))
    model, stats = greedy_one_shot
    assert stats["macs_after_m"] <= uniform["macs_after_m"]
    ratios, cap = stats["stage_ratios"], ITERATIVE["max_ratio"]
    assert len(ratios) == len(lite0.net.blocks) and all(0 <= r <= cap for r in ratios) and len(set(ratios)) > 1
    assert 0 in ratios  # the stage-width check below covers a stage left whole
    assert stats["greedy_rounds"] >= 1 and stats["greedy_kl"] >= 0 and stats["uniform_kl"] >= 0

    def outs(stage):
        return [m.out_channels for m in stage.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]

    for r, old, new in zip(ratios, lite0.net.blocks, model.net.blocks, strict=True):
        assert (outs(new) == outs(old)) == (r == 0), (r, outs(old), outs(new))
    assert shapes(model) == shapes(lite0) and model(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 2)
    with pytest.raises(ValueError, match="probe"):
        pruning.prune_structured(copy.deepcopy(lite0), SIZE, config(scope="greedy", **ITERATIVE))


def test_greedy_on_a_cnn_without_stages_is_refused_before_any_work():
    """A CNN whose stages lib/pruning cannot find (no blocks, stages or layer1..4) stops at the check, naming the
    key and what is allowed, instead of failing inside the search."""
    model = models.build("tf_efficientnet_lite0", 2)
    model.net.blocks = torch.nn.Identity()  # nothing left to allocate over
    with pytest.raises(ParamError, match=r"prune\.scope='greedy'.*no stages.*'uniform' or 'global'"):
        pruning.check_for_model("l2", model, scope="greedy")
    pruning.check_for_model("l2", model, scope="uniform")  # the other scopes do not need stages


def test_zero_ratio_keeps_everything():
    model = models.build("tf_efficientnet_lite0", 2).eval()
    before = models.param_count(model)
    model, stats = pruning.prune_structured(model, SIZE, config(ratio=0.0))
    assert models.param_count(model) == before and stats["params_ratio"] == 1.0


def test_pruned_model_survives_save_and_load(tmp_path):
    model, _ = pruning.prune_structured(models.build("tf_efficientnet_lite0", 2).eval(), SIZE, config(ratio=0.4))
    models.save(tmp_path, model, models.make_card("tf_efficientnet_lite0", "pypi", SIZE, model, ["good", "defect"]))
    loaded, card = models.load(tmp_path / "model.pt")
    x = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded(x), model(x))
    assert card["param_count"] == models.param_count(loaded)


@pytest.fixture
def prune_section(root):
    return yaml.safe_load((root / "params.yaml").read_text())["prune"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("importance", "l3", r"prune\.importance='l3'.*\['auto', 'bn_scale', 'l1', 'l2', 'lamp', 'random', 'taylor'\]"),
        ("scope", "layerwise", r"prune\.scope='layerwise'.*\['global', 'greedy', 'uniform'\]"),
        ("greedy_step", 0.0, r"prune\.greedy_step=0\.0.*\(0, 0\.5\]"),
        ("greedy_step", 0.6, r"prune\.greedy_step=0\.6.*\(0, 0\.5\]"),
        ("greedy_images", 4, r"prune\.greedy_images=4.*integer >= 8"),
        ("source", "student_init", r"prune\.source='student_init'.*\['student_kd', 'teacher'\]"),
        ("ratio", 1.0, r"prune\.ratio=1\.0.*\[0, 1\)"),
        ("ratio", "half", r"prune\.ratio='half'.*\[0, 1\)"),
        ("max_ratio", 1.0, r"prune\.max_ratio=1\.0.*\(0, 1\)"),
        ("iterative_steps", 0, r"prune\.iterative_steps=0.*integer >= 1"),
        ("round_to", 0, r"prune\.round_to=0.*integer >= 1"),
        ("seed", -1, r"prune\.seed=-1.*integer >= 0 or null"),
        ("lr_scale", 0, r"prune\.lr_scale=0.*\(0, 10\]"),
        ("taylor_batches", 0, r"prune\.taylor_batches=0.*integer >= 1"),
    ],
)
def test_bad_prune_params_name_key_value_and_allowed(prune_section, key, value, message):
    """Each knob's rule is declared once, in lib/schema.py; pruning.check (which prune_sweep's ratio also goes
    through) applies it."""
    with pytest.raises(ParamError, match=message):
        pruning.check({**prune_section, key: value})


def test_an_unknown_or_missing_prune_key_is_refused(prune_section):
    with pytest.raises(ParamError, match=r"prune\.channels is not a known key"):  # a knob removed since
        pruning.check({**prune_section, "channels": "inner"})
    with pytest.raises(ParamError, match=r"prune\.greedy_step is missing"):
        pruning.check({k: v for k, v in prune_section.items() if k != "greedy_step"})


def test_fewer_epochs_than_steps_is_refused(prune_section):
    with pytest.raises(ParamError, match=r"prune\.epochs=1.*integer >= 3"):
        pruning.check({**prune_section, "iterative_steps": 3, "epochs": 1})


@pytest.mark.parametrize("scope", ["global", "greedy"])
def test_cap_below_ratio_is_refused(prune_section, scope):
    with pytest.raises(ParamError, match=r"prune\.max_ratio=0\.2 is below prune\.ratio=0\.5"):
        pruning.check({**prune_section, "scope": scope, "ratio": 0.5, "max_ratio": 0.2})


@pytest.mark.parametrize("stage", ["prune", "prune_sweep"])
def test_stage_cli_stops_on_bad_importance_before_any_work(tmp_path, root, stage):
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["prune"]["importance"] = "l3"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    out = tmp_path / "pruned"
    ratio = ["30"] if stage == "prune_sweep" else []
    cmd = [sys.executable, "-m", f"stages.{stage}", *ratio, "no_data", "a.pt", "b.pt", str(out), "live", "m.json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(root)})
    assert proc.returncode != 0 and "prune.importance='l3'" in proc.stderr and "'taylor'" in proc.stderr
    assert not out.exists() and not (tmp_path / "m.json").exists()
