"""The per-epoch training curves `training.fit` writes with dvclive (plots/train/<model>).

Rank 0 alone writes them (under torchrun the other ranks log nothing). A resumed run first replays
the epochs its checkpoint holds: DVC removed the killed run's curves, so the plots come out whole.
"""

import contextlib

from dvclive import Live

from stages.lib.training import distributed


@contextlib.contextmanager
def epoch_logger(live_dir, history):
    """A function log(values) that records one finished epoch's {name: value}; `history` is replayed first."""
    if not distributed.is_main():
        yield lambda values: None
        return
    with Live(live_dir, save_dvc_exp=False, dvcyaml=None) as live:

        def log_epoch(values):
            for name, value in values.items():
                live.log_metric(name, value)
            live.next_step()

        for values in history:
            log_epoch(values)
        yield log_epoch
