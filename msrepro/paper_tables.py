"""The paper's tables (``registry/experiments/table*.yaml``) as data: columns, rows, each row's config per preset
and the paper's numbers. A *run row* names a backbone, config overrides shared by all presets and the overrides of
each preset (``full`` = the paper, ``tiny`` = digits at meaningful scale, ``smoke`` = seconds per job); a *quoted
row* (literature baselines) only carries the paper's numbers. A run row's config is: schema < backbone preset < row
``config`` < row preset, validated like any run config. The launcher plans run rows (:mod:`msrepro.launch.plan`)
and fills the tables from their results (:mod:`msrepro.launch.results`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

import msrepro.registry
from msrepro._builtins import BUILTIN_BACKBONES
from msrepro.config import ConfigError, merge, normalize_unified, preset_overrides, schema
from msrepro.registry import BACKBONES, plugin_failures
from msrepro.runconfig import validate_run_config

PRESETS: tuple[str, ...] = ("full", "tiny", "smoke")
#: what a table column can show; see msrepro.launch.results for how each is read from a cell result
SOURCES: tuple[str, ...] = ("nfe", "quality", "iterations", "gflops", "pflops", "t1", "t2", "dataset_label")
COMPARE: tuple[str, ...] = ("always", "metric", "full", "never")


@dataclass(frozen=True)
class Column:
    name: str
    header: str
    source: str
    compare: str = "never"   # when ours - paper is shown: always, metric (same metric as the paper), full, never
    fmt: str = ""


@dataclass(frozen=True)
class Row:
    table: str
    id: str
    label: str
    paper: dict[str, Any]
    quoted: str | None = None
    backbone: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    prepare: dict[str, dict[str, Any]] = field(default_factory=dict)  # overrides of the prerequisite, per preset

    @property
    def ref(self) -> str:
        return f"{self.table}.{self.id}"


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    comparison: dict[str, Any] = field(default_factory=dict, hash=False)  # baselines, ratios: msrepro.comparison

    def row(self, row_id: str) -> Row:
        for r in self.rows:
            if r.id == row_id:
                return r
        raise ConfigError(f"{self.name}: no row '{row_id}'; rows: {', '.join(r.id for r in self.rows)}")


def experiments_dir() -> Path:
    """Folder of the table YAMLs (inside the installed ``msrepro.registry`` package)."""
    return Path(msrepro.registry.__file__).resolve().parent / "experiments"


def table_names() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.yaml"))


def _parse_table(data: dict[str, Any], where: str) -> Table:
    name = data.get("name")
    if not name or "rows" not in data or "columns" not in data:
        raise ConfigError(f"{where}: a table needs name, columns and rows")
    cols = [Column(**c) for c in data["columns"]]
    for col in cols:
        if col.source not in SOURCES or col.compare not in COMPARE:
            raise ConfigError(f"{where}: column '{col.name}': source must be one of {', '.join(SOURCES)} and "
                              f"compare one of {', '.join(COMPARE)}")
    rows: list[Row] = []
    for r in data["rows"]:
        unknown = set(r) - {"id", "label", "paper", "quoted", "backbone", "config", "presets", "prepare"}
        if unknown:
            raise ConfigError(f"{where}: row {r.get('id')}: unknown keys {sorted(unknown)}")
        row = Row(table=name, **r)
        if row.id in {x.id for x in rows}:
            raise ConfigError(f"{where}: duplicate row id '{row.id}'")
        if row.quoted is None and (not row.backbone or set(row.presets) != set(PRESETS)):
            raise ConfigError(f"{where}: row '{row.id}' is run, so it needs a backbone and presets "
                              f"{', '.join(PRESETS)} (got {', '.join(row.presets) or 'none'})")
        missing = {c.name for c in cols} - set(row.paper)
        if missing:
            raise ConfigError(f"{where}: row '{row.id}' lacks the paper's value for {sorted(missing)}")
        rows.append(row)
    return Table(name=name, title=data.get("title", name), columns=tuple(cols), rows=tuple(rows),
                 comparison=dict(data.get("comparison") or {}))


def load_table(name: str) -> Table:
    """Table ``name`` (table1 ... table4) or a path to a table YAML of your own."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else experiments_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown table '{name}'; valid tables: {', '.join(table_names())} (or 'all')")
    return _parse_table(yaml.safe_load(path.read_text()), str(path))


def select_tables(names: list[str] | tuple[str, ...]) -> list[Table]:
    """Tables from command-line names (``all``, ``table1``, ``1``, comma lists); errors name the valid ones."""
    wanted: list[str] = []
    for n in (n.strip() for item in names for n in str(item).split(",")):
        if n:
            wanted.extend(table_names() if n == "all" else [f"table{n}" if n.isdigit() else n])
    if not wanted:
        raise ConfigError(f"no table given; valid tables: {', '.join(table_names())} or 'all'")
    return [load_table(n) for n in dict.fromkeys(wanted)]


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}")
    return preset


def row_config(row: Row, preset: str, *, validate: bool = True) -> DictConfig:
    """The resolved run config of a run row at ``preset``: schema < backbone preset < row config < row preset."""
    where = f"{row.ref} ({check_preset(preset)})"
    cfg = merge(schema(), preset_overrides(row.backbone, preset), where=f"{where}: backbone preset")
    cfg = merge(cfg, OmegaConf.create(row.config), where=f"{where}: config")
    cfg = merge(cfg, OmegaConf.create(row.presets.get(preset) or {}), where=f"{where}: presets.{preset}")
    cfg = normalize_unified(cfg)  # the same canonical form as load_config: equal models hash equal
    if validate:
        try:
            validate_run_config(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return cfg


def backbone_installed(name: str, where: str) -> bool:
    """Whether backbone ``name`` (of table row ``where``) is registered. A plugin that failed to import, or a missing
    built-in one, is a ConfigError naming the cause; an outside backbone that is simply not installed is False (its
    rows are skipped)."""
    if name in BACKBONES:
        return True
    for f in plugin_failures():
        if f.group == BACKBONES.entry_point_group and f.name == name:
            raise ConfigError(f"{where}: backbone '{name}' ({f.value}) failed to import: {f.error}; fix that "
                              f"installation (msrepro list backbones shows it)")
    if name in BUILTIN_BACKBONES:
        raise ConfigError(f"{where}: built-in backbone '{name}' is not registered: msrepro's entry point "
                          f"{name} = {BUILTIN_BACKBONES[name]} is missing; reinstall msrepro (pip install -e .)")
    return False
