"""Weight sparsity: unstructured magnitude pruning and 2:4 semi-structured sparsity.

Unlike channel pruning, these zero weights inside dense tensors: the model keeps its shapes,
model.pt and ONNX files keep their size, and the CPU kernels used here (PyTorch eager, ONNX
Runtime) compute the zeros like any other weight, so they are neither smaller nor faster on
this machine. What sparsity buys is a smaller *compressed* file (measured here as the deflated
state dict and as a bitmask + non-zero values) and, for 2:4 on GPUs with sparse tensor cores
(compute capability >= 8.0), faster matrix products (`time_semi_structured`).

Masks are applied with torch.nn.utils.prune (weight = weight_orig * mask in a forward pre-hook),
so a fine-tune cannot revive a pruned weight; `make_permanent` bakes them into plain weights.
"""

import io
import logging
import time
import zlib

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from stages.lib import params, schema

log = logging.getLogger(__name__)

PATTERNS = ("unstructured", "2:4")
# The keys each pattern takes: 2:4 is always half zeros, so a `sparsity` there would be ignored.
KEYS = {"unstructured": {"pattern", "sparsity"}, "2:4": {"pattern"}}


def check(key, spec):
    """A `sparsify.models.<name>` entry: {pattern: unstructured, sparsity: 0.5} or {pattern: '2:4'}."""
    if not isinstance(spec, dict):
        raise params.ParamError(f"{key}={spec!r} is not allowed; expected a mapping like {{pattern: '2:4'}}")
    params.check_choice(f"{key}.pattern", spec.get("pattern"), set(PATTERNS))
    schema.check_keys(key, spec, KEYS[spec["pattern"]])
    if spec["pattern"] == "unstructured":
        params.check_range(f"{key}.sparsity", spec.get("sparsity"), 0, 1, lo_inclusive=False, hi_inclusive=False)
    return spec


def target_layers(model):
    """Conv and linear layers whose weights are sparsified: all but the stem and the classifier."""
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    protected = {id(stem), id(model.net.get_classifier())}
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in protected]


def magnitude_masks(model, sparsity):
    """Global L1: the `sparsity` share of the smallest |w| over all target layers is masked out."""
    layers = target_layers(model)
    scores = torch.cat([m.weight.detach().abs().flatten() for m in layers])
    k = round(sparsity * scores.numel())
    if k == 0:
        return {m: torch.ones_like(m.weight) for m in layers}
    threshold = torch.kthvalue(scores, k).values
    masks = {m: (m.weight.detach().abs() > threshold).float() for m in layers}
    # Ties at the threshold could mask more than k; keep exactly the count asked for.
    extra = int(sum(int((mask == 0).sum()) for mask in masks.values())) - k
    if extra > 0:
        for m, mask in masks.items():
            ties = ((m.weight.detach().abs() == threshold) & (mask == 0)).flatten().nonzero().flatten()
            take = ties[: min(extra, len(ties))]
            mask.view(-1)[take] = 1.0
            extra -= len(take)
    return masks


def as_groups(weight):
    """View a weight as (rows, input) with consecutive input channels last: Linear (out, in) as is;
    Conv (out, in, kh, kw) -> (out, kh, kw, in), the NHWC implicit-GEMM order sparse convs use."""
    return weight if weight.dim() == 2 else weight.permute(0, 2, 3, 1)


def semi_structured_masks(model):
    """2:4 masks: in every four consecutive input weights the two smallest |w| are zero.

    Only layers whose input dimension (per group) is a multiple of 4 qualify: depthwise convs
    (one input channel per group) and the stem keep dense weights.
    """
    masks = {}
    for m in target_layers(model):
        w = as_groups(m.weight.detach())
        if w.shape[-1] % 4:
            continue
        groups = w.abs().reshape(-1, 4)
        keep = torch.zeros_like(groups).scatter_(1, groups.topk(2, dim=1).indices, 1.0)
        mask = keep.reshape(w.shape)
        masks[m] = mask if m.weight.dim() == 2 else mask.permute(0, 3, 1, 2).contiguous()
    return masks


def holds_2_4(weight):
    """True when every group of four consecutive input weights has at least two zeros."""
    w = as_groups(weight.detach())
    return bool(((w.reshape(-1, 4) == 0).sum(1) >= 2).all())


