"""The same model gives byte-identical model.pt, fp32.onnx and int8.onnx, wherever the code lives.

DVC decides what to rerun by file hashes: a non-deterministic export would rerun evaluate and
benchmark of an unchanged model in every fresh clone (the exporter used to embed absolute
source paths). Two copies of the code in two directories export and quantize the same
checkpoint in separate processes, with different string hash seeds (ORT wrote its calibration cache in
the order of a set of tensor names); the files must be identical.
"""

import hashlib
import os
import shutil
import subprocess
import sys

import torch

from stages.lib import models
from tests.conftest import ROOT

SCRIPT = """
import sys
import numpy as np
from stages.lib import models, quantization
model, _ = models.load(sys.argv[1])
fp32 = quantization.export_onnx(model, sys.argv[2] + "/fp32.onnx", 64)
calib = np.random.default_rng(0).random((8, 3, 64, 64), dtype=np.float32)
quantization.quantize_static_qdq(fp32, sys.argv[2] + "/int8.onnx", calib, cache=sys.argv[2] + "/calibration.json")
"""


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_and_int8_are_byte_identical_across_clones(tmp_path):
    torch.manual_seed(0)
    model = models.build("tf_efficientnet_lite0", 2)
    card = models.make_card("tf_efficientnet_lite0", "none", 64, model, ["good", "defect"])
    models.save(tmp_path / "ckpt", model, card)
    outs = []
    for clone, hash_seed in (("clone_a", "0"), ("nested/clone_b", "1")):
        code = tmp_path / clone
        shutil.copytree(ROOT / "stages", code / "stages", ignore=shutil.ignore_patterns("__pycache__"))
        out = tmp_path / f"out_{len(outs)}"
        out.mkdir()
        subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tmp_path / "ckpt/model.pt"), str(out)],
            cwd=code,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            check=True,
            capture_output=True,
        )
        outs.append(out)
    for name in ("fp32.onnx", "int8.onnx", "calibration.json"):
        assert sha(outs[0] / name) == sha(outs[1] / name), name


SAVE = """
import sys
import torch
from stages.lib import models
torch.manual_seed(0)
model = models.build("tf_efficientnet_lite0", 2)
models.save(sys.argv[1], model, models.make_card("tf_efficientnet_lite0", "none", 64, model, ["good", "defect"]))
"""


def test_model_pt_is_byte_identical_across_processes_and_folders(tmp_path):
    """Same weights, same card -> the same model.pt bytes (the atomic write's temporary name leaves no trace)."""
    outs = [tmp_path / "a", tmp_path / "nested" / "b"]
    for out in outs:
        subprocess.run([sys.executable, "-c", SAVE, str(out)], cwd=ROOT, check=True, capture_output=True)
    assert sha(outs[0] / "model.pt") == sha(outs[1] / "model.pt")
    assert sorted(p.name for p in outs[0].iterdir()) == ["card.json", "model.pt"]  # no temporary folder left
