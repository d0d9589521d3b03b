"""One training recipe for every model: AdamW, cosine LR, best epoch by validation AUROC.

A stage killed part-way resumes training from its last finished epoch (stages/lib/checkpoints.py).

With a `teacher`, the loss is knowledge distillation (Hinton et al. 2015):
    alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, y)
"""

import argparse
import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from dvclive import Live
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from stages.lib import data, models, params
from stages.lib.models import families, reparam
from stages.lib.outputs import write_json
from stages.lib.training import checkpoints, distributed

log = logging.getLogger(__name__)
UNFUSE_IMAGES = 64  # training images on which an unfused block's BatchNorm is set (reparam.unfuse)


def check_recipe(train):
    params.check_int("train.epochs", train["epochs"], 1)
    params.check_int("train.batch_size", train["batch_size"], 1)
    families.check_auto("train.lr", train["lr"], lambda k, v: params.check_range(k, v, 0, 1, lo_inclusive=False))
    params.check_range("train.weight_decay", train["weight_decay"], 0, 1)
    params.check_int("train.processes", train["processes"], 1)
    return train


def check_kd(section, kd):
    params.check_range(f"{section}.temperature", kd["temperature"], 0, 100, lo_inclusive=False)
    params.check_range(f"{section}.alpha", kd["alpha"], 0, 1)


