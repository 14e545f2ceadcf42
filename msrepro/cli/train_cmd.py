"""``msrepro train [CONFIG.yaml ...] [key=value ...] [--fresh | --resume] [--no-progress]``: train one run.

The run directory is ``output_dir/name``. If it already holds checkpoints, the run resumes from the newest readable
one (a damaged newest checkpoint falls back to the previous, with a warning), so rerunning the same command after a
crash, a kill or a preemption continues exactly where it stopped. ``--fresh`` deletes the run's checkpoints and
metrics first and starts over; ``--resume`` refuses to start when there is nothing to resume. An existing run
directory with a different config is an error (``train.steps``, logging/checkpoint intervals, ``device``,
``output_dir`` and the ``sample``/``eval``/``cluster`` sections may change).
SIGTERM/SIGUSR2 save a checkpoint at the next step boundary and exit with status 124.
"""

from __future__ import annotations

import argparse
import sys

from msrepro.cli.config_cmd import split_items

NAME = "train"
HELP = "train a model (resumes an existing run directory; SIGTERM/SIGUSR2 checkpoint and exit)"
INTERMIXED_ITEMS = True  # `msrepro train cfg.yaml --fresh train.steps=100`
PREEMPTED_EXIT = 124


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", help="YAML files and key=value overrides, in order (later wins)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fresh", action="store_true", help="delete the run's checkpoints and metrics, start over")
    mode.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from msrepro.runconfig import load_config
    from msrepro.training import Preempted, train

    files, overrides = split_items(list(args.items))
    cfg = load_config(files, overrides)
    try:
        result = train(cfg, progress=not args.no_progress, fresh=args.fresh, resume=True if args.resume else None)
    except Preempted as exc:
        print(f"msrepro train: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT
    m = result.metrics
    print(f"trained {result.run_dir} to step {result.step} in {m.get('wall_s', 0.0):.1f} s of training; "
          f"held-out loss {m.get('heldout_loss', float('nan')):.5f}; checkpoint {result.checkpoint}")
    return 0
