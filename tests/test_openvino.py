"""OpenVINO as a second CPU runtime for the same ONNX files (lib/runtime/openvino): it agrees with ONNX Runtime,
runs f32 when asked, refuses bf16 where the CPU has none, is timed without torch or ORT, and can be deployed."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from stages import benchmark, quantize
from stages.lib import quantization, runtime
from stages.lib.deploy import selection
from stages.lib.outputs import write_json
from stages.lib.params import ParamError
from stages.lib.quantization import recipes
from stages.lib.runtime import openvino

SIZE = 32
REDUCE_RANGE = not recipes.cpu_int8_features()["cpu_vnni"]  # what the quantize stage resolves for this CPU


class Net(torch.nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):  # the argument name export_onnx's dynamic batch axis refers to
        return self.body(x)


def tiny_net():
    torch.manual_seed(0)
    return Net(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise, as the project's CNNs
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 24, 1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(24, 2),
        )
    ).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny FP32 ONNX file and its static QDQ INT8 twin, and images to score."""
    d = tmp_path_factory.mktemp("ov")
    rng = np.random.default_rng(0)
    fp32 = quantization.export_onnx(tiny_net(), d / "fp32.onnx", SIZE)
    calib = rng.random((16, 3, SIZE, SIZE), dtype=np.float32)
    int8 = quantization.quantize_static_qdq(fp32, d / "int8.onnx", calib, reduce_range=REDUCE_RANGE)
    return {"fp32": fp32, "int8": int8, "x": rng.random((96, 3, SIZE, SIZE), dtype=np.float32)}


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_openvino_scores_agree_with_onnxruntime_on_the_same_file(files, which):
    path, x = files[which], files["x"]
    ort = runtime.load_runner(path, "onnxruntime", threads=1)
    ov = runtime.load_runner(path, "openvino", threads=1, options={"precision": "f32"})
    found = openvino.agreement(runtime.predict(ort, x), runtime.predict(ov, x), path)
    assert found["ort_agreement_tolerance"]["graph"] == ("int8" if which == "int8" else "float")
    assert found["ort_agreement_ok"], found
    if which == "fp32":  # really f32: BF16 would move scores by ~1e-2, far past the float tolerance
        assert found["val_max_abs_score_diff_vs_ort"] <= openvino.TOLERANCE["float"]["max_abs_score_diff"]
        assert ov.settings["inference_precision"] == "f32" and ov.settings["execution_devices"] == ["CPU"]
    # the tolerance is not vacuous: other scores fail it
    shifted = openvino.agreement(runtime.predict(ort, x), np.roll(runtime.predict(ov, x), 1, axis=1), path)
    assert not shifted["ort_agreement_ok"]


def test_the_timing_worker_imports_neither_torch_nor_onnxruntime(files):
    cmd = [sys.executable, "-m", "stages.lib.runtime.timing", "openvino", str(files["int8"]), "--threads", "1"]
    cmd += ["--image-size", str(SIZE), "--batch-size", "4", "--seconds", "0.05", "--min-calls", "3", "--warmup", "1"]
    cmd += ["--options", json.dumps({"precision": "f32"})]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["torch_imported"] is False and res["onnxruntime_imported"] is False
    s = res["settings"]
    assert (s["inference_precision"], s["num_streams"], s["performance_hint"]) == ("f32", 1, "LATENCY")
    assert s["inference_num_threads"] == 1 and s["openvino"]
    assert res["t1_latency_ms_p50"] > 0 and res["t1_throughput_img_s"] > 0


def test_bf16_is_refused_with_the_reason_where_the_cpu_has_none(files):
    assert "no BF16" in openvino.unavailable_reason("bf16", ["FP32", "INT8", "BIN"])
    assert openvino.unavailable_reason("bf16", ["FP32", "INT8", "BF16"]) is None
    assert openvino.unavailable_reason("f32", ["FP32"]) is None
    if "BF16" in openvino.capabilities():  # a BF16 CPU runs it, and says so
        ov = runtime.load_runner(files["fp32"], "openvino", 1, options={"precision": "bf16"})
        assert ov.settings["inference_precision"] == "bf16"
    else:
        with pytest.raises(openvino.PrecisionUnavailable, match="no BF16"):
            runtime.load_runner(files["fp32"], "openvino", 1, options={"precision": "bf16"})


def test_openvino_recipes_name_an_onnx_source_and_a_precision():
    menu = {"torch_fp32": {"kind": "torch"}, "ort_fp32": {"kind": "onnx_fp32"}, "int8": {"kind": "ort_auto"}}
    menu |= {"ov_fp32": {"kind": "openvino"}, "ov_int8": {"kind": "openvino", "source": "int8"}}
    assert recipes.find(menu, "ov_fp32") == {"kind": "openvino", "source": "ort_fp32", "precision": "f32"}
    assert recipes.RUNTIME[recipes.find(menu, "ov_int8")["kind"]] == "openvino"
    with pytest.raises(ParamError, match=r"source='torch_fp32'.*makes an ONNX file"):
        recipes.find(menu | {"bad": {"kind": "openvino", "source": "torch_fp32"}}, "bad")
    with pytest.raises(ParamError, match="precision='fp16'"):
        recipes.find(menu | {"bad": {"kind": "openvino", "precision": "fp16"}}, "bad")


