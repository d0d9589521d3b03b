"""One training recipe for every model: AdamW, one-cycle LR, best epoch by validation AUROC.

`fit` is the loop; each concern it touches is a small module of this package:
  losses.py       - the loss: cross-entropy, or knowledge distillation from a frozen teacher (`teacher`, `kd`)
  checkpoints.py  - a checkpoint after every epoch, so a killed stage resumes where it stopped, bit for bit
  curves.py       - the per-epoch dvclive curves, with a resumed run's earlier epochs replayed
  distributed.py  - DDP under torchrun (train.processes > 1): a shard of every batch per process
The stages finetune_teacher, train_student and distill share their main() in supervised.py.
"""

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from stages.lib import data, params
from stages.lib.models import families, reparam
from stages.lib.training import checkpoints, curves, distributed, losses

log = logging.getLogger(__name__)


def check_recipe(train):
    params.check_int("train.epochs", train["epochs"], 1)
    params.check_int("train.batch_size", train["batch_size"], 1)
    families.check_auto("train.lr", train["lr"], lambda k, v: params.check_range(k, v, 0, 1, lo_inclusive=False))
    params.check_range("train.weight_decay", train["weight_decay"], 0, 1)
    params.check_int("train.processes", train["processes"], 1)
    return train


def auroc(labels, probs):
    """Binary: AUROC of the defect probability; multi-class: macro one-vs-rest AUROC."""
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", labels=range(probs.shape[1])))


@torch.inference_mode()
def predict(model, x_uint8, batch_size=64, channels_last=False, device="cpu"):
    """Class probabilities (N, num_classes) for every image, in order."""
    model.eval()
    probs = []
    for xb, _ in data.batches(x_uint8, torch.zeros(len(x_uint8)), batch_size):
        xb = data.to_float(xb.to(device))
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        probs.append(model(xb).softmax(1).float().cpu())
    return torch.cat(probs).numpy()


def fit(model, train_xy, val_xy, recipe, live_dir, base, teacher=None, kd=None):
    """Train `model` in place and return (model in eval mode with its best validation epoch's weights, best info).

    With a `teacher`, the loss is KD with the `kd` params (losses.py). Under torchrun every process runs
    this with the same arguments (distributed.py).
    """
    epochs, batch_size = recipe["epochs"], recipe["batch_size"]
    device = distributed.init(base["device"])
    layout = memory_format(model, base["channels_last"], device)
    model.to(device, memory_format=layout)
    loss_fn = losses.make(teacher, kd).to(device, layout)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps = epochs * -(-len(train_xy[0]) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(base["seed"])  # shuffling and augmentation
    processes = distributed.world()[1]
    ckpt_path = checkpoints.path(model, train_xy, val_xy, recipe, base, teacher, kd, processes)
    ckpt = checkpoints.Checkpoint(ckpt_path, model, opt, sched, gen)
    # the best epoch so far and the logged values of every finished epoch: a resumed run's, or none yet
    best, history = ckpt.restore(epochs) or ({"key": (-1.0, 0.0)}, [])
    net = distributed.wrap(model, device, batch_size)  # after restore: DDP starts from rank 0's weights
    with curves.epoch_logger(live_dir, history) as log_epoch:
        for epoch in range(len(history), epochs):
            desc = f"epoch {epoch + 1}/{epochs}"
            train_loss = train_epoch(net, loss_fn, opt, sched, train_xy, batch_size, gen, device, layout, desc)
            val_loss, val_auroc = validate(model, val_xy, layout, device)
            logged = {
                "train/loss": train_loss,
                "val/loss": val_loss,
                "val/auroc": val_auroc,
                "lr": sched.get_last_lr()[0],
            }
            log_epoch(logged)
            log.info("%s train_loss %.4f val_loss %.4f val_auroc %.4f", desc, train_loss, val_loss, val_auroc)
            # Best epoch: highest val AUROC; ties (AUROC saturates at 1.0 on easy data) go to lower val loss.
            key = (val_auroc, -val_loss)
            if key > best["key"]:
                best = {"key": key, "auroc": val_auroc, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
            history.append(logged)
            ckpt.save(best, history)
    ckpt.remove()
    model.load_state_dict(best["state"])
    model.to("cpu", memory_format=torch.contiguous_format)
    log.info("best epoch %d (val_auroc %.4f)", best["epoch"], best["auroc"])
    return model.eval(), {"best_epoch": best["epoch"], "val_auroc": round(best["auroc"], 4)}


def memory_format(model, channels_last, device):
    """The layout to train in: base.channels_last, except for a multi-branch model on CPU."""
    if channels_last and device == "cpu" and reparam.is_multi_branch(model):
        # torch 2.15's CPU backward of MobileOne's stem 1x1 stride-2 branch (3 -> 48 channels) in channels_last
        # corrupts the heap from ~96 px up (segfault / "corrupted double-linked list"; tests/test_reparam.py)
        log.info("channels_last off for the multi-branch form (a torch CPU channels_last backward bug)")
        channels_last = False
    return torch.channels_last if channels_last else torch.contiguous_format


def train_epoch(net, loss_fn, opt, sched, train_xy, batch_size, gen, device, layout, desc):
    """One pass over the shuffled, augmented training set; the mean step loss over all processes."""
    x_train, y_train = train_xy
    net.train()
    step_losses = []
    bar = tqdm(
        data.batches(x_train, y_train, batch_size, shuffle=True, generator=gen),
        total=-(-len(x_train) // batch_size),
        desc=desc,
        leave=False,
        disable=not distributed.is_main(),
    )
    for xb, yb in bar:
        xb = data.augment(xb, gen)  # the whole batch, so every rank's generator stays in step
        share = distributed.train_shard(xb, yb)
        if share is None:
            continue
        xb = data.to_float(share[0].to(device)).contiguous(memory_format=layout)
        yb = share[1].to(device)
        loss = loss_fn(net(xb), xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step_losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(step_losses):.4f}")
    return distributed.mean(float(np.mean(step_losses)))


def validate(model, val_xy, layout, device):
    """(val loss, val AUROC) of `model`: each process predicts its shard of the images, all get every row."""
    x_val, y_val = val_xy
    distributed.sync_buffers(model)  # rank 0's BatchNorm statistics on every rank
    (x_part,) = distributed.shard(x_val)
    probs = predict(model, x_part, channels_last=layout == torch.channels_last, device=device)
    probs = distributed.gather_rows(probs, len(x_val))
    val_loss = float(F.nll_loss(torch.from_numpy(probs).clamp_min(1e-7).log(), y_val))
    return val_loss, auroc(y_val.numpy(), probs)
