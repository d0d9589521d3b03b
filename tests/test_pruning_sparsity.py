"""Unstructured and 2:4 weight sparsity: stated sparsity, pattern, masks survive fine-tuning."""

import pytest
import torch
import torch.nn.functional as F

from stages import sparsify
from stages.lib import models
from stages.lib.params import ParamError
from stages.lib.pruning import sparsity

SIZE = 64


@pytest.fixture
def lite0():
    torch.manual_seed(0)
    return models.build("tf_efficientnet_lite0", 2).eval()


def finetune(model, steps=3):
    """A few real AdamW steps (weight decay on): a pruned weight must not come back."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.rand(4, 3, SIZE, SIZE, generator=gen), torch.randint(0, 2, (4,), generator=gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("target", [0.5, 0.7, 0.9])
def test_global_magnitude_masks_give_the_stated_sparsity_and_survive_finetuning(lite0, target):
    masks = sparsity.magnitude_masks(lite0, target)
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    assert zeros / sum(m.numel() for m in masks.values()) == pytest.approx(target, abs=1e-4)
    sparsity.apply_masks(masks)
    pruned_at = {layer: mask == 0 for layer, mask in masks.items()}
    model = sparsity.make_permanent(finetune(lite0))
    for layer, zero in pruned_at.items():
        assert (layer.weight[zero] == 0).all()  # zeros stay zero
        assert (layer.weight[~zero] != 0).float().mean() > 0.99  # the kept weights trained on
    assert sparsity.sparsity_stats(model, masks)["sparsity_target_layers"] >= target - 1e-4
    assert model(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 2)
    assert model.net.conv_stem not in masks and model.net.get_classifier() not in masks


def test_2_4_pattern_holds_in_every_group_of_four_after_finetuning(lite0):
    masks = sparsity.semi_structured_masks(lite0)
    assert masks and all(m.groups == 1 for m in masks)  # depthwise convs have 1 input channel: left dense
    sparsity.apply_masks(masks)
    model = sparsity.make_permanent(finetune(lite0))
    for layer in masks:
        w = sparsity.as_groups(layer.weight.detach()).reshape(-1, 4)
        assert ((w == 0).sum(1) == 2).all()  # exactly two of every four consecutive input weights
        assert sparsity.holds_2_4(layer.weight)
    assert sparsity.sparsity_stats(model, masks)["sparsity_target_layers"] == pytest.approx(0.5)


def test_2_4_groups_run_along_the_input_channels():
    conv = torch.nn.Conv2d(8, 2, 3, bias=False)
    w = torch.arange(1.0, 1 + conv.weight.numel()).view_as(conv.weight)
    groups = sparsity.as_groups(w)  # (out, kh, kw, in)
    assert groups.shape == (2, 3, 3, 8) and torch.equal(groups[0, 0, 0], w[0, :, 0, 0])
    assert not sparsity.holds_2_4(w)


def test_compressed_size_shrinks_with_sparsity_dense_does_not(lite0):
    before = sparsity.sizes(lite0)
    sparsity.apply_masks(sparsity.magnitude_masks(lite0, 0.9))
    after = sparsity.sizes(sparsity.make_permanent(lite0))
    assert after["size_dense_mb"] == pytest.approx(before["size_dense_mb"], rel=0.01)
    assert after["size_deflate_mb"] < 0.6 * before["size_deflate_mb"]
    assert after["size_bitmask_mb"] < 0.4 * before["size_bitmask_mb"]


def test_sparse_model_saves_dense_and_loads(lite0, tmp_path):
    sparsity.apply_masks(sparsity.semi_structured_masks(lite0))
    model = sparsity.make_permanent(lite0)
    models.save(tmp_path, model, models.make_card("tf_efficientnet_lite0", "pypi", SIZE, model, ["good", "defect"]))
    loaded, _ = models.load(tmp_path / "model.pt")
    x = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded(x), model(x))
    assert not any("weight_orig" in k for k in loaded.state_dict())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path; the GPU path is run on a lent GPU")
def test_semi_structured_timing_skips_cleanly_without_a_gpu(lite0):
    sparsity.apply_masks(sparsity.semi_structured_masks(lite0))
    out = sparsity.time_semi_structured(sparsity.make_permanent(lite0))
    assert set(out) == {"skipped"} and "compute capability" in out["skipped"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_semi_structured_timing_on_gpu(lite0):
    sparsity.apply_masks(sparsity.semi_structured_masks(lite0))
    model = sparsity.make_permanent(lite0)
    assert len(sparsity.gemm_weights(model)) > 10  # the 1x1 convs are 2:4 GEMMs
    out = sparsity.time_semi_structured(model, tokens=1024, repeats=5)
    if torch.cuda.get_device_capability() >= (8, 0):
        assert out["layers_timed"] > 0 and out["dense_ms_total"] > 0 and out["sparse_ms_total"] > 0, out
    else:
        assert "skipped" in out


def test_sparsify_params_are_checked(root):
    import yaml

    p = yaml.safe_load((root / "params.yaml").read_text())
    with pytest.raises(ParamError, match=r"sparsify\.models has no 'nope'"):
        sparsify.check(p, "nope")
    p["sparsify"]["models"]["bad"] = {"pattern": "1:4"}
    with pytest.raises(ParamError, match=r"sparsify\.models\.bad\.pattern='1:4'.*\['2:4', 'unstructured'\]"):
        sparsify.check(p, "bad")
    p["sparsify"]["models"]["bad"] = {"pattern": "unstructured", "sparsity": 1.0}
    with pytest.raises(ParamError, match=r"sparsify\.models\.bad\.sparsity=1\.0.*\(0, 1\)"):
        sparsify.check(p, "bad")
