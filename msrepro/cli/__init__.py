"""``msrepro`` command line: one module per subcommand, listed explicitly in COMMANDS.

Every subcommand module is imported to build the parser, so each keeps its heavy imports (torch, the launcher,
evaluation, generation, clustering) inside ``run``: ``msrepro --help`` and argument errors stay fast. Light ones
(stdlib, omegaconf, tabulate, ``msrepro.config`` / ``registry`` / ``io``) are at module top.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from omegaconf.errors import OmegaConfBaseException

from msrepro.config import ConfigError
from msrepro.registry import RegistryError

# Each module defines NAME, HELP, add_arguments(parser) and run(args) -> int.
COMMANDS: tuple[str, ...] = (
    "msrepro.cli.list_cmd",
    "msrepro.cli.config_cmd",
    "msrepro.cli.prefetch_cmd",
    "msrepro.cli.train_cmd",
    "msrepro.cli.sample_cmd",
    "msrepro.cli.cluster_cmd",
    "msrepro.cli.flops_cmd",
    "msrepro.cli.evaluate_cmd",
    "msrepro.cli.evaluate_run_cmd",
    "msrepro.cli.refstats_cmd",
    "msrepro.cli.train_vae_cmd",
    "msrepro.cli.encode_latents_cmd",
    "msrepro.cli.import_cmd",
    "msrepro.cli.submit_cmd",
    "msrepro.cli.status_cmd",
    "msrepro.cli.tables_cmd",
    "msrepro.cli.reproduce_cmd",
)


class UserError(Exception):
    """Bad input: printed as one clear message, exit status 2, no traceback."""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="msrepro",
        description="Reproduce the multi-stage diffusion paper (Zhang, Lu et al., CVPR 2024) at any scale.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {}
    for path in COMMANDS:
        mod = importlib.import_module(path)
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        modules[mod.NAME] = mod
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    parser, modules = build_parser()
    args, extra = parser.parse_known_args(argv)
    # a command with INTERMIXED_ITEMS = True takes key=value items before, between and after its options
    intermixed = getattr(modules[args.command], "INTERMIXED_ITEMS", False)
    if extra and (not intermixed or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.items = [*args.items, *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(modules[args.command].run(args) or 0)
    except (UserError, ConfigError, RegistryError, FileNotFoundError) as exc:
        print(f"msrepro {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OmegaConfBaseException as exc:
        print(f"msrepro {args.command}: config error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
