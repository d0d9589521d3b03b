"""Accuracy-controlled INT8 (recipe kind `ort_auto`): on a tiny CNN with one layer made fragile on purpose, the loop
keeps exactly that layer in float and then fits; on the same CNN without the flaw it keeps nothing, and its graph is
byte for byte the plain static recipe's."""

import functools

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from stages import quantize
from stages.lib import quantization
from stages.lib.quantization import recipes

SIZE = 16
CPU = recipes.cpu_int8_features()  # reduce_range resolved for this CPU, as the stage does (7-bit weights w/o VNNI)
OUTLIER = 1000.0  # a weight on an input channel that is always 0: free in float, fatal to one INT8 scale


def images(n, seed):
    """Binary set: the defect class is brighter in channel 0; channel 2 is black in every image."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.uniform(0, 0.4, size=(n, 3, SIZE, SIZE))
    x[:, 0] += 0.4 * y[:, None, None] + rng.uniform(0, 0.05, size=(n, 1, 1))
    x[:, 2] = 0
    return x.astype(np.float32), y


class Net(nn.Sequential):
    def forward(self, x):  # export_onnx names the input `x`; nn.Sequential calls it `input`
        return super().forward(x)


def tiny_cnn(fragile):
    """conv1 (1x1) -> ReLU -> conv2 (3x3) -> ReLU -> pool -> linear; only channel 0 carries the signal through.

    `fragile`: how many of the convs (conv1, then conv2) also read an input channel that is always 0 with weight
    OUTLIER, in the output channel that carries the signal: its one per-channel INT8 scale is then ~OUTLIER/127
    and the signal weight 1.0 rounds to 0 (what a weight outlier does to a real layer). conv1 reads the black image
    channel 2; conv2 reads conv1's channel 3, which its negative bias keeps at 0 after the ReLU.
    """
    torch.manual_seed(0)
    conv1, conv2, head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 2)
    with torch.no_grad():
        conv1.weight.copy_(torch.rand(4, 3, 1, 1) * 0.1)  # channels 1-2: weak, class-independent noise
        conv1.weight[0] = torch.tensor([1.0, 0.0, OUTLIER if fragile >= 1 else 0.0])[:, None, None]
        conv1.bias.zero_()
        conv1.bias[3] = -1.0  # channel 3: always 0 after the ReLU
        conv2.weight.mul_(0.2)
        conv2.weight[0].zero_()
        conv2.weight[0, 0, 1, 1] = 1.0  # conv2 channel 0 passes conv1 channel 0 on
        conv2.weight[0, 3, 1, 1] = OUTLIER if fragile >= 2 else 0.0
        conv2.bias.zero_()
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1, 0] = 20.0  # defect logit rises with channel 0's mean brightness
        head.bias[1] = -10.0
    return Net(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def run_auto(model, tmp_path, max_fp32_layers=4):
    """The quantize stage's path for an `ort_auto` recipe: make (all-INT8 static), then fallback (the loop)."""
    setting = recipes.resolve(recipes.check("x", {"kind": "ort_auto", "max_fp32_layers": max_fp32_layers}), "cnn", CPU)
    calib, _ = images(32, seed=0)
    x_val, y_val = images(200, seed=1)
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir(parents=True)
    tmp.mkdir()
    path, static = quantize.make("ort_auto", setting, None, model, {}, out, calib, tmp, {})
    judge = functools.partial(
        quantize.val_deltas, y=y_val, task="binary", target_recall=0.95, max_drop_pt=1.0, draws=100, seed=0
    )
    stats = quantize.fallback(static, path, x_val[:16], setting, 1, x_val, judge)
    return path, static, stats


