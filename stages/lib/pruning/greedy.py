"""scope greedy: per-stage ratios from a search that removes the same MACs as uniform pruning at `ratio`, each
step cutting further into the stage whose cut distorts the unpruned model's outputs least per MAC saved
(NetAdapt, Yang et al. 2018, and AMC, He et al. 2018, search per-layer ratios the same way; here without a
fine-tune inside the loop, measured as the KL divergence of the logits on training images)."""

import copy
import logging
import time

import torch
import torch.nn.functional as F

from stages.lib.pruning.pruners import build_pruner, count, stages, taylor_gradients

log = logging.getLogger(__name__)
NHWC = torch.channels_last


def greedy_search(n_stages, trial, base_macs, target_macs, step, cap):
    """Per-stage ratios that bring the MACs to `target_macs`: start from nothing pruned; each round raises by
    `step` (up to `cap`) the one stage whose raise costs the least output distortion per MAC saved, until the
    MACs are at or below the target. `trial(ratios) -> (macs, distortion)` prunes a copy and measures it.
    Returns (ratios, macs, distortion, rounds); stops early (and says so) when no stage can give more."""
    ratios, macs, dist, rounds = [0.0] * n_stages, base_macs, 0.0, []
    while macs > target_macs:
        best = None
        for i in range(n_stages):
            if ratios[i] + step > cap + 1e-9:
                continue
            cand = [*ratios[:i], round(ratios[i] + step, 4), *ratios[i + 1 :]]
            m, d = trial(cand)
            if m >= macs:
                continue  # rounding to round_to removed nothing at this step
            key = (max(d - dist, 0.0) / (macs - m), m)  # distortion per MAC saved; ties: the larger saving
            if best is None or key < best[0]:
                best = (key, cand, m, d)
        if best is None:
            log.warning(
                "greedy: no stage can be cut further (cap %.2f); MACs stay at %.1fM, target %.1fM",
                cap,
                macs / 1e6,
                target_macs / 1e6,
            )
            break
        _, ratios, macs, dist = best
        rounds.append(ratios)
        log.info(
            "greedy round %d: stage ratios %s, MACs %.1fM (target %.1fM), KL %.4f",
            len(rounds),
            ratios,
            macs / 1e6,
            target_macs / 1e6,
            dist,
        )
    return ratios, macs, dist, rounds


def allocate(model, image_size, cfg, images, calib=None):
    """scope greedy: the per-stage ratios (greedy_search) that remove as many MACs as uniform pruning at
    cfg ratio, each candidate cut one-shot on a copy and scored by the KL divergence of its logits from the
    unpruned model's on `images`. Returns (ratios, {what the search found, for the metrics})."""
    start = time.perf_counter()
    model.eval()
    # The search's forwards (only forwards: Taylor's gradients are taken before) run in channels_last, as the
    # benchmark runs PyTorch: Lite0 at 128 px, 256 images, 3.6 -> 2.2 s a candidate on the 2-core VM. On copies:
    # the model itself keeps its layout, so what is pruned and saved is the same.
    images = images.contiguous(memory_format=NHWC)
    with torch.no_grad():
        ref = copy.deepcopy(model).to(memory_format=NHWC)(images).log_softmax(1)

    def trial(stage_ratios):
        """(MACs, KL from the unpruned logits) of the one-shot cut; stage_ratios None = uniform at cfg ratio."""
        pruned = copy.deepcopy(model).eval()
        one_shot = {**cfg, "iterative_steps": 1, "stage_ratios": stage_ratios}
        pruner = build_pruner(pruned, image_size, one_shot)
        if cfg["importance"] == "taylor":
            taylor_gradients(pruned, calib)
        pruner.step()
        with torch.no_grad():
            logits = pruned.to(memory_format=NHWC)(images)
        kl = F.kl_div(logits.log_softmax(1), ref, log_target=True, reduction="batchmean")
        return count(pruned, image_size)[0], float(kl)

    target, uniform_kl = trial(None)
    step, n = cfg["greedy_step"], len(stages(model))
    ratios, _, kl, rounds = greedy_search(n, trial, count(model, image_size)[0], target, step, cfg["max_ratio"])
    found = {
        "stage_ratios": ratios,
        "greedy_rounds": len(rounds),
        "greedy_kl": round(kl, 4),
        "uniform_kl": round(uniform_kl, 4),
        "greedy_minutes": round((time.perf_counter() - start) / 60, 2),
    }
    log.info(
        "greedy: stage ratios %s, one-shot KL %.4f (uniform at %.2f: %.4f) on %d images",
        ratios,
        kl,
        cfg["ratio"],
        uniform_kl,
        len(images),
    )
    return ratios, found
