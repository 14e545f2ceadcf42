"""``msrepro config show [CONFIG.yaml ...] [key=value ...]``: print the resolved, validated run config."""

from __future__ import annotations

import argparse

from msrepro.config import to_yaml

NAME = "config"
HELP = "show the resolved run config (defaults < backbone preset < files < overrides)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show"], help="show: print the resolved config as YAML")
    p.add_argument("items", nargs="*", help="YAML files and key=value overrides, in order")
    p.add_argument("--no-validate", action="store_true", help="print without validating")


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """Separate config files from key=value overrides (anything with '=' is an override)."""
    files = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    return files, overrides


def run(args: argparse.Namespace) -> int:
    from msrepro.runconfig import load_config

    files, overrides = split_items(args.items)
    cfg = load_config(files, overrides, validate=not args.no_validate)
    print(to_yaml(cfg), end="")
    return 0
