"""Every ONNX Runtime recipe on a tiny real model: loads, runs, agrees with FP32; the recipe checks and choices."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator

from stages.lib import models, quantization, runtime
from stages.lib.params import ParamError
from stages.lib.quantization import clustering, entropy, pt2e, qat, recipes, sensitivity
from tests.test_quantization import MIN_TOP1, MIN_TOP5_PER_TENSOR, REDUCE_RANGE, crops

SIZE = 64
STATIC = {
    "per_channel": True,
    "calibrate_method": "minmax",
    "calibration_images": 16,
    "activation_type": "auto",
    "weight_type": "int8",
    "reduce_range": "auto",
    "fp32_layers": 0,
    "op_types": "auto",
}
CPU = recipes.cpu_int8_features()  # this machine's, as the quantize stage resolves `auto`


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """ImageNet Lite0 (1000 classes: a strict agreement test) exported once, and FP32 logits on held-out crops."""
    folder = tmp_path_factory.mktemp("fp32")
    model = models.pretrained("tf_efficientnet_lite0", "pypi", num_classes=1000).eval()
    path = quantization.export_onnx(model, folder / "fp32.onnx", SIZE)
    x = crops(32, SIZE, seed=1)
    return path, x, runtime.load_runner(path, "onnxruntime", threads=2)(x)


def agreement(path, x, logits, top=1):
    """Share of images whose FP32 top-1 class is among the variant's `top` best."""
    out = runtime.load_runner(path, "onnxruntime", threads=2)(x)
    assert out.shape == logits.shape and out.dtype == np.float32  # float32 in and out, whatever the inside
    best = np.argsort(-out, axis=1)[:, :top]
    return float(np.mean((best == logits.argmax(1)[:, None]).any(1)))


