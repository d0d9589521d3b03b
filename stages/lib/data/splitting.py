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


SPLIT_ORDER = ("train", "val", "test")


def stratified_group_split(strata, groups, val_fraction, test_fraction, seed, hashes=None):
    """Assign each row to train/val/test keeping every group whole, stratified as well as the groups allow.

    The units are the groups, joined where an exact duplicate (equal `hashes`) sits in two of them. They are
    placed largest first (equal sizes in an order drawn from the seed), each into the split whose per-stratum
    counts it brings closest to their targets (fraction x the stratum's rows): the least sum of squared gaps,
    each divided by its target, so that a gap weighs by how much of its target it is (rare strata and the small
    val and test splits count as much as train); ties go to train, then val. On BSData (99 sequences, up to 57
    frames each) this lands within one sequence of every target, where weighting by stratum size alone left
    val 40 % short. Deterministic in the keys, groups, hashes and seed.
    """
    strata = np.asarray(strata).astype(str)
    unit = _units(np.asarray(groups), None if hashes is None else np.asarray(hashes))
    stratum = np.unique(strata, return_inverse=True)[1]
    counts = np.zeros((unit.max() + 1, stratum.max() + 1))
    np.add.at(counts, (unit, stratum), 1)
    target = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction])[:, None] * counts.sum(0)
    weight = 1 / np.maximum(target, 1e-9)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(counts))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    have, unit_split = np.zeros_like(target), np.zeros(len(counts), dtype=int)
    for u in order:
        gain = (((have + counts[u] - target) ** 2 - (have - target) ** 2) * weight).sum(1)
        unit_split[u] = int(np.argmin(gain))
        have[unit_split[u]] += counts[u]
    return np.array(SPLIT_ORDER, dtype=object)[unit_split[unit]]


def _units(groups, hashes):
    """Connected components of rows linked by an equal group or an equal hash: one int per row, 0..n-1."""
    parent = list(range(len(groups)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for keys in (groups, hashes):
        if keys is None:
            continue
        first = {}
        for row, key in enumerate(keys):
            j = first.setdefault(key, row)
            parent[root(row)] = root(j)
    return pd.factorize(np.array([root(i) for i in range(len(groups))]))[0]


def find_group_leaks(table):
    """Groups (table `group` column) whose rows landed in more than one split."""
    per_group = table.groupby("group")["split"].nunique()
    return per_group[per_group > 1].index.tolist()
