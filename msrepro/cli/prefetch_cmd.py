"""``msrepro prefetch TARGET [--dest DIR]``: download what msrepro needs from the internet, once."""

from __future__ import annotations

import argparse
from pathlib import Path

from msrepro.cli import UserError

NAME = "prefetch"
HELP = "download datasets and weights (run where there is internet; everything else works offline)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="*", help="what to fetch (no argument: list the targets)")
    p.add_argument("--dest", type=Path, default=None, help="destination folder (default: msrepro's cache)")


def run(args: argparse.Namespace) -> int:
    from msrepro.prefetch import prefetch, targets

    valid = targets()
    if not args.targets:
        for name, desc in valid.items():
            print(f"{name:16s} {desc}")
        return 0
    bad = [t for t in args.targets if t not in valid]
    if bad:
        raise UserError(f"unknown prefetch target(s) {', '.join(bad)}. Valid targets: {', '.join(valid)}")
    for t in args.targets:
        print(f"{t}: {prefetch(t, args.dest)}")
    return 0
