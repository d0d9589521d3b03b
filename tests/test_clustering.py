import math

import numpy as np
import pytest
import torch
from torch import nn

from stages.lib import models, params
from stages.lib.quantization import clustering
from tests.test_quantization import crops


def distinct_values(model):
    """{weight name: number of distinct values} for every conv / linear weight."""
    layers = clustering.clusterable(model)
    return {f"{name}.weight".lstrip("."): int(torch.unique(m.weight.detach()).numel()) for name, m in layers}


def test_clustered_layers_have_at_most_k_values_and_outputs_stay_close():
    model = models.pretrained("tf_efficientnet_lite0", "pypi", num_classes=1000).eval()
    x = torch.from_numpy(crops(24, 64, seed=3))
    recipe = clustering.check_recipe("quantize.recipes.c256", {"kind": "cluster", "n_clusters": 256})
    clustered, info = clustering.apply_recipe(model, recipe)

    values = distinct_values(clustered)
    assert len(values) == info["clustering_layers"] == 50  # every conv and the classifier
    assert max(values.values()) <= 256
    assert min(distinct_values(model).values()) > 256  # the original layers had more
    with torch.no_grad():
        ref, out = model(x), clustered(x)
    assert ((out - ref).norm() / ref.norm()).item() < 0.15
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.75
    # 8-bit indices: about a quarter of the dense float32 size
    assert 0.2 < info["size_mb_palettised"] / info["size_mb_dense"] < 0.35


def test_min_weights_leaves_small_layers_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 64, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(1, 3, 8, 8))
    clustered, books = clustering.cluster_model(model, 16, min_weights=1000)
    assert set(books) == {"1.weight", "3.weight"}  # 8*3*3*3 = 216 weights stay float32
    values = distinct_values(clustered)
    assert values["0.weight"] == 216 and values["1.weight"] <= 16 and values["3.weight"] <= 16
    torch.testing.assert_close(clustered[0].weight, model[0].weight)


def test_palettised_size_counts_indices_codebooks_and_the_rest():
    model = nn.Linear(100, 10)  # 1000 weights, 10 biases
    with torch.no_grad():
        model.weight.copy_(torch.arange(1000).reshape(10, 100) % 5)  # 5 distinct values
    bits = math.ceil(math.log2(5))
    expected = 1000 * bits / 8 + 5 * 4 + 10 * 4
    assert clustering.palettised_size_mb(model, 16) == pytest.approx(expected / 1e6)
    assert clustering.dense_size_mb(model) == pytest.approx(1010 * 4 / 1e6)


def test_kmeans_1d_recovers_well_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([-3.0, -1.0, 0.5, 2.0])
    values = rng.choice(centres, 5000) + rng.normal(0, 0.01, 5000)
    codebook, index = clustering.kmeans_1d(values, 4, sample_size=500)
    np.testing.assert_allclose(codebook, centres, atol=0.01)
    assert np.abs(codebook[index] - values).max() < 0.06


@pytest.mark.parametrize(
    ("recipe", "key"),
    [
        ({"n_clusters": 1}, "n_clusters"),
        ({"n_clusters": 16, "bits": 4}, "bits"),
        ({"n_clusters": 256, "sample_size": 100}, "sample_size"),
        ({"n_clusters": 16, "min_weights": -1}, "min_weights"),
    ],
)
def test_bad_recipe_names_the_key(recipe, key):
    with pytest.raises(params.ParamError, match=rf"quantize\.recipes\.c\.{key}"):
        clustering.check_recipe("quantize.recipes.c", {"kind": "cluster", **recipe})
