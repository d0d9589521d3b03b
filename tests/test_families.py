"""The model families beyond the default EfficientNet-Lite pair, at the pipeline's input size.

Hub families are built here from random initialisation (tests download nothing); each takes timm's
preprocessing, trains one step, exports to ONNX, quantizes with its family's INT8 recipe and prunes.
ViT-Tiny's real weights (../shared) check the position-embedding resampling at another input size.
"""

import numpy as np
import pytest
import timm
import torch
import yaml

from stages.lib import models, pruning, quantization, runtime, training
from stages.lib.models import families
from stages.lib.quantization import recipes
from tests.conftest import ROOT, SHARED

SIZE = 64  # a tiny profile: 4x4 patches of 16 px for the ViTs, 2x2 final maps for the CNNs
# timm name -> model arguments of the tiny profile: the family's widths, heads and blocks, fewer blocks deep
HUB = {
    "vit_base_patch16_224": {"depth": 2},
    "vit_small_patch16_224": {"depth": 2},
    "deit_small_patch16_224": {"depth": 2},
    "mobilevit_s": {},
    "convnext_base": {"depths": (1, 1, 1, 1)},
    "convnext_tiny": {"depths": (1, 1, 1, 1)},
    "efficientnet_b0": {},
}
VIT_TINY = SHARED / "weights" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
PRUNE = {
    "importance": "l2",
    "scope": "uniform",
    "ratio": 0.25,
    "max_ratio": 0.6,
    "iterative_steps": 1,
    "round_to": 8,
    "epochs": 0,
}