def kd_loss(student_logits, teacher_logits, targets, temperature, alpha):
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, 1),
        F.log_softmax(teacher_logits / t, 1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, targets)
    return alpha * t * t * soft + (1.0 - alpha) * hard


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
    """Train `model` in place and return it holding the weights of its best validation epoch.

    Under torchrun every process runs this with the same arguments (stages/lib/distributed.py).
    """
    (x_train, y_train), (x_val, y_val) = train_xy, val_xy
    rank, world_size = distributed.world()
    device, channels_last = distributed.init(base["device"]), base["channels_last"]
    if channels_last and device == "cpu" and reparam.is_multi_branch(model):
        # torch 2.15's CPU backward of MobileOne's stem 1x1 stride-2 branch (3 -> 48 channels) in channels_last
        # corrupts the heap from ~96 px up (segfault / "corrupted double-linked list"; tests/test_reparam.py)
        log.info("channels_last off for the multi-branch form (a torch CPU channels_last backward bug)")
        channels_last = False
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    if teacher is not None:
        teacher.eval().to(device, memory_format=memory_format)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps = recipe["epochs"] * -(-len(x_train) // recipe["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(base["seed"])
    best = {"key": (-1.0, 0.0)}
    history = []  # the values logged to dvclive, one dict per finished epoch
    ckpt = checkpoints.path(model, train_xy, val_xy, recipe, base, teacher, kd, world_size)
    resumed = checkpoints.restore(ckpt, model, opt, sched, gen)
    if resumed:
        best, history = resumed["best"], resumed["history"]
        log.info("resuming from epoch %d of %d (%s)", len(history), recipe["epochs"], ckpt)
    net = distributed.wrap(model, device)  # after restore: DDP starts every rank from rank 0's weights
    if world_size > 1:
        log.info("rank %d of %d: 1/%d of every batch of %d", rank, world_size, world_size, recipe["batch_size"])
    with Live(live_dir, save_dvc_exp=False, dvcyaml=None) if rank == 0 else _NoLive() as live:
        for logged in history:  # DVC removed the killed run's curves: replay them so the plots are whole
            for name, value in logged.items():
                live.log_metric(name, value)
            live.next_step()
        for epoch in range(len(history), recipe["epochs"]):
            model.train()
            losses = []
            bar = tqdm(
                data.batches(x_train, y_train, recipe["batch_size"], shuffle=True, generator=gen),
                total=-(-len(x_train) // recipe["batch_size"]),
                desc=f"epoch {epoch + 1}/{recipe['epochs']}",
                leave=False,
                disable=rank != 0,
            )
            for xb, yb in bar:
                xb = data.augment(xb, gen)  # the whole batch, so every rank's generator stays in step
                if world_size > 1:
                    if len(xb) < 2 * world_size:  # a last batch too small to split (BatchNorm needs 2 per rank)
                        continue
                    xb, yb = distributed.shard(xb, yb)
                xb = data.to_float(xb.to(device)).contiguous(memory_format=memory_format)
                yb = yb.to(device)
                logits = net(xb)
                if teacher is None:
                    loss = F.cross_entropy(logits, yb)
                else:
                    with torch.no_grad():
                        teacher_logits = teacher(xb)
                    loss = kd_loss(logits, teacher_logits, yb, kd["temperature"], kd["alpha"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
            distributed.sync_buffers(model)
            (x_part,) = distributed.shard(x_val)
            val_prob = predict(model, x_part, channels_last=channels_last, device=device)
            val_prob = distributed.gather_rows(val_prob, len(x_val))
            val_auroc = auroc(y_val.numpy(), val_prob)
            val_loss = float(F.nll_loss(torch.from_numpy(val_prob).clamp_min(1e-7).log(), y_val))
            train_loss = distributed.mean(float(np.mean(losses)))
            logged = {
                "train/loss": train_loss,
                "val/loss": val_loss,
                "val/auroc": val_auroc,
                "lr": sched.get_last_lr()[0],
            }
            for name, value in logged.items():
                live.log_metric(name, value)
            live.next_step()
            log.info(
                "epoch %d/%d train_loss %.4f val_loss %.4f val_auroc %.4f",
                epoch + 1,
                recipe["epochs"],
                train_loss,
                val_loss,
                val_auroc,
            )
            # Best epoch: highest val AUROC; ties (AUROC saturates at 1.0 on easy data) go to lower val loss.
            key = (val_auroc, -val_loss)
            if key > best["key"]:
                best = {"key": key, "auroc": val_auroc, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
            history.append(logged)
            if rank == 0:
                checkpoints.save(ckpt, model, opt, sched, gen, best, history)
    if rank == 0:
        checkpoints.remove(ckpt)
    model.load_state_dict(best["state"])
    model.to("cpu", memory_format=torch.contiguous_format)
    log.info("best epoch %d (val_auroc %.4f)", best["epoch"], best["auroc"])
    return model.eval(), {"best_epoch": best["epoch"], "val_auroc": round(best["auroc"], 4)}


class _NoLive:
    """What ranks other than 0 log to: nothing (rank 0 writes the dvclive curves)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def log_metric(self, name, value):
        pass

    def next_step(self):
        pass


def frozen_teacher(path):
    """The fine-tuned teacher in eval mode with gradients off: KD only reads its logits."""
    teacher, card = models.load(path)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher, card


def supervised_main(stage, doc, model_section=None, distill=False):
    """main() of finetune_teacher, train_student and distill: one CLI, one recipe.

    The model comes from params[`model_section`] (default: the stage's own section). With
    `distill`, a positional `teacher` model.pt follows data_dir and the loss is KD (params[stage]).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    if distill:
        parser.add_argument("teacher", help="model.pt of the fine-tuned teacher")
    parser.add_argument("out_dir", help="folder for model.pt and card.json")
    parser.add_argument("live_dir", help="dvclive folder for per-epoch curves")
    parser.add_argument("metrics")
    args = parser.parse_args()
    model_section = model_section or stage
    p = params.load("base", "train", "families", model_section, *([stage] if distill else []))
    params.check_base(p["base"])
    check_recipe(p["train"])
    families.check(p["families"])
    spec = p[model_section]
    models.check_spec(model_section, spec["model"], spec["weights"])
    if distill:
        check_kd(stage, p[stage])
    params.setup(p["base"])
    distributed.launch(p["train"]["processes"])

    teacher = kd = None
    if distill:
        teacher, card = frozen_teacher(args.teacher)
        kd = p[stage]
        log.info(
            "teacher %s (val_auroc %.4f) frozen; T=%s alpha=%s",
            card["arch"],
            card["val_auroc"],
            kd["temperature"],
            kd["alpha"],
        )
    run(stage, p, args.data_dir, args.out_dir, args.live_dir, args.metrics, spec["model"], spec["weights"], teacher, kd)


def run(stage, p, data_dir, out_dir, live_dir, metrics_path, model_name, weights, teacher=None, kd=None):
    """The body shared by finetune_teacher, train_student and distill: data -> fit -> save."""
    base = p["base"]
    size = base["image_size"]
    train_xy = data.load_split(data_dir, "train", size)
    val_xy = data.load_split(data_dir, "val", size)
    log.info("%s: %d train / %d val images at %dx%d", stage, len(train_xy[0]), len(val_xy[0]), size, size)
    classes = data.read_info(data_dir)["classes"]
    model = models.pretrained(model_name, weights, num_classes=len(classes), image_size=size)
    if reparam.is_fused(model.net):  # a deployed-form checkpoint (MobileOne): train the multi-branch form from it
        multi = models.build(model_name, num_classes=len(classes), image_size=size)
        model = reparam.unfuse(model, multi, data.to_float(train_xy[0][:UNFUSE_IMAGES]))
        log.info("%s: fused checkpoint unfused into %d multi-branch blocks", model_name, len(reparam.blocks(model.net)))
    recipe = {**p["train"], "lr": families.lr(p["train"], p["families"], model_name)}
    log.info("%s (%s family): peak LR %g", model_name, families.family(model_name), recipe["lr"])
    start = time.perf_counter()
    model, best = fit(model, train_xy, val_xy, recipe, live_dir, base, teacher, kd)
    minutes = (time.perf_counter() - start) / 60
    model = reparam.fuse(model)  # MobileOne is saved, exported and deployed fused; other models are unchanged
    if not distributed.is_main():
        return  # rank 0 writes the outputs
    card = models.save(out_dir, model, {**models.make_card(model_name, weights, size, model, classes), **best})
    adapted = {k: card[k] for k in ("adapted_to_input", "reparameterized") if k in card}  # ViT grid, MobileOne
    write_json(
        metrics_path,
        {**best, "lr": recipe["lr"], **adapted, "param_count": card["param_count"], "train_minutes": round(minutes, 2)},
    )
