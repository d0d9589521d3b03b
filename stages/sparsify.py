"""sparsify: unstructured or 2:4 weight sparsity on the distilled student, then a KD fine-tune with the mask kept.

    python -m stages.sparsify student_sparse70 data/prepared artifacts/student_kd/model.pt \
        artifacts/teacher/model.pt artifacts/student_sparse70 plots/train/student_sparse70 \
        metrics/prune/student_sparse70.json

The model comes from params `sparsify.models.<name>` (DVC `foreach`): `unstructured` masks the
smallest-|w| share `sparsity` of all conv and linear weights (global L1, stem and classifier kept);
`2:4` zeroes two of every four consecutive input weights. The saved model.pt is dense (same shapes,
zeros inside), so dense CPU kernels run it at full cost; the metrics give the sparsity and the
compressed size. For 2:4, the GEMM speed with PyTorch's semi-structured kernels is measured when a
CUDA GPU with compute capability >= 8.0 is present, and recorded as skipped otherwise.
"""

import argparse
import logging
import time

from stages.lib import data, errors, models, params, training
from stages.lib.models import families
from stages.lib.outputs import write_json
from stages.lib.pruning import sparsity
from stages.lib.training import distributed, losses

log = logging.getLogger("sparsify")
SECTIONS = ("base", "train", "families", "distill", "sparsify")


def check(p, name):
    params.check_base(p["base"])
    training.check_recipe(p["train"])
    families.check(p["families"])
    losses.check_kd("distill", p["distill"])
    sec = p["sparsify"]
    if name not in (sec["models"] or {}):
        raise params.ParamError(f"sparsify.models has no {name!r}; expected one of {sorted(sec['models'] or {})}")
    params.check_int("sparsify.epochs", sec["epochs"], 1)
    params.check_range("sparsify.lr_scale", sec["lr_scale"], 0, 10, lo_inclusive=False)
    return sec, sparsity.check(f"sparsify.models.{name}", sec["models"][name])


def sparsify(model, spec):
    """Masks for `spec`, attached to `model` (fine-tuning keeps them)."""
    masks = sparsity.magnitude_masks(model, spec["sparsity"]) if spec["pattern"] == "unstructured" else None
    masks = masks if masks is not None else sparsity.semi_structured_masks(model)
    sparsity.apply_masks(masks)
    return masks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("name", "data_dir", "student", "teacher", "out_dir", "live_dir", "metrics"):
        parser.add_argument(name)
    args = parser.parse_args()
    p = params.load(*SECTIONS)
    sec, spec = check(p, args.name)
    params.setup(p["base"])
    distributed.launch(p["train"]["processes"])
    size = p["base"]["image_size"]

    student, card = models.load(args.student)
    teacher, _ = losses.frozen_teacher(args.teacher)
    dense = sparsity.sizes(student)
    masks = sparsify(student, spec)
    log.info(
        "%s: %s masks on %d layers, %.1f%% of their weights zero",
        args.name,
        spec["pattern"],
        len(masks),
        100 * sparsity.sparsity_stats(student, masks)["sparsity_target_layers"],
    )

    lr = families.lr(p["train"], p["families"], card["arch"]) * sec["lr_scale"]
    recipe = {**p["train"], "epochs": sec["epochs"], "lr": lr}
    train_xy = data.load_split(args.data_dir, "train", size)
    val_xy = data.load_split(args.data_dir, "val", size)
    start = time.perf_counter()
    student, best = training.fit(student, train_xy, val_xy, recipe, args.live_dir, p["base"], teacher, p["distill"])
    minutes = (time.perf_counter() - start) / 60
    if not distributed.is_main():
        return  # rank 0 writes the outputs
    student = sparsity.make_permanent(student)
    stats = {**sparsity.sparsity_stats(student, masks), **sparsity.sizes(student)}
    stats["size_deflate_ratio_vs_dense_student"] = round(stats["size_deflate_mb"] / dense["size_deflate_mb"], 4)
    if spec["pattern"] == "2:4":
        stats["holds_2_4"] = all(sparsity.holds_2_4(m.weight) for m in masks)
        stats["gpu_2_4"] = sparsity.time_semi_structured(student)
    stats["note"] = "dense kernels on CPU (PyTorch, ONNX Runtime) do not exploit this sparsity: same latency and file"
    card = models.save(args.out_dir, student, {**card, **best, "sparsified": {**spec, **stats}})
    write_json(
        args.metrics,
        {**spec, **stats, **best, "lr": lr, "param_count": card["param_count"], "train_minutes": round(minutes, 2)},
    )


if __name__ == "__main__":
    errors.run(main, "sparsify")
