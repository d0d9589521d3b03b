"""PyTorch-native INT8 with PT2E (torchao) and the X86 Inductor quantizer, run compiled on CPU.

The flow torchao documents for x86 CPUs:
    torch.export -> prepare_pt2e(X86InductorQuantizer, default config) -> calibrate on training
    images -> convert_pt2e -> torch.export.save (.pt2)
and at run time: torch.export.load -> torch.compile (Inductor, freezing on) under no_grad. The
default config is static INT8: activations uint8 asymmetric per tensor, weights int8 symmetric per
output channel, the scheme of the ONNX Runtime recipe, so the two runtimes are compared on the same
arithmetic. Inductor then swaps each dequantize -> conv -> quantize for a oneDNN int8 convolution
(with ReLU6 / residual-add fused); that only happens when torchao's x86 lowering passes are
registered, which importing `x86_inductor_quantizer` does (this module does it for the runner).

torch.ao.quantization is deprecated in torch 2.15; this uses torchao (pinned in requirements.txt).

Compile cost: the first call at each batch size compiles (about a minute for Lite0 on 2 busy cores).
Inductor's FX graph cache cannot store this graph ("mkldnn tensors unpickleable": the prepacked
int8 weights), so every fresh process re-runs the graph passes; the C++ kernels it builds are
cached on disk under the Inductor cache directory, which cut a fresh process's first call from
~70 s to ~22 s here (2 loaded cores, Lite0 at 64 px, batch 4). Point `cache_dir` (or the
TORCHINDUCTOR_CACHE_DIR environment variable) at one folder for every process that runs the model.

Recipe (params.yaml, `quantize.recipes.<name>`), e.g.
    int8_pt2e: {kind: pt2e, calibration_images: 128}
  calibration_images - training images the observers see (min-max ranges; the same count as the
                       ONNX Runtime recipe makes the two comparable)
Runtime: "torch_pt2e" (`Pt2eRunner`), CPU only. Size to report: the .pt2 file (int8 weights).
"""

import logging
import os
import zipfile
from pathlib import Path

import torch
from tqdm import tqdm

from stages.lib import errors, params
from stages.lib.outputs import atomic

log = logging.getLogger(__name__)

KIND = "pt2e"
RUNTIME = "torch_pt2e"
DEFAULTS = {"calibration_images": 128}


def check_recipe(key, recipe):
    """Fail fast on a bad PT2E recipe (`key` is its params path)."""
    recipe = params.with_defaults(key, recipe, DEFAULTS, "pt2e")
    params.check_int(f"{key}.calibration_images", recipe["calibration_images"], 1)
    return recipe


def check_installed(key, kind):
    """torchao's X86 quantizer builds (kinds pt2e and qat). Checked for the recipes that run (the quantize stage's
    own; check_params's compared ones), not for every recipe of the menu: its imports take ~2 s."""
    try:
        quantizer(is_qat=kind == "qat")
    except ImportError as e:
        raise params.ParamError(f"{key}.kind={kind!r} needs torchao: pip install -r requirements.txt ({e})") from e


def quantizer(is_qat=False):
    """The X86 Inductor quantizer (also used by QAT, with fake-quant observers for training)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq  # also registers the lowering

    q = xiq.X86InductorQuantizer()
    q.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat))
    return q


def _export(model, example):
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def quantize(model, calib_x, batch_size=32):
    """INT8 ExportedProgram of a float model (NCHW float32 in [0, 1]), calibrated on `calib_x`."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    calib_x = torch.as_tensor(calib_x, dtype=torch.float32)
    model = model.eval()
    prepared = prepare_pt2e(_export(model, calib_x[:2]).module(), quantizer())
    with torch.no_grad():
        for i in tqdm(range(0, len(calib_x), batch_size), desc="pt2e calibration", leave=False):
            prepared(calib_x[i : i + batch_size])
    converted = convert_pt2e(prepared)
    _drop_unused_attributes(converted)
    return _export(converted, calib_x[:2])


def _drop_unused_attributes(gm):
    """convert_pt2e folds each weight into an int8 constant but leaves the float parameter on the
    module; re-exporting would store both (a 25 MB file for Lite0 instead of 6.6 MB)."""
    used = {node.target for node in gm.graph.nodes if node.op == "get_attr"}
    names = [name for name, _ in gm.named_parameters()] + [name for name, _ in gm.named_buffers()]
    for name in names:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr)


def save(program, path):
    with atomic(path) as tmp:
        torch.export.save(program, str(tmp))
    return Path(path)


def load_program(path):
    """The saved ExportedProgram; a missing or damaged file is an InputError naming the stage that makes it."""
    if not Path(path).is_file() or not zipfile.is_zipfile(path):  # first: torch logs a traceback on a bad file
        raise errors.damaged(path, "not found" if not Path(path).exists() else "not a complete .pt2 zip archive")
    try:
        return torch.export.load(str(path))
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise errors.damaged(path, errors.reason(e)) from e


def weight_count(program):
    """Weights held (int8 and float), without quantization scales and zero points."""
    tensors = {**program.state_dict, **program.constants}
    return sum(t.numel() for name, t in tensors.items() if not name.startswith(("_scale_", "_zero_point_")))


class Pt2eRunner:
    """Same interface as runtime.TorchRunner; runs the .pt2 compiled by Inductor (freezing on).

    `cache_dir` (default: $TORCHINDUCTOR_CACHE_DIR, else Inductor's own default) is where compiled
    kernels are cached across processes. Each new batch size compiles once (`dynamic=False`:
    kernels specialised to the shape, as a deployment with a fixed batch would have them).
    """

    def __init__(self, path, threads, device="cpu", channels_last=False, cache_dir=None):
        if device != "cpu":
            raise ValueError(f"PT2E X86 INT8 runs on CPU only, not device={device!r}")
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir).resolve())
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        self.torch, self.device = torch, device
        quantizer()
        program = load_program(path)
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True  # as torchao's x86 tutorial; options={"freezing": True} failed here
        self.model = torch.compile(program.module(), dynamic=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.param_count = weight_count(program)
        self.settings = {
            "threads": threads,
            "interop_threads": torch.get_num_interop_threads(),
            "channels_last": channels_last,
            "device": device,
            "torch": torch.__version__,
            "mode": "pt2e int8, torch.compile(inductor, freezing, dynamic=False), no_grad",
            "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"),
            "torchao": _torchao_version(),
        }

    def __call__(self, x):
        with torch.no_grad():
            xt = torch.from_numpy(x).contiguous(memory_format=self.memory_format)
            return self.model(xt).float().numpy()


def _torchao_version():
    import torchao

    return torchao.__version__
