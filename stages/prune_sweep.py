"""prune_sweep: one ratio of the pruning sweep (DVC `foreach` over params prune.sweep, in percent).

    python -m stages.prune_sweep 50 data/prepared artifacts/student_kd/model.pt artifacts/teacher/model.pt \
        artifacts/student_pruned_r50 plots/train/student_pruned_r50 metrics/prune/student_pruned_r50.json

The same pruning and fine-tune as the prune stage (params `prune`), with the ratio from the
command line. Each ratio writes its own model (artifacts/student_pruned_r<pct>), which joins the
comparison like any model when listed in compare.models.
"""

from stages import prune
from stages.lib import errors, params


def main():
    args = prune.parser(__doc__, sweep=True).parse_args()
    p = params.load(*prune.SECTIONS)
    if not 0 <= args.ratio_pct < 100:
        raise params.ParamError(f"prune.sweep item {args.ratio_pct!r} is out of range; expected percent in [0, 100)")
    prune.run(p, prune.check(p, ratio=args.ratio_pct / 100), args)


if __name__ == "__main__":
    errors.run(main, "prune_sweep")