def apply_masks(masks):
    """Attach masks: weight = weight_orig * mask from now on (fine-tuning cannot revive zeros)."""
    for m, mask in masks.items():
        torch_prune.custom_from_mask(m, "weight", mask)


def make_permanent(model):
    """Remove the pruning re-parametrisation: plain (dense) weights that hold the zeros."""
    for m in model.modules():
        if torch_prune.is_pruned(m) and hasattr(m, "weight_orig"):
            torch_prune.remove(m, "weight")
    return model


def sparsity_stats(model, masks):
    """Zero shares: of the sparsified layers and of every conv/linear weight; layers touched."""
    sparsified = [m.weight for m in masks]
    all_w = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = lambda ws: sum(int((w == 0).sum()) for w in ws)  # noqa: E731
    total = lambda ws: sum(w.numel() for w in ws)  # noqa: E731
    return {
        "sparsity_target_layers": round(zeros(sparsified) / max(total(sparsified), 1), 4),
        "sparsity_all_weights": round(zeros(all_w) / total(all_w), 4),
        "sparsified_layers": len(masks),
        "dense_layers": len(all_w) - len(masks),
    }


def sizes(model):
    """Model size three ways (MB): the dense state dict as saved, that file deflated (zlib level 9,
    what a zip of model.pt gives), and a bitmask + non-zero float32 values for every tensor."""
    buf = io.BytesIO()
    state = model.state_dict()
    torch.save(state, buf)
    raw = buf.getvalue()
    bitmask = sum(t.numel() / 8 + int((t != 0).sum()) * t.element_size() for t in state.values())
    return {
        "size_dense_mb": round(len(raw) / 1e6, 3),
        "size_deflate_mb": round(len(zlib.compress(raw, 9)) / 1e6, 3),
        "size_bitmask_mb": round(bitmask / 1e6, 3),
    }


def gemm_weights(model):
    """The 2:4-sparse weights as GEMM matrices (out, in): linear layers and 1x1 convs."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1):
            w = m.weight.detach().flatten(1)
            if w.shape[1] % 4 == 0 and holds_2_4(w):
                out[name] = w
    return out


def time_semi_structured(model, tokens=4096, repeats=50, device="cuda"):
    """Per-layer fp16 GEMM time, dense vs torch.sparse.to_sparse_semi_structured, on a CUDA GPU
    with compute capability >= 8.0 (sparse tensor cores). Skips cleanly elsewhere.

    `tokens` rows of input per GEMM (a 1x1 conv on a 64x64 map is 4096 rows). Returns a dict with
    per-layer and total milliseconds, or {"skipped": reason}.
    """
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: 2:4 sparse kernels need a GPU with compute capability >= 8.0"}
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 0):
        return {"skipped": f"compute capability {cap[0]}.{cap[1]} < 8.0: no sparse tensor cores"}
    from torch.sparse import to_sparse_semi_structured

    layers, skipped = {}, {}
    for name, w in gemm_weights(model).items():
        dense = w.to(device, torch.float16).contiguous()
        x = torch.randn(tokens, dense.shape[1], device=device, dtype=torch.float16)
        try:
            sparse = to_sparse_semi_structured(dense)
            torch.testing.assert_close(
                torch.nn.functional.linear(x, sparse), torch.nn.functional.linear(x, dense), rtol=1e-2, atol=1e-1
            )
        except (RuntimeError, ValueError, AssertionError) as e:  # shape constraints of the sparse kernels
            skipped[name] = str(e).splitlines()[0][:120]
            continue
        layers[name] = {
            "shape": list(dense.shape),
            "dense_ms": _time(dense, x, repeats),
            "sparse_ms": _time(sparse, x, repeats),
        }
    dense_ms = sum(v["dense_ms"] for v in layers.values())
    sparse_ms = sum(v["sparse_ms"] for v in layers.values())
    return {
        "device": torch.cuda.get_device_name(device),
        "tokens": tokens,
        "layers_timed": len(layers),
        "layers_skipped": skipped,
        "dense_ms_total": round(dense_ms, 4),
        "sparse_ms_total": round(sparse_ms, 4),
        "speedup_x": round(dense_ms / sparse_ms, 3) if sparse_ms else None,
        "layers": layers,
    }


def _time(weight, x, repeats):
    for _ in range(5):
        torch.nn.functional.linear(x, weight)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, weight)
    torch.cuda.synchronize()
    return round((time.perf_counter() - start) / repeats * 1000, 4)
