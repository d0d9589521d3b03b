"""Data-parallel training on several processes: torchrun + DistributedDataParallel (DDP).

`train.processes: 1` (the default) trains in the stage's own process. With N > 1 a training stage
(finetune_teacher, train_student, distill, prune, prune_sweep, sparsify) checks its params and
then relaunches itself under torchrun:

    python -m torch.distributed.run --standalone --nproc-per-node N -m stages.<stage> <same args>

so `dvc repro` and `dvc exp run -S train.processes=2` need no other command. A stage started by
torchrun directly (WORLD_SIZE is set: several machines, `torchrun --nnodes 2 --node-rank ...`) is not
relaunched. Gloo on CPU, NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK).

Every process walks the same shuffled order and augments the same global batch of
`train.batch_size` images with the same generator, then keeps every N-th image of it
(`shard`): the processes see disjoint shards, DDP averages their gradients, and the step is the
single-process step up to BatchNorm statistics (computed per shard) and summation order. Validation
is split the same way and gathered, so every rank picks the same best epoch. Rank 0 alone writes
checkpoints, dvclive curves and the stage's outputs. QAT (inside `quantize`) stays single-process.
"""

import atexit
import logging
import os
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def world():
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main():
    return world()[0] == 0


def local_size():
    """Processes on this machine: they share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def launch(processes):
    """In a training stage's main, after its params are checked and `params.setup`, before any work.

    processes > 1 and not yet under torchrun: run this stage under torchrun with the same arguments
    and exit with its status (this process does nothing else). Otherwise return and train here; a
    torchrun worker first takes its share of base.threads, and only rank 0 keeps logging INFO.
    """
    if "WORLD_SIZE" in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() // local_size()))
        if not is_main():
            logging.getLogger().setLevel(logging.WARNING)
        return
    if processes <= 1:
        return
    module = sys.modules["__main__"].__spec__.name  # stages are run as `python -m stages.<stage>`
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        module,
        *sys.argv[1:],
    ]
    threads = max(1, torch.get_num_threads() // processes)  # base.threads, shared by the processes
    raise SystemExit(subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}))


def init(device):
    """Join the process group once (gloo on CPU, NCCL on CUDA); the device this process trains on."""
    if world()[1] == 1:
        return device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    if device == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return device


def wrap(model, device, batch_size):
    """DDP around `model` (which keeps its own weights: train through the wrapper, save the model)."""
    rank, size = world()
    if size == 1:
        return model
    log.info("rank %d of %d: 1/%d of every batch of %d", rank, size, size, batch_size)
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(*tensors):
    """This process's share of a global batch: every WORLD_SIZE-th item from its rank on."""
    rank, size = world()
    return tuple(t[rank::size] for t in tensors)


def train_shard(images, labels):
    """shard() of a training batch; None for a last batch too small to split (BatchNorm needs 2 per rank)."""
    size = world()[1]
    if size == 1:
        return images, labels
    if len(images) < 2 * size:
        return None
    return shard(images, labels)


def sync_buffers(model):
    """Rank 0's BatchNorm running statistics on every rank (DDP copies them before each forward only)."""
    if world()[1] > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def mean(value):
    """The mean of a float over all processes (the logged training loss)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world()[1]


def gather_rows(part, n):
    """Reassemble an array of `n` rows that the ranks computed as shard()s of it, in order."""
    size = world()[1]
    if size == 1:
        return part
    parts = [None] * size
    dist.all_gather_object(parts, part)
    full = np.empty((n, *part.shape[1:]), dtype=part.dtype)
    for r, p in enumerate(parts):
        full[r::size] = p
    return full
