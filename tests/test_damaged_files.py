"""Outputs appear whole or not at all; a missing or damaged input is named with the stage that makes it."""

import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper

from stages import benchmark
from stages.lib import errors, models, outputs, runtime
from stages.lib.errors import InputError, MissingInputError
from stages.lib.quantization import pt2e


@pytest.fixture
def repo(tmp_path, root, monkeypatch):
    """A temporary working directory with the pipeline's dvc.yaml and params.yaml, as `dvc repro` runs stages."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(root / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_model(out_dir):
    model = models.build("tf_efficientnet_lite0", 2).eval()
    models.save(out_dir, model, models.make_card("tf_efficientnet_lite0", "pypi", 64, model, ["good", "defect"]))
    return out_dir / "model.pt"


def tiny_onnx(path):
    """A one-node ONNX graph (Identity): enough for onnx.checker and ONNX Runtime."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", [x], [y])
    path.parent.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)  # ORT reads <= 13
    onnx.save(model, str(path))
    return path


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    outputs.write_json(target, {"recall": 0.9})
    with pytest.raises(RuntimeError), outputs.atomic(target) as tmp:
        tmp.write_text('{"recall": 0.')  # half written, then the stage dies
        raise RuntimeError("killed")
    assert target.read_text() == '{\n  "recall": 0.9\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failed_model_save_keeps_the_old_model(tmp_path, monkeypatch):
    path = tiny_model(tmp_path)
    before = path.read_bytes()

    def dies_half_way(obj, f):
        open(f, "wb").write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        tiny_model(tmp_path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "model.pt"]


def test_model_round_trip_loads_with_weights_only(tmp_path):
    path = tiny_model(tmp_path)
    assert set(torch.load(path, weights_only=True)) == {"card", "state", "attributes"}
    model, card = models.load(path)
    assert card["arch"] == "tf_efficientnet_lite0" and not model.training


def test_stage_that_makes_a_file_is_found_in_dvc_yaml(repo):
    assert errors.made_by("artifacts/student_kd/model.pt") == "distill"
    assert errors.made_by("artifacts/teacher/model.pt") == "finetune_teacher"
    assert errors.made_by("artifacts/student_pruned/model.pt") == "prune"
    assert errors.made_by("artifacts/student_pruned_r50/model.pt") == "prune_sweep"
    assert errors.made_by("artifacts/student_sparse50/model.pt") == "sparsify"
    assert errors.made_by(repo / "artifacts/variants/student_kd_int8_auto/model.onnx") == "quantize"
    assert errors.made_by("data/prepared/classes.json") == "prepare"
    assert errors.made_by("elsewhere/model.pt") is None


def test_missing_model_names_the_file_and_its_stage(repo):
    with pytest.raises(MissingInputError) as e:
        models.load("artifacts/student_kd/model.pt")
    assert str(e.value) == (
        "artifacts/student_kd/model.pt is missing or damaged (not found); "
        "it is made by stage 'distill': run `dvc repro distill`"
    )


def test_truncated_model_names_the_file_and_its_stage(repo):
    path = tiny_model(repo / "artifacts" / "teacher")
    truncate(path)
    with pytest.raises(
        InputError,
        match=r"^artifacts/teacher/model\.pt is missing or damaged \(.+\); it is made by "
        r"stage 'finetune_teacher': run `dvc repro finetune_teacher`$",
    ):
        models.load("artifacts/teacher/model.pt")


def test_truncated_onnx_names_the_file_and_its_stage(repo):
    for rt, options in (("onnxruntime", None), ("openvino", {"precision": "f32"})):  # missing: ORT and OpenVINO
        with pytest.raises(MissingInputError, match=r"model\.onnx is missing or damaged \(not found\); it is made by"):
            runtime.load_runner("artifacts/variants/student_kd_ort_fp32/model.onnx", rt, 1, options=options)
    path = tiny_onnx(repo / "artifacts/variants/student_kd_ort_fp32/model.onnx")
    assert runtime.OrtRunner(path, threads=1)(np.ones((1, 2), np.float32)).shape == (1, 2)  # the whole file loads
    truncate(path)
    with pytest.raises(
        InputError,
        match=r"^artifacts/variants/student_kd_ort_fp32/model\.onnx is missing or damaged "
        r"\(.+\); it is made by stage 'quantize': run `dvc repro quantize`$",
    ):
        runtime.OrtRunner("artifacts/variants/student_kd_ort_fp32/model.onnx", threads=1)


def test_truncated_pt2_names_the_file_and_its_stage(repo):
    path = repo / "artifacts/variants/student_kd_int8_pt2e/model.pt2"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 the first bytes of a zip, then nothing")
    with pytest.raises(
        InputError,
        match=r"^artifacts/variants/student_kd_int8_pt2e/model\.pt2 is missing or damaged "
        r"\(not a complete \.pt2 zip archive\); it is made by stage 'quantize'",
    ):
        pt2e.load_program("artifacts/variants/student_kd_int8_pt2e/model.pt2")


def test_benchmark_worker_passes_on_the_one_line(repo, root, monkeypatch):
    """The timing process ends with the one-line message; the benchmark raises it as its own."""
    monkeypatch.setenv("PYTHONPATH", str(root))
    path = tiny_onnx(repo / "artifacts/variants/student_kd_ort_fp32/model.onnx")
    truncate(path)
    spec = {"runtime": "onnxruntime", "model": "artifacts/variants/student_kd_ort_fp32/model.onnx"}
    b = {"batch_size": 2, "seconds": 0.01, "min_calls": 1, "warmup": 0}
    with pytest.raises(InputError, match=r"^artifacts/variants/student_kd_ort_fp32/model\.onnx is missing or damaged"):
        benchmark.worker(spec, [1], 64, b, channels_last=False)


def test_missing_variant_json_names_the_stage(repo):
    with pytest.raises(MissingInputError, match=r"artifacts/variants/x_y/variant\.json .*stage 'quantize'"):
        runtime.read_variant("artifacts/variants/x_y")


def test_truncated_json_output_names_its_stage(repo):
    (repo / "metrics").mkdir()
    (repo / "metrics" / "benchmark.json").write_text('{"variants": {')
    with pytest.raises(
        InputError,
        match=r"^metrics/benchmark\.json is missing or damaged \(JSONDecodeError: .+\); "
        r"it is made by stage 'benchmark': run `dvc repro benchmark`$",
    ):
        outputs.read_json("metrics/benchmark.json")


def stage_cli(module, args, cwd, root):
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, env={"PYTHONPATH": str(root)}
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_stage_cli_with_a_missing_teacher(repo, root):
    line = stage_cli(
        "stages.distill", ["data/prepared", "artifacts/teacher/model.pt", "out", "live", "m.json"], repo, root
    )
    assert line == (
        "distill: artifacts/teacher/model.pt is missing or damaged (not found); it is made by stage "
        "'finetune_teacher': run `dvc repro finetune_teacher`"
    )


def test_stage_cli_with_a_truncated_student(repo, root):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base"]["threads"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    truncate(tiny_model(repo / "artifacts" / "student_kd"))
    args = ["data/prepared", "artifacts/student_kd/model.pt", "artifacts/teacher/model.pt", "out", "live", "m.json"]
    line = stage_cli("stages.prune", args, repo, root)
    assert line.startswith("prune: artifacts/student_kd/model.pt is missing or damaged (")
    assert line.endswith("it is made by stage 'distill': run `dvc repro distill`")
    assert not (repo / "out").exists()