@pytest.mark.parametrize(
    "kind, options",
    [
        ("ort_static", {}),
        ("ort_static", {"per_channel": False}),  # percentile and entropy: the calibration test below
        ("ort_dynamic", {}),
        ("onnx_fp16", {}),
    ],
)
def test_each_recipe_loads_runs_and_agrees_with_fp32(fp32, tmp_path, kind, options):
    path, x, logits = fp32
    setting = recipes.resolve({"kind": kind, **STATIC, **options}, "tf_efficientnet_lite0", CPU)
    target = tmp_path / "model.onnx"
    if kind == "ort_static":
        opts = recipes.static_options(setting)
        quantization.quantize_static_qdq(path, target, crops(16, SIZE, seed=0), cache=tmp_path / "calib.json", **opts)
        assert json.loads((tmp_path / "calib.json").read_text())  # the calibration cache: tensor ranges as JSON
    elif kind == "ort_dynamic":
        quantization.quantize_dynamic_int8(path, target, per_channel=True)
        assert "ConvInteger" in quantization.op_counts(target)  # what makes dynamic INT8 slow for CNNs
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(target)).graph.initializer}
        conv_w = [n.input[1] for n in onnx.load(str(target)).graph.node if n.op_type == "ConvInteger"]
        assert all(inits[w.removesuffix("_quantized") + "_scale"].size == 1 for w in conv_w)  # per_channel ignored
        assert quantization.weight_scales(target) == "mixed"  # the classifier's MatMulInteger is per-channel
    else:
        quantization.to_fp16(path, target)
        fp16 = [t for t in onnx.load(str(target)).graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
        assert fp16 and target.stat().st_size < 0.6 * path.stat().st_size
    # 1000-way top-1 on hard crops at 64 px. Per-tensor weight scales (asked for, or dynamic INT8's ConvInteger)
    # lose the depthwise convs' small channels: top-1 agreement ~0.45 here, the collapse the issue reports.
    # Most FP32 picks still stay in the variant's top 5.
    if options.get("per_channel") is False or kind == "ort_dynamic":
        assert agreement(target, x, logits, top=5) >= MIN_TOP5_PER_TENSOR
    else:
        assert agreement(target, x, logits) >= MIN_TOP1


def weight_scales(path):
    """Shapes of the scales of every DequantizeLinear that dequantizes a Conv weight (an initializer)."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return [
        inits[n.input[1]].shape
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4
    ]


def test_per_channel_and_per_tensor_graphs_differ_in_scale_shapes(fp32, tmp_path):
    path, _, _ = fp32
    calib = crops(8, SIZE, seed=0)
    pc = quantization.quantize_static_qdq(path, tmp_path / "pc.onnx", calib, per_channel=True)
    pt = quantization.quantize_static_qdq(path, tmp_path / "pt.onnx", calib, per_channel=False)
    pc_scales, pt_scales = weight_scales(pc), weight_scales(pt)
    assert pc_scales and len(pc_scales) == len(pt_scales)
    assert all(s == () for s in pt_scales)  # one scale per weight tensor
    assert all(len(s) == 1 and s[0] > 1 for s in pc_scales)  # one scale per output channel
    assert quantization.weight_scales(pc) == "per_channel" and quantization.weight_scales(pt) == "per_tensor"


def ranges(cache):
    """{tensor: (low, high)} from a calibration cache."""
    value = lambda v: float(np.ravel(v["data"])[0]) if isinstance(v, dict) else float(v)  # noqa: E731
    return {k: (value(t["lowest"]), value(t["highest"])) for k, t in json.loads(cache.read_text())["data"].items()}


def test_entropy_and_percentile_calibration_clip_what_minmax_keeps(fp32, tmp_path):
    """Each method gives its own ranges, inside the min-max ones, and its own model (ORT's quantize_static alone
    would give entropy the min-max ranges: one candidate threshold), which agrees with FP32 like min-max's.
    (Each method is calibrated once, for both checks.)"""
    path, x, logits = fp32
    calib = crops(16, SIZE, seed=0)
    found = {}
    for method in ("minmax", "entropy", "percentile"):
        setting = recipes.resolve(
            {"kind": "ort_static", **STATIC, "calibrate_method": method}, "tf_efficientnet_lite0", CPU
        )
        cache = tmp_path / f"{method}.json"
        model = quantization.quantize_static_qdq(
            path, tmp_path / f"{method}.onnx", calib, cache=cache, **recipes.static_options(setting)
        )
        assert agreement(model, x, logits) >= MIN_TOP1, method
        found[method] = ranges(cache), model.read_bytes()
    minmax = found["minmax"][0]
    for method in ("entropy", "percentile"):
        clipped, model = found[method]
        assert minmax.keys() <= clipped.keys() and model != found["minmax"][1], method
        narrower = [k for k in minmax if clipped[k][1] - clipped[k][0] < 0.99 * (minmax[k][1] - minmax[k][0])]
        assert len(narrower) > len(minmax) // 10, method  # measured: entropy ~85 %, percentile ~20 % of tensors


def test_entropy_search_gives_ort_thresholds(fp32, tmp_path):
    """lib/quantization/entropy's threshold search against ORT's own on Lite0's real histograms (two calibration
    batches, so ORT merges them): the same (low, high), value and dtype, for a sample of the activations (all 97
    agreed when written, in 11 s against ORT's 57 s). Float counts go to ORT's search."""
    path, _, _ = fp32
    prep = quantization.preprocess(path, tmp_path / "prep.onnx")
    calibrator = create_calibrator(
        prep,
        None,
        augmented_model_path=tmp_path / "augmented.onnx",
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": entropy.ENTROPY_BINS, "num_quantized_bins": entropy.QUANTIZED_BINS},
    )
    calibrator.collect_data(quantization.ImageReader(crops(16, SIZE, seed=0), batch_size=8))
    histograms = list(calibrator.collector.histogram_dict.values())
    ort = calibrator.collector.get_entropy_threshold
    for h in histograms[:: len(histograms) // 6]:
        ours, theirs = entropy.kl_threshold(h, entropy.QUANTIZED_BINS, ort), ort(h, entropy.QUANTIZED_BINS)
        assert [(x.dtype, x.item()) for x in ours] == [(x.dtype, x.item()) for x in theirs]
    counts, *rest = histograms[0]
    assert entropy.kl_threshold((counts.astype(float), *rest), 128, lambda h, n: ("ort", n)) == ("ort", 128)


def static_int8(path, folder):
    """(preprocessed float graph, calibration cache, static INT8 model calibrated on 8 crops) in `folder`."""
    prep = quantization.preprocess(path, folder / "prep.onnx")
    cache = folder / "calib.json"
    model = quantization.quantize_static_qdq(
        prep, folder / "a.onnx", crops(8, SIZE, 0), cache=cache, preprocessed=True, reduce_range=REDUCE_RANGE
    )
    return prep, cache, model


def test_cache_replaces_calibration_and_fallback_keeps_the_most_sensitive_layers_float(fp32, tmp_path):
    path, x, logits = fp32
    prep, cache, first = static_int8(path, tmp_path)
    again = quantization.quantize_static_qdq(
        prep, tmp_path / "b.onnx", None, cache=cache, preprocessed=True, reduce_range=REDUCE_RANGE
    )
    assert first.read_bytes() == again.read_bytes()  # same ranges from the cache, no images needed

    rows = sensitivity.layer_sensitivity(prep, first, x[:4])
    int8 = quantization.int8_nodes(first)
    assert {r["op"] for r in rows} == {"Conv", "Gemm"} or {r["op"] for r in rows} == {"Conv"}  # layers with weights
    assert len(rows) == sum(op in ("Conv", "Gemm", "MatMul") for op in int8.values()) > 10
    sqnr = [r["sqnr_db"] for r in rows if r["sqnr_db"] is not None]
    assert sqnr == sorted(sqnr) and sqnr[0] < sqnr[-1]
    keep = sensitivity.most_sensitive(rows, 3)
    mixed = quantization.quantize_static_qdq(
        prep, tmp_path / "c.onnx", cache=cache, exclude=keep, preprocessed=True, reduce_range=REDUCE_RANGE
    )
    still = quantization.int8_nodes(mixed)
    assert not set(keep) & set(still) and len(still) == len(int8) - 3
    assert agreement(mixed, x, logits) >= MIN_TOP1


def test_output_sensitivity_quantizes_one_layer_at_a_time_and_its_worst_layers_fall_back(fp32, tmp_path):
    path, x, logits = fp32
    prep, cache, full = static_int8(path, tmp_path)
    rows = sensitivity.layer_sensitivity(prep, full, x[:4])
    one_layer = []  # what each one-layer model runs in INT8

    def only(names, out):
        model = quantization.quantize_static_qdq(prep, out, cache=cache, only=names, preprocessed=True)
        one_layer.append((names, quantization.int8_nodes(model)))
        return model

    ranked = sensitivity.output_sensitivity(prep, [r["node"] for r in rows], x[:8], 2, only)
    assert sorted(r["node"] for r in ranked) == sorted(r["node"] for r in rows)
    sqnr = [r["sqnr_db"] for r in ranked]
    assert sqnr == sorted(sqnr) and sqnr[0] < sqnr[-1]
    assert all(set(int8) == {names[0]} for names, int8 in one_layer), one_layer  # the layer, its Clip fused in
    assert sum(bool(r["fused"]) for r in ranked) > len(ranked) // 3  # Lite0's expansion and depthwise convs: ReLU6

    def logit_sqnr(model):
        out = runtime.load_runner(model, "onnxruntime", threads=2)(x)
        return 10 * np.log10(np.sum(logits.astype(np.float64) ** 2) / np.sum((logits - out).astype(np.float64) ** 2))

    keep = sensitivity.most_sensitive(ranked, 3)
    assert len(keep) == 3 + sum(len(r["fused"]) for r in ranked[:3])
    mixed = quantization.quantize_static_qdq(prep, tmp_path / "c.onnx", cache=cache, exclude=keep, preprocessed=True)
    assert not set(keep) & set(quantization.int8_nodes(mixed))
    assert logit_sqnr(mixed) > logit_sqnr(full) + 1  # their noise, carried to the logits, was the most


def test_unknown_recipe_kind_option_or_value_stops_with_key_value_and_allowed():
    menu = {"int8": {"kind": "ort_static", **STATIC}}
    with pytest.raises(ParamError, match=r"recipe='int9'.*expected one of \['int8'\]"):
        recipes.find(menu, "int9")
    with pytest.raises(ParamError, match=r"quantize.recipes.x.kind='tensorrt'.*expected one of"):
        recipes.check("x", {"kind": "tensorrt"})
    with pytest.raises(ParamError, match=r"quantize.recipes.x.calibrate_method='mse'.*'entropy', 'minmax'"):
        recipes.check("x", {"kind": "ort_static", **STATIC, "calibrate_method": "mse"})
    with pytest.raises(ParamError, match=r"quantize.recipes.x.bits=4: kind 'ort_static' has no option 'bits'"):
        recipes.check("x", {"kind": "ort_static", **STATIC, "bits": 4})
    with pytest.raises(ParamError, match=r"quantize.recipes.x.fp32_layers=-1.*integer >= 0"):
        recipes.check("x", {"kind": "ort_static", **STATIC, "fp32_layers": -1})


def test_a_recipe_states_what_differs_and_takes_its_kinds_defaults_for_the_rest(root):
    dynamic = recipes.check("x", {"kind": "ort_dynamic", "weight_type": "uint8"})
    assert list(dynamic) == ["kind", *recipes.KINDS["ort_dynamic"]]  # whole: every option, in the table's order
    assert dynamic["weight_type"] == "uint8" and dynamic["per_channel"] is True and dynamic["op_types"] == "auto"
    assert recipes.check("x", {"kind": "ort_static"}) == {"kind": "ort_static", **STATIC, "calibration_images": 128}
    # ...and the menu in params.yaml restates no default
    defaults = {kind: {o: d for o, (d, _) in options.items()} for kind, options in recipes.KINDS.items()}
    defaults |= {"cluster": clustering.DEFAULTS, "pt2e": pt2e.DEFAULTS, "qat": qat.DEFAULTS}
    menu = yaml.safe_load((root / "params.yaml").read_text())["quantize"]["recipes"]
    for name, recipe in menu.items():
        restated = [o for o, v in recipe.items() if o in defaults[recipe["kind"]] and defaults[recipe["kind"]][o] == v]
        assert not restated, f"quantize.recipes.{name} restates its kind's defaults {restated}"


def test_auto_settings_follow_the_cpu_and_the_model_family(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    no_vnni = recipes.cpu_int8_features(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    vnni = recipes.cpu_int8_features(cpuinfo)
    assert not no_vnni["cpu_vnni"] and vnni["cpu_vnni"] and vnni["cpu_avx512_vnni"]
    recipe = {"kind": "ort_static", **STATIC}
    assert recipes.resolve(recipe, "tf_efficientnet_lite0", no_vnni)["reduce_range"] is True  # u8s8 may saturate
    cnn = recipes.resolve(recipe, "tf_efficientnet_lite0", vnni)
    assert cnn["reduce_range"] is False and cnn["activation_type"] == "uint8" and cnn["op_types"] == "all"
    assert recipes.resolve(recipe, "vit_tiny_patch16_224", vnni)["op_types"] == "vit_safe"
    assert recipes.resolve({**recipe, "op_types": "all"}, "vit_tiny_patch16_224", vnni)["op_types"] == "all"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: None, "recipe='int8_typo' is not in quantize.recipes; expected one of ["),
        (
            lambda p: p["quantize"]["recipes"]["int8_typo"].update(calibrate_method="mse"),
            "quantize.recipes.int8_typo.calibrate_method='mse' is not allowed; expected one of ['entropy', 'minmax', 'percentile']",
        ),
    ],
)
def test_quantize_stage_stops_on_a_bad_recipe_before_any_work(tmp_path, root, edit, message):
    params = yaml.safe_load((root / "params.yaml").read_text())
    if message.startswith("quantize.recipes.int8_typo"):
        params["quantize"]["recipes"]["int8_typo"] = dict(params["quantize"]["recipes"]["int8_static_pc"])
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "variant"
    cmd = [
        sys.executable,
        "-m",
        "stages.quantize",
        "m_int8_typo",
        "int8_typo",
        "no_data",
        "a.pt",
        "teacher.pt",
        str(out),
        "m.json",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(root)})
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert not out.exists() and not (tmp_path / "m.json").exists()