def convs_with_outlier(graph_path):
    """Names of the Conv nodes whose weight holds OUTLIER in the float graph."""
    graph = onnx.load(str(graph_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {n.name for n in graph.node if n.op_type == "Conv" and np.abs(inits[n.input[1]]).max() >= OUTLIER}


def test_the_loop_keeps_exactly_the_fragile_layer_in_float_and_then_fits(tmp_path):
    path, static, stats = run_auto(tiny_cnn(fragile=1), tmp_path)
    first, last = stats["auto_steps"][0], stats["auto_steps"][-1]
    assert not first["fits"] and first["val_auroc_delta_pt"] < -20  # all-INT8: the signal weight rounded to 0
    (fragile,) = convs_with_outlier(static["prep"])
    assert [s["added"] for s in stats["auto_steps"]] == [None, fragile]  # ranked first by output sensitivity
    assert stats["output_sensitive_1"]["node"] == fragile
    assert last["fits"] and stats["auto_fit"] and stats["auto_fp32_layers"] == 1
    assert last["val_worst_drop_pt"] <= 1.0 and abs(last["val_auroc_delta_pt"]) <= 1.0
    assert stats["fp32_layers_kept"] == [fragile, *stats["output_sensitive_1"]["fused"]]  # with its ReLU
    conv1, conv2, head = 3 * 4 * SIZE**2, 4 * 9 * 4 * SIZE**2, 4 * 2  # MACs per image: what float costs, as a share
    assert stats["fp32_macs_pct"] == round(100 * conv1 / (conv1 + conv2 + head), 2)
    int8 = quantization.int8_nodes(path)  # the variant written: that conv float, every other layer INT8
    assert fragile not in int8 and sum(op in ("Conv", "Gemm", "MatMul") for op in int8.values()) == 2


def test_a_robust_model_keeps_nothing_in_float_and_is_the_plain_static_recipe(tmp_path):
    model = tiny_cnn(fragile=0)
    path, _, stats = run_auto(model, tmp_path)
    assert (
        stats["auto_fit"]
        and stats["fp32_layers_kept"] == []
        and stats["auto_fp32_layers"] == stats["fp32_macs_pct"] == 0
    )
    assert len(stats["auto_steps"]) == 1 and "output_sensitive_1" not in stats  # no ranking was needed
    setting = recipes.resolve(recipes.check("x", {"kind": "ort_static"}), "cnn", CPU)
    (tmp_path / "pc").mkdir()
    (tmp_path / "pc_tmp").mkdir()
    plain, _ = quantize.make(
        "ort_static", setting, None, model, {}, tmp_path / "pc", images(32, 0)[0], tmp_path / "pc_tmp", {}
    )
    assert plain.read_bytes() == path.read_bytes()  # int8_auto == int8_static_pc when nothing needs float


def test_two_fragile_layers_need_two_steps_and_a_cap_of_one_keeps_the_best_graph_and_says_it_did_not_fit(tmp_path):
    model = tiny_cnn(fragile=2)
    path, static, stats = run_auto(model, tmp_path / "a", max_fp32_layers=4)
    assert [s["fits"] for s in stats["auto_steps"]] == [False, False, True] and stats["auto_fit"]
    assert {s["added"] for s in stats["auto_steps"][1:]} == convs_with_outlier(static["prep"])
    assert set(quantization.int8_nodes(path).values()) == {"Gemm"}  # both convs float, the head INT8

    path, _, stats = run_auto(model, tmp_path / "b", max_fp32_layers=1)
    assert [s["fits"] for s in stats["auto_steps"]] == [False, False] and not stats["auto_fit"]
    # one conv in float fixes nothing (the other still zeroes the signal): a tie, so the fewest layers, none
    assert stats["auto_fp32_layers"] == 0 and stats["fp32_layers_kept"] == [] and stats["auto_max_fp32_layers"] == 1
    assert len(quantization.int8_nodes(path)) == 3  # the variant is the all-INT8 graph, not the last one tried


@pytest.mark.parametrize("option", [{"fp32_layers": 2}, {"max_fp32_layers": -1}])
def test_ort_auto_refuses_fixed_float_layers_and_a_negative_cap(option):
    with pytest.raises(recipes.ParamError, match=r"quantize.recipes.x\.(fp32_layers|max_fp32_layers)"):
        recipes.check("x", {"kind": "ort_auto", **option})
