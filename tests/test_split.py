import numpy as np
import pandas as pd

from stages.lib.data.splitting import stratified_split, subsample


def strata(n=600, seed=0):
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.3).astype(int)
    cell = rng.choice(["mono", "poly"], n)
    return np.array([f"{a}/{b}" for a, b in zip(label, cell, strict=True)])


def test_split_is_deterministic_and_seed_dependent():
    s = strata()
    a = stratified_split(s, 0.15, 0.15, seed=42)
    b = stratified_split(s, 0.15, 0.15, seed=42)
    c = stratified_split(s, 0.15, 0.15, seed=7)
    assert (a == b).all()
    assert (a != c).any()


def test_split_covers_every_row_once_with_requested_sizes():
    s = strata()
    split = stratified_split(s, 0.15, 0.15, seed=1)
    counts = pd.Series(split).value_counts()
    assert set(counts.index) == {"train", "val", "test"}
    assert counts.sum() == len(s)
    assert abs(counts["test"] - 90) <= 1 and abs(counts["val"] - 90) <= 2


def test_split_is_stratified_by_label_and_attribute():
    s = strata(1200)
    split = stratified_split(s, 0.15, 0.15, seed=3)
    table = pd.crosstab(split, s, normalize="index")
    overall = pd.Series(s).value_counts(normalize=True)
    for name in ("train", "val", "test"):
        np.testing.assert_allclose(table.loc[name, overall.index], overall.values, atol=0.02)


def test_subsample_is_stratified_and_sorted():
    s = strata(1000)
    keep = subsample(s, 100, seed=0)
    assert len(keep) == 100 and (np.diff(keep) > 0).all()
    share = pd.Series(s[keep]).value_counts(normalize=True)
    overall = pd.Series(s).value_counts(normalize=True)
    np.testing.assert_allclose(share[overall.index], overall.values, atol=0.03)
    assert len(subsample(s, 0, seed=0)) == 1000
