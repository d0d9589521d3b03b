"""Quantization recipes as data: what each kind accepts and its defaults, checked before any work, and `auto`
resolved for the CPU.

A recipe is one entry of `quantize.recipes` in params.yaml and states only what differs from its kind's
defaults, e.g.
    int8_static_pc: {kind: ort_static}                     # every option at the kind's default
    int8_static_pt: {kind: ort_static, per_channel: false}
    ov_int8: {kind: openvino, source: int8_auto}           # int8_auto's ONNX file, run in OpenVINO
Every kind lists the options it takes with their default and allowed values (KINDS below; the cluster,
pt2e and qat kinds keep theirs in lib/clustering.py, lib/pt2e.py and lib/qat.py, DEFAULTS). An unknown
name, option or value stops the stage with the key, the value and what is allowed. `check` returns the
recipe whole (every option, defaults filled in), which is what the variant records. `resolve` turns
`auto` into concrete choices for the CPU the stage runs on and for the model family (transformers get
ViT-safe op types).
"""

from pathlib import Path

from stages.lib.models.families import is_transformer
from stages.lib.params import ParamError, check_choice, check_int
from stages.lib.schema import suggest

BOOL = {True, False}
WEIGHT_TYPES = {"int8", "uint8"}
REDUCE_RANGE = {"auto", True, False}  # auto = 7-bit weights only without VNNI (AVX2/AVX-512 u8s8 sums saturate)
OP_TYPES = {"auto", "all", "vit_safe"}  # auto = vit_safe for transformers (Softmax/LayerNorm/GELU/Add stay float)
# Static QDQ's options: name -> (default, allowed values: a set, or ("int", minimum)).
STATIC = {
    "per_channel": (True, BOOL),  # one weight scale per output channel: depthwise convs need it
    "calibrate_method": ("minmax", {"minmax", "entropy", "percentile"}),
    "calibration_images": (128, ("int", 1)),  # training images; more changes little beyond ~100
    "activation_type": ("auto", {"auto", "uint8", "int8"}),  # auto = uint8 (U8S8, the x86 kernels' format)
    "weight_type": ("int8", WEIGHT_TYPES),
    "reduce_range": ("auto", REDUCE_RANGE),
    "fp32_layers": (0, ("int", 0)),  # the k layers whose INT8 alone costs the logits most stay float
    "op_types": ("auto", OP_TYPES),
}
# Options per kind, as STATIC.
KINDS = {
    "torch": {},  # the model.pt as trained, run in PyTorch eager
    "onnx_fp32": {},  # the same weights exported to ONNX, run in ONNX Runtime FP32
    "onnx_fp16": {},  # FP16 weights and compute, float32 inputs and outputs
    "ort_static": STATIC,  # static QDQ: activation ranges from calibration images
    # Accuracy-controlled static QDQ (lib/sensitivity.py, keep_until_fit): all-INT8 first, then the most
    # sensitive layers back to float one at a time until the paired validation drop fits quantize.max_drop_pt.
    "ort_auto": {k: v for k, v in STATIC.items() if k != "fp32_layers"}
    | {"max_fp32_layers": (8, ("int", 0))},  # the cap: past it the variant keeps the best found, marked unfit
    # An ONNX Runtime variant's file, run in OpenVINO (lib/runtime/openvino): no new file is made. `source` names the
    # recipe whose file it runs (checked by `find`); precision bf16 only where the CPU has BF16/AMX (refused elsewhere).
    "openvino": {"source": ("ort_fp32", ("recipe",)), "precision": ("f32", {"f32", "bf16"})},
    "ort_dynamic": {  # weights INT8, activation ranges computed per call
        "per_channel": (True, BOOL),
        "weight_type": ("int8", WEIGHT_TYPES),
        "reduce_range": ("auto", REDUCE_RANGE),
        "op_types": ("auto", OP_TYPES),
    },
}
# Kinds whose module checks its own options (and fills its defaults): lib/clustering.py, lib/pt2e.py, lib/qat.py.
DELEGATED = {"cluster", "pt2e", "qat"}
# How each kind's file is run (runtime.RUNTIMES).
RUNTIME = {
    "torch": "torch",
    "onnx_fp32": "onnxruntime",
    "onnx_fp16": "onnxruntime",
    "ort_static": "onnxruntime",
    "ort_auto": "onnxruntime",
    "ort_dynamic": "onnxruntime",
    "openvino": "openvino",
    "cluster": "torch",
    "pt2e": "torch_pt2e",
    "qat": "onnxruntime",
}

# Kinds whose variant is an ONNX file OpenVINO can run as it is (a kind `openvino` recipe's `source`).
ONNX_FILE_KINDS = {"onnx_fp32", "onnx_fp16", "ort_static", "ort_auto", "ort_dynamic", "qat"}

