"""``msrepro list [REGISTRY] [PATTERN]``: every registered entry with a one-line description."""

from __future__ import annotations

import argparse
import json

from tabulate import tabulate

from msrepro.registry import ensure_loaded, get_registry, plugin_failures, registries

NAME = "list"
HELP = "list registered backbones, clusterers, datasets, samplers, metrics, stage policies, schedules"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("registry", nargs="?", help="one registry (default: all)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'edm*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    ensure_loaded()
    regs = [get_registry(args.registry)] if args.registry else list(registries().values())
    failures = plugin_failures()
    if args.json:
        out = {r.kind: [{"name": e.name, "description": e.description, "origin": e.origin}
                        for e in r.entries(args.pattern)] for r in regs}
        out["plugin_failures"] = [f.__dict__ for f in failures]
        print(json.dumps(out, indent=2))
        return 1 if failures else 0
    for reg in regs:
        rows = [(e.name, e.description, e.origin) for e in reg.entries(args.pattern)]
        print(f"{reg.kind} ({len(rows)})")
        print(tabulate(rows, headers=["name", "description", "origin"], disable_numparse=True) if rows else "  (none)")
        print()
    for f in failures:
        print(f"plugin {f.name} = {f.value} (group {f.group}) FAILED to load: {f.error}")
    return 1 if failures else 0