def test_an_openvino_variant_runs_its_source_file_and_the_benchmark_lists_it(files, tmp_path):
    variants = tmp_path / "variants"
    src = variants / "m_int8"
    src.mkdir(parents=True)
    (src / "model.onnx").write_bytes(files["int8"].read_bytes())
    write_json(src / "variant.json", {"variant": "m_int8", "runtime": "onnxruntime", "file": "model.onnx"})
    setting = {"kind": "openvino", "source": "int8", "precision": "f32"}
    out = variants / "m_ov_int8"
    out.mkdir()
    source = quantize.openvino_source(None, out, "m", setting)
    assert source == src
    path, extra = quantize.make("openvino", setting, None, None, None, out, None, tmp_path, {"source": source})
    assert path.read_bytes() == files["int8"].read_bytes()  # the same file: nothing re-exported
    assert extra == {"openvino": {"source_variant": "m_int8"}}
    with pytest.raises(ParamError, match="expected the folder of variant 'm_int8'"):
        quantize.openvino_source(str(variants / "m_other"), out, "m", setting)
    options = {"precision": "f32"}
    write_json(out / "variant.json", {"runtime": "openvino", "file": "model.onnx", "runtime_options": options})
    found = benchmark.parse_variants(["--models", "m", "--recipes", "int8", "--openvino", "ov_int8"], variants)
    assert found["m_ov_int8"] == {"model": str(path), "runtime": "openvino", "options": options}
    assert found["m_int8"]["runtime"] == "onnxruntime"


def test_selection_may_pick_an_openvino_variant():
    ev = {"val": {"recall": 0.97, "recall_lower_bound": 0.93, "fpr": 0.2, "auroc": 0.95}}

    def bench(rt, ms):
        return {"runtime": rt, "model_file": "m", "latency_ms_p50": ms, "size_mb": 3.0, "peak_rss_mb": 90}

    benches = {"m_torch": bench("torch", 0.5), "m_int8": bench("onnxruntime", 1.0), "m_ov_int8": bench("openvino", 0.7)}
    sel = {"min_recall": 0.9, "max_fpr": None, "max_latency_ms": None, "max_size_mb": None, "max_peak_rss_mb": None}
    assessed = selection.assess(benches, dict.fromkeys(benches, ev), sel | {"objective": "latency", "screen_images": 1})
    assert assessed["m_ov_int8"]["qualified"] and set(assessed["m_torch"]["failed"]) == {"runtime"}
    assert selection.pick(assessed) == "m_ov_int8"


def test_screen_runs_an_openvino_bundle_without_torch_or_onnxruntime(files, tmp_path):
    from PIL import Image

    from stages.lib import deploy

    for i, level in enumerate((20, 120, 230)):
        Image.fromarray(np.full((40, 40, 3), level, np.uint8)).save(tmp_path / f"{i}.png")
    meta = {"variant": "m_ov_fp32", "task": "binary", "classes": ["good", "defect"], "threshold": 0.5}
    meta |= {"input_size": SIZE, "decoding": deploy.decoding_rules(SIZE, 64)}
    scores = {}
    for rt, options in (("onnxruntime", None), ("openvino", {"precision": "f32"})):
        bench = {"threads": 1, "runtime": rt, "runtime_options": options}
        deploy.write_bundle(tmp_path / rt, files["fp32"], meta | {"benchmark": bench})
        code = (
            "import runpy, sys\nsys.argv = ['screen', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('stages.screen', run_name='__main__')\nfinally:\n"
            "    print(sorted({'torch', 'onnxruntime', 'onnx'} & set(sys.modules)))\n"
        )
        args = [tmp_path / rt, *sorted(tmp_path.glob("*.png")), "--out", tmp_path / f"{rt}.csv"]
        args += ["--summary", tmp_path / f"{rt}.json", "--workers", "0"]
        proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        imported = proc.stdout.strip().splitlines()[-1]
        # nor the onnx package: a runtime runs the file without a second, parsed copy of it (lib/runtime)
        assert imported == ("[]" if rt == "openvino" else "['onnxruntime']"), imported
        assert json.loads((tmp_path / f"{rt}.json").read_text())["runtime"] == rt
        rows = (tmp_path / f"{rt}.csv").read_text().splitlines()[1:]
        scores[rt] = np.array([float(r.split(",")[3]) for r in rows])
    assert len(scores["openvino"]) == 3
    np.testing.assert_allclose(scores["openvino"], scores["onnxruntime"], atol=1e-4)