# ViT-safe INT8: only the matrix multiplies are quantized. Softmax, LayerNorm, GELU and the residual
# Adds stay float: their outputs have outliers that one INT8 scale per tensor cannot hold.
VIT_SAFE_OPS = ["MatMul", "Gemm", "Conv"]

CPU_FLAGS_FILE = "/proc/cpuinfo"


def check(name, recipe, recipes_key="quantize.recipes"):
    """The recipe `name` from params, checked and whole (the kind's defaults for what it does not state):
    unknown kind, option or value -> ParamError naming them."""
    key = f"{recipes_key}.{name}"
    if not isinstance(recipe, dict) or "kind" not in recipe:
        raise ParamError(f"{key}={recipe!r} is not allowed; expected a mapping with 'kind', one of {sorted(KINDS)}")
    kind = check_choice(f"{key}.kind", recipe["kind"], set(KINDS) | DELEGATED)
    if kind == "cluster":
        from stages.lib.quantization import clustering

        return clustering.check_recipe(key, recipe)
    if kind == "pt2e":
        from stages.lib.quantization import pt2e

        return pt2e.check_recipe(key, recipe)
    if kind == "qat":
        from stages.lib.quantization import qat

        return qat.check_recipe(key, recipe)
    options = {k: v for k, v in recipe.items() if k != "kind"}
    allowed = KINDS[kind]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ParamError(
            f"{key}.{unknown[0]}={options[unknown[0]]!r}: kind {kind!r} has no option {unknown[0]!r}{suggest(unknown[0], allowed)}; "
            f"expected options {sorted(allowed)}"
        )
    whole = {"kind": kind, **{opt: options.get(opt, default) for opt, (default, _) in allowed.items()}}
    for opt, (_, rule) in allowed.items():
        if rule == ("recipe",):  # another recipe's name: `find` checks it against the menu
            if not isinstance(whole[opt], str):
                raise ParamError(f"{key}.{opt}={whole[opt]!r} is not allowed; expected a recipe name")
        elif isinstance(rule, tuple):
            check_int(f"{key}.{opt}", whole[opt], rule[1])
        else:
            check_choice(f"{key}.{opt}", whole[opt], rule)
    return whole


def find(recipes, name):
    """`quantize.recipes[name]`, checked; an unknown name lists the recipes there are."""
    if not isinstance(recipes, dict) or name not in recipes:
        known = sorted(recipes) if isinstance(recipes, dict) else []
        raise ParamError(f"recipe={name!r} is not in quantize.recipes; expected one of {known}")
    recipe = check(name, recipes[name])
    if recipe["kind"] == "openvino":
        source = recipe["source"]
        files = sorted(n for n, r in recipes.items() if isinstance(r, dict) and r.get("kind") in ONNX_FILE_KINDS)
        if source not in files:
            raise ParamError(
                f"quantize.recipes.{name}.source={source!r}: expected a recipe that makes an ONNX file, one of {files}"
            )
    return recipe


def cpu_int8_features(path=CPU_FLAGS_FILE):
    """Which x86 INT8 dot-product instructions this CPU has (from /proc/cpuinfo flags)."""
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {
        "cpu_avx2": "avx2" in flags,
        "cpu_avx512": "avx512f" in flags,
        "cpu_avx512_vnni": "avx512_vnni" in flags,
        "cpu_avx_vnni": "avx_vnni" in flags,
        "cpu_amx_int8": "amx_int8" in flags,
        "cpu_vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
    }


def resolve(recipe, arch, cpu):
    """Concrete settings: `auto` replaced for this CPU and model family, with the reason recorded.

    Activations UINT8, weights INT8 (U8S8) is the format ORT's x86 INT8 kernels are built for. Without
    VNNI, those kernels add pairs of u8 x s8 products in 16 bits (VPMADDUBSW), which can saturate:
    ORT's guidance is 7-bit weights (reduce_range) there. With VNNI (or AMX) the sum is 32-bit: no need.
    """
    out = dict(recipe)
    if "activation_type" in out and out["activation_type"] == "auto":
        out["activation_type"] = "uint8"
    if out.get("reduce_range") == "auto":
        out["reduce_range"] = not cpu["cpu_vnni"]
    if out.get("op_types") == "auto":
        out["op_types"] = "vit_safe" if is_transformer(arch) else "all"
    return out


def static_options(setting):
    """The keyword arguments of quantization.quantize_static_qdq that a resolved static recipe sets."""
    names = ("per_channel", "calibrate_method", "activation_type", "weight_type", "reduce_range")
    return {k: setting[k] for k in names}


def op_types(setting):
    """`op_types_to_quantize` for ORT: None = every op type ORT can quantize."""
    return VIT_SAFE_OPS if setting == "vit_safe" else None