@pytest.mark.parametrize("name", HUB)
def test_hub_family_builds_trains_exports_quantizes_and_prunes(name, tmp_path):
    torch.manual_seed(0)
    model = models.build(name, 2, image_size=SIZE, **HUB[name])
    cfg = timm.models.get_pretrained_cfg(name)  # what weights=timm would bring: mean, std, interpolation
    card = models.make_card(name, "timm", SIZE, model, ["good", "defect"])
    np.testing.assert_allclose(card["mean"], cfg.mean, rtol=1e-6)
    np.testing.assert_allclose(card["std"], cfg.std, rtol=1e-6)
    assert card["pretrained_interpolation"] == cfg.interpolation and card["interpolation"] == "bilinear"

    x, y = torch.rand(4, 3, SIZE, SIZE), torch.tensor([0, 1, 0, 1])
    head = model.net.get_classifier().weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model.train()(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(head, model.net.get_classifier().weight)
    model.eval()

    fp32 = quantization.export_onnx(model, tmp_path / "fp32.onnx", SIZE)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(runtime.load_runner(fp32, "onnxruntime", 2)(x.numpy()), ref, rtol=1e-3, atol=1e-3)

    setting = recipes.resolve({"op_types": "auto"}, name, {"cpu_vnni": True})
    assert setting["op_types"] == ("vit_safe" if families.is_transformer(name) else "all")
    int8 = quantization.quantize_static_qdq(
        fp32, tmp_path / "int8.onnx", x.numpy(), op_types=recipes.op_types(setting["op_types"])
    )
    int8_ops = set(quantization.int8_nodes(int8).values())
    assert int8_ops and (not families.is_transformer(name) or int8_ops <= set(recipes.VIT_SAFE_OPS))
    out = runtime.load_runner(int8, "onnxruntime", 2)(x.numpy())
    assert out.shape == (4, 2) and np.isfinite(out).all()

    before = models.param_count(model)
    pruned, stats = pruning.prune_structured(model, SIZE, PRUNE)
    assert models.param_count(pruned) < before and stats["macs_after_m"] < stats["macs_before_m"]
    assert pruned(x).shape == (4, 2)


def test_card_records_timm_preprocessing_for_the_default_pair():
    for name in ("tf_efficientnet_lite0", "tf_efficientnet_lite2"):
        card = models.make_card(name, "pypi", SIZE, models.build(name, 2), ["good", "defect"])
        assert card["mean"] == [0.5] * 3 and card["pretrained_interpolation"] == "bicubic"


def test_vit_at_another_input_size_resamples_the_position_embedding(tmp_path):
    if not VIT_TINY.is_file():
        pytest.skip(f"ViT-Tiny weights not found at {VIT_TINY} (../shared is optional)")
    model = models.pretrained("vit_tiny_patch16_224", str(VIT_TINY), num_classes=1000, image_size=128)
    assert model.net.pos_embed.shape == (1, 1 + 8 * 8, 192)  # class token + 8x8 patches of 16 px
    card = models.make_card("vit_tiny_patch16_224", str(VIT_TINY), 128, model, [str(i) for i in range(1000)])
    assert card["adapted_to_input"] == {"pos_embed": {"from_grid": [14, 14], "to_grid": [8, 8], "method": "bicubic"}}

    # The resampled embedding still knows where things are: the same photo at 128 px gives logits that agree
    # with the 224 px model's better than those of the same weights with the patch positions shuffled.
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("china.jpg")
    full = models.pretrained("vit_tiny_patch16_224", str(VIT_TINY), num_classes=1000, image_size=224).eval()
    shuffled = models.pretrained("vit_tiny_patch16_224", str(VIT_TINY), num_classes=1000, image_size=128).eval()
    order = torch.randperm(8 * 8, generator=torch.Generator().manual_seed(0)) + 1  # the class token stays first
    shuffled.net.pos_embed.data[:, 1:] = shuffled.net.pos_embed.data[:, order]
    logits = {}
    for name, net, size in (("224", full, 224), ("128", model.eval(), 128), ("shuffled", shuffled, 128)):
        pixels = np.asarray(Image.fromarray(photo).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
        with torch.no_grad():
            logits[name] = net(torch.from_numpy(pixels).permute(2, 0, 1)[None])[0].numpy()
    agree = {k: np.corrcoef(logits["224"], logits[k])[0, 1] for k in ("128", "shuffled")}
    assert agree["128"] > 0.8 and agree["128"] > agree["shuffled"] + 0.1, agree
    assert len(set(logits["128"].argsort()[-5:]) & set(logits["224"].argsort()[-5:])) >= 3

    models.save(tmp_path, model, card)  # load() builds the model at the card's input size
    loaded, loaded_card = models.load(tmp_path / "model.pt")
    assert loaded.net.pos_embed.shape == model.net.pos_embed.shape and loaded_card["input_size"] == [3, 128, 128]


def test_timm_hub_weights_record_the_resampled_grid(monkeypatch):
    """weights=timm at 128 px: timm resamples itself (checked without a download: pretrained=False)."""
    create = timm.create_model
    monkeypatch.setattr(models.timm, "create_model", lambda *a, **kw: create(*a, **{**kw, "pretrained": False}))
    model = models.pretrained("vit_small_patch16_224", "timm", num_classes=2, image_size=128)
    assert model.adapted == {"pos_embed": {"from_grid": [14, 14], "to_grid": [8, 8], "method": "bicubic"}}
    assert model(torch.rand(1, 3, 128, 128)).shape == (1, 2)


def test_cnn_at_any_size_is_built_as_is():
    model = models.pretrained("tf_efficientnet_lite0", "pypi", num_classes=2, image_size=96)
    assert model.adapted == {} and model(torch.rand(1, 3, 96, 96)).shape == (1, 2)


def test_bn_scale_importance_is_refused_for_a_vit():
    model = models.build("vit_tiny_patch16_224", 2, image_size=SIZE)
    with pytest.raises(models.ParamError, match=r"prune\.importance='bn_scale'.*ViT"):
        pruning.check_for_model("bn_scale", model)
    where = "families.transformer.prune_importance"  # how the stage names it when prune.importance is auto
    with pytest.raises(models.ParamError, match=rf"^{where}='bn_scale'"):
        pruning.check_for_model("bn_scale", model, where)
    pruning.check_for_model("l2", model)  # l2 is fine
    with pytest.raises(models.ParamError, match=r"prune\.scope='greedy'.*CNN's stages.*'uniform' or 'global'"):
        pruning.check_for_model("l2", model, scope="greedy")  # heads go alike in every block: nothing to allocate


def test_vit_prunes_through_the_stage_path_with_a_finetune():
    """prune_structured on a ViT: heads and MLP width go, the fine-tune callback runs on the smaller model."""
    torch.manual_seed(0)
    model = models.build("vit_tiny_patch16_224", 2, image_size=SIZE)
    seen = []

    def finetune(m, step, epochs):
        seen.append((step, epochs, m.net.blocks[0].attn.num_heads))
        return m

    cfg = {**PRUNE, "ratio": 0.34, "epochs": 2}
    pruned, stats = pruning.prune_structured(model, SIZE, cfg, finetune)
    assert seen == [(0, 2, 2)]  # one of three heads gone before the fine-tune
    block = pruned.net.blocks[0]
    assert block.attn.head_dim == 64 and block.mlp.fc1.out_features < 768
    assert pruned(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 2) and stats["params_ratio"] < 0.8


FAMILIES = {"cnn": {"lr": 0.001, "prune_importance": "l2"}, "transformer": {"lr": 0.0001, "prune_importance": "taylor"}}


@pytest.mark.parametrize(
    "arch,family",
    [
        ("vit_tiny_patch16_224", "transformer"),
        ("deit_small_patch16_224", "transformer"),
        ("mobilevit_s", "transformer"),
        ("convnext_tiny", "cnn"),
        ("mobileone_s0", "cnn"),
        ("tf_efficientnet_lite0", "cnn"),
    ],
)
def test_auto_knobs_take_the_family_value_and_a_given_value_wins(arch, family):
    assert families.family(arch) == family
    assert families.lr({"lr": "auto"}, FAMILIES, arch) == FAMILIES[family]["lr"]
    assert families.lr({"lr": 0.02}, FAMILIES, arch) == 0.02
    assert families.importance({"importance": "auto"}, FAMILIES, arch) == FAMILIES[family]["prune_importance"]
    assert families.importance({"importance": "random"}, FAMILIES, arch) == "random"


@pytest.mark.parametrize(
    "change,message",
    [
        (("transformer", "lr", 0), r"families\.transformer\.lr=0 is out of range"),
        (("cnn", "learning_rate", 0.1), r"families\.cnn\.learning_rate is not a known key"),
        (("cnn", "prune_importance", "magic"), r"families\.cnn\.prune_importance='magic' is not allowed"),
    ],
)
def test_bad_family_values_are_named(change, message):
    fams = {name: dict(values) for name, values in FAMILIES.items()}
    family, key, value = change
    fams[family][key] = value
    prune = yaml.safe_load((ROOT / "params.yaml").read_text())["prune"]
    with pytest.raises(models.ParamError, match=message):
        families.check(fams)
        pruning.check(prune, fams=fams)


def test_train_lr_takes_auto_or_a_number():
    recipe = {"epochs": 1, "batch_size": 8, "lr": "auto", "weight_decay": 0.0, "processes": 1}
    training.check_recipe(recipe)
    with pytest.raises(models.ParamError, match=r"train\.lr='fast' is not allowed; expected 'auto'"):
        training.check_recipe({**recipe, "lr": "fast"})
    with pytest.raises(models.ParamError, match=r"train\.lr=2 is out of range"):
        training.check_recipe({**recipe, "lr": 2})
