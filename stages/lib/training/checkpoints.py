"""Per-epoch training checkpoints, so that a killed stage resumes instead of starting over.

`training.fit` writes one after every epoch and deletes it when training finishes. They live in
`.checkpoints/` at the repo root (where dvc runs stages), outside every stage's outputs and ignored
by git and DVC: DVC deletes a stage's outputs before it reruns it, so a checkpoint kept there would
be gone. The file name is a hash of everything that decides the result of `fit` (the starting
weights, which stand for the source or pretrained model; the teacher; the train and val images and
labels; the recipe, base and KD params; the number of processes; the data and training code), so a restart
with other inputs or params never resumes from a stale checkpoint. Always on, whatever the number
of epochs: saving a small model once an epoch costs far less than the epoch, and one code path is
easier to trust.

A checkpoint holds everything the next epoch reads: weights, optimizer, one-cycle schedule, the
shuffling/augmentation generator, the global RNGs (python, numpy, torch), the best epoch so far and
the values logged to dvclive, so the resumed result equals the uninterrupted one bit for bit.
`rm -rf .checkpoints` is always safe: training then starts from epoch 1.
"""

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from stages.lib import data
from stages.lib.outputs import atomic
from stages.lib.training import distributed

log = logging.getLogger(__name__)
CHECKPOINT_DIR = Path(".checkpoints")  # relative to the repo root, where dvc runs every stage


def _update(h, state_dict):
    for name, t in state_dict.items():
        t = t.detach().to("cpu", copy=True).contiguous()  # a copy: numpy() of an observer's buffer would pin its size
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def path(model, train_xy, val_xy, recipe, base, teacher=None, kd=None, processes=1):
    """CHECKPOINT_DIR/<sha256 of fit's inputs>.pt; call it before training touches the model."""
    h = hashlib.sha256(json.dumps([recipe, base, kd, processes], sort_keys=True).encode())
    for module in (data.__file__, *sorted(Path(__file__).parent.glob("*.py"))):  # the data and training code
        h.update(Path(module).read_bytes())
    _update(h, model.state_dict())
    if teacher is not None:
        _update(h, teacher.state_dict())
    _update(h, {"x_train": train_xy[0], "y_train": train_xy[1], "x_val": val_xy[0], "y_val": val_xy[1]})
    return CHECKPOINT_DIR / f"{h.hexdigest()[:16]}.pt"


def save(ckpt, model, opt, sched, gen, best, history):
    np_state = np.random.get_state(legacy=False)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": {
            **np_state,
            "state": {
                "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                "pos": np_state["state"]["pos"],
            },
        },
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "best": best,
        "history": history,
    }
    with atomic(ckpt) as tmp:
        torch.save(state, tmp)


def restore(ckpt, model, opt, sched, gen):
    """Load `ckpt` into the training objects and RNGs; None (nothing touched) when there is none."""
    if not Path(ckpt).is_file():
        return None
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    np_state = state["numpy_rng"]
    key = np_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**np_state, "state": {"key": key, "pos": np_state["state"]["pos"]}})
    return state


def remove(ckpt):
    Path(ckpt).unlink(missing_ok=True)


class Checkpoint:
    """The resume point of one `fit`: restored before its first epoch, saved after each, removed at the end.

    `path` from path(); model, opt, sched and gen are the objects the checkpoint is loaded into. Under
    torchrun only rank 0 writes and removes it (every rank restores the same file).
    """

    def __init__(self, path, model, opt, sched, gen):
        self.path, self.objects = path, (model, opt, sched, gen)

    def restore(self, epochs):
        """(best epoch so far, logged values of every finished epoch), loaded into the objects; None when none."""
        state = restore(self.path, *self.objects)
        if state is None:
            return None
        log.info("resuming from epoch %d of %d (%s)", len(state["history"]), epochs, self.path)
        return state["best"], state["history"]

    def save(self, best, history):
        if distributed.is_main():
            save(self.path, *self.objects, best, history)

    def remove(self):
        if distributed.is_main():
            remove(self.path)
