"""The train/val/test split: stratified, reproducible from the seed, exact duplicates kept together."""

import numpy as np
import pandas as pd


def stratified_split(strata, val_fraction, test_fraction, seed, hashes=None):
    """Assign each row to train/val/test, stratified by `strata` (one key per row).

    Exact duplicates (rows with equal `hashes`) always land in the same split: the unique hashes are
    split, each stratified by the stratum of its first row, and every copy follows its first row.
    A pure function of the keys, the hashes and the seed, so the split never moves unless the data does.
    """
    strata = np.asarray(strata).astype(str)
    group = np.arange(len(strata)) if hashes is None else pd.factorize(np.asarray(hashes))[0]
    first_rows = np.unique(group, return_index=True)[1]
    unit_strata = strata[first_rows]
    keys, sizes = np.unique(unit_strata, return_counts=True)
    n_test = _quota(sizes, test_fraction)
    n_val = np.minimum(_quota(sizes, val_fraction), sizes - n_test)
    rng = np.random.default_rng(seed)
    unit_split = np.full(len(unit_strata), "train", dtype=object)
    for key, t, v in zip(keys, n_test, n_val, strict=True):
        units = rng.permutation(np.flatnonzero(unit_strata == key))
        unit_split[units[:t]], unit_split[units[t : t + v]] = "test", "val"
    return unit_split[group]


def subsample(strata, max_images, seed):
    """Indices of a stratified subset of `max_images` rows (all rows when 0), in their original order."""
    strata = np.asarray(strata).astype(str)
    if not max_images or max_images >= len(strata):
        return np.arange(len(strata))
    keys, sizes = np.unique(strata, return_counts=True)
    rng = np.random.default_rng(seed)
    keep = [
        rng.permutation(np.flatnonzero(strata == k))[:n]
        for k, n in zip(keys, _quota(sizes, max_images / len(strata)), strict=True)
    ]
    return np.sort(np.concatenate(keep))


def _quota(sizes, fraction):
    """Per-stratum counts summing to round(fraction * total): floors, then one more for the largest remainders."""
    exact = np.asarray(sizes) * fraction
    counts = np.floor(exact).astype(int)
    extra = int(np.floor(exact.sum() + 0.5)) - counts.sum()
    counts[np.argsort(counts - exact, kind="stable")[:extra]] += 1
    return counts


def find_duplicates(table):
    """Groups of row indices with the same `sha256` (identical pixels) that landed in different splits."""
    copies = table[table.duplicated("sha256", keep=False)]
    return [rows.index.tolist() for _, rows in copies.groupby("sha256") if rows["split"].nunique() > 1]


def count_duplicates(table):
    """Images that repeat an earlier image exactly (rows minus unique pixel hashes)."""
    return int(len(table) - table["sha256"].nunique())
