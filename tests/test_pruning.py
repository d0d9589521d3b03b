import torch

from stages.lib import models
from stages.lib.pruning import prune_channels


def test_structured_pruning_makes_model_smaller_and_keeps_outputs():
    torch.manual_seed(0)
    model = models.build("tf_efficientnet_lite0", 2).eval()
    before = models.param_count(model)
    model, stats = prune_channels(model, ratio=0.5, image_size=64, round_to=8)
    after = models.param_count(model)
    assert after < 0.6 * before
    assert stats["params_after_m"] < stats["params_before_m"] and stats["macs_after_m"] < stats["macs_before_m"]
    assert model(torch.rand(3, 3, 64, 64)).shape == (3, 2)
    assert model.net.get_classifier().out_features == 2  # the classifier is never pruned


def test_pruned_channels_are_multiples_of_round_to():
    model, _ = prune_channels(models.build("tf_efficientnet_lite0", 2).eval(), ratio=0.3, image_size=64, round_to=8)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    assert all(c.out_channels % 8 == 0 for c in convs)


def test_zero_ratio_keeps_everything():
    model = models.build("tf_efficientnet_lite0", 2).eval()
    before = models.param_count(model)
    model, stats = prune_channels(model, ratio=0.0, image_size=64)
    assert models.param_count(model) == before and stats["params_ratio"] == 1.0


def test_pruned_model_survives_save_and_load(tmp_path):
    model, _ = prune_channels(models.build("tf_efficientnet_lite0", 2).eval(), ratio=0.4, image_size=64)
    models.save(tmp_path, model, models.make_card("tf_efficientnet_lite0", "pypi", 64, model, ["good", "defect"]))
    loaded, card = models.load(tmp_path / "model.pt")
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    assert card["param_count"] == models.param_count(loaded)
