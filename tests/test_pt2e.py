import numpy as np
import pytest
import torch

from stages.lib import models, params
from stages.lib.quantization import pt2e
from tests.test_quantization import VNNI, crops

MIN_TOP1 = 0.75 if VNNI else 0.65  # FP32 and INT8 numerics differ by CPU: tests/test_quantization.py


def test_pt2e_int8_file_loads_runs_compiled_and_agrees_with_fp32(tmp_path):
    size = 64
    model = models.pretrained("tf_efficientnet_lite0", "pypi", num_classes=1000).eval()
    recipe = pt2e.check_recipe("quantize.recipes.int8_pt2e", {"kind": "pt2e", "calibration_images": 32})
    program = pt2e.quantize(model, crops(recipe["calibration_images"], size, seed=0))
    path = pt2e.save(program, tmp_path / "model.pt2")
    x = crops(24, size, seed=1)

    with torch.no_grad():
        fp32 = model(torch.from_numpy(x)).numpy()
        pt2e.quantizer()  # registers the quantized_decomposed ops the saved program calls
        eager = pt2e.load_program(path).module()(torch.from_numpy(x)).numpy()  # uncompiled: the reference
    runner = pt2e.Pt2eRunner(path, threads=2, cache_dir=tmp_path / "inductor")
    compiled = runner(x)

    assert compiled.shape == (24, 1000)
    assert np.mean(eager.argmax(1) == fp32.argmax(1)) >= MIN_TOP1  # 1000-way top-1 on hard crops
    assert np.mean(compiled.argmax(1) == fp32.argmax(1)) >= MIN_TOP1
    assert np.mean(compiled.argmax(1) == eager.argmax(1)) >= (0.9 if VNNI else 0.8)  # oneDNN int8 vs reference ops
    assert any((tmp_path / "inductor").iterdir())  # compiled kernels cached where we asked
    assert runner.settings["inductor_cache_dir"] == str((tmp_path / "inductor").resolve())
    # int8 weights: well under the float32 checkpoint; BatchNorm folded, so slightly fewer weights
    assert path.stat().st_size < 0.45 * models.param_count(model) * 4
    assert 0.9 * models.param_count(model) < runner.param_count <= models.param_count(model)


def test_pt2e_runner_is_cpu_only(tmp_path):
    with pytest.raises(ValueError, match="CPU only"):
        pt2e.Pt2eRunner(tmp_path / "missing.pt2", threads=1, device="cuda")


@pytest.mark.parametrize(
    ("recipe", "key"), [({"calibration_images": 0}, "calibration_images"), ({"per_tensor": True}, "per_tensor")]
)
def test_bad_recipe_names_the_key(recipe, key):
    with pytest.raises(params.ParamError, match=rf"quantize\.recipes\.p\.{key}"):
        pt2e.check_recipe("quantize.recipes.p", {"kind": "pt2e", **recipe})


@pytest.mark.parametrize("kind", ["pt2e", "qat"])
def test_torchao_is_required_only_for_a_recipe_that_runs(root, monkeypatch, kind):
    """The quantize stage's own recipe and check_params's compared ones need torchao's quantizer to build; the
    menu's other recipes are checked without it (their imports take ~2 s of every check_params run)."""
    from stages import quantize

    p = params.load("base", "quantize", path=str(root / "params.yaml"))
    p["quantize"]["recipes"]["mine"] = {"kind": kind}

    def missing(is_qat=False):
        raise ImportError("No module named 'torchao'")

    monkeypatch.setattr(pt2e, "quantizer", missing)
    assert quantize.check(p, "mine", runs=False)[1]["kind"] == kind
    with pytest.raises(params.ParamError, match=rf"^quantize\.recipes\.mine\.kind='{kind}' needs torchao: pip install"):
        quantize.check(p, "mine")
