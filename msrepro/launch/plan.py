"""The plan (SPEC 2): table YAML (``registry/experiments/table*.yaml``) -> rows -> cells -> deduplicated steps.

A *run row* names a backbone, config overrides shared by all presets, the overrides of each preset (``full`` = the
paper, ``tiny`` = digits at meaningful scale, ``smoke`` = seconds per job) and the paper's numbers; a *quoted row*
(literature baselines) only carries the paper's numbers. A row's config is: schema < backbone preset < row
``config`` < row preset.

A *cell* is a fully resolved run config; its hash is its identity, so the same cell in two tables runs once. Steps
``prepare -> cluster -> train -> evaluate`` are deduplicated the same way at their own level: a step's key hashes
only what the step reads (cluster: data, schedule, clusterer, k, seed; train: everything but sampling and
evaluation; evaluate: the whole cell). ``prepare`` is the backbone's prerequisite step
(:meth:`msrepro.backbones.base.Backbone.prerequisite`), if it declares one. A model-reading clusterer
(``gradient``) differentiates the unified model, so its cluster step waits for that model's train step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

import msrepro.registry
from msrepro._builtins import BUILTIN_BACKBONES
from msrepro.clustering import check_cluster_config
from msrepro.config import ConfigError, merge, normalize_unified, preset_overrides, schema, to_dict
from msrepro.models import get_backbone
from msrepro.registry import BACKBONES, plugin_failures
from msrepro.runconfig import validate_run_config

PRESETS: tuple[str, ...] = ("full", "tiny", "smoke")
KINDS: tuple[str, ...] = ("prepare", "cluster", "train", "evaluate")
#: what a table column can show; see msrepro.launch.results for how each is read from a cell result
SOURCES: tuple[str, ...] = ("nfe", "quality", "iterations", "gflops", "pflops", "t1", "t2", "dataset_label")
COMPARE: tuple[str, ...] = ("always", "metric", "full", "never")
#: clusterers that read a trained unified model (its checkpoints) instead of data alone
NEEDS_UNIFIED_MODEL: tuple[str, ...] = ("gradient",)
_NEUTRAL = ("name", "output_dir", "device")  # never change what a step computes


# -- the table registry ---------------------------------------------------------------------------------------
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


# -- cells and steps --------------------------------------------------------------------------------------------
def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def needs_cluster(cfg: DictConfig) -> bool:
    """Multi-stage cells (K > 1, not unified) get their cut points from a cluster step."""
    return cfg.model.variant != "unified" and int(cfg.stages.num_stages) > 1


def _without(cfg: DictConfig, *keys: str) -> dict[str, Any]:
    """The config without ``keys`` and what cannot matter: where it writes; for a unified model the stage settings
    and the clusterer; for a clustered model the configured cut points (the cluster step gives them)."""
    d = to_dict(cfg)
    for k in (*_NEUTRAL, *keys):
        d.pop(k, None)
    if cfg.model.variant == "unified":
        d["stages"] = {"num_stages": 1}
        d["model"].pop("decoder_channels", None)
        d.pop("cluster", None)
    elif needs_cluster(cfg):
        for k in ("boundaries", "boundaries_schedule", "from_result"):
            d["stages"].pop(k, None)
    return d


def cell_key(cfg: DictConfig) -> str:
    return config_hash(_without(cfg))


def unified_reference(cfg: DictConfig) -> DictConfig:
    """The unified model whose checkpoints a model-reading clusterer (``gradient``) differentiates."""
    ref = OmegaConf.create(to_dict(cfg))
    ref.model.variant, ref.stages.num_stages, ref.stages.boundaries, ref.stages.from_result = "unified", 1, None, None
    ref.train.early_stopping = {}
    return ref


@dataclass
class Step:
    """One job: ``kind`` on a config; ``deps`` are the ids of the steps it waits for."""

    kind: str
    key: str
    config: DictConfig
    deps: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)  # evaluate: its cell; others: cells that use it

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.key}"


@dataclass
class Cell:
    key: str
    config: DictConfig
    rows: list[str]                 # table.row references that show this cell
    cluster: str | None             # step ids
    train: str
    evaluate: str


@dataclass
class RowEntry:
    """A table row at one preset: its cell, or why it has none (quoted, skipped)."""

    ref: str
    status: str                     # cell, quoted, skipped
    cell: str | None = None
    reason: str = ""


@dataclass
class JobGraph:
    preset: str
    tables: list[str]
    steps: dict[str, Step] = field(default_factory=dict)   # by step id, in insertion (= topological) order
    cells: dict[str, Cell] = field(default_factory=dict)
    rows: dict[str, RowEntry] = field(default_factory=dict)

    def add(self, step: Step, cell: str | None = None) -> Step:
        """``step``, or the equal step already in the graph; ``cell`` is noted as one of its users."""
        step = self.steps.setdefault(step.id, step)
        if cell and cell not in step.cells:
            step.cells.append(cell)
        return step

    def levels(self) -> list[list[Step]]:
        """Steps grouped by depth (a step's level = 1 + its deepest dependency)."""
        depth: dict[str, int] = {}
        for sid, step in self.steps.items():  # insertion order is topological
            depth[sid] = 1 + max((depth[d] for d in step.deps), default=-1)
        out: list[list[Step]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for sid, d in depth.items():
            out[d].append(self.steps[sid])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "tables": self.tables, "rows": {r: vars(e) for r, e in self.rows.items()},
                "cells": {k: {"rows": c.rows, "cluster": c.cluster, "train": c.train, "evaluate": c.evaluate}
                          for k, c in self.cells.items()},
                "steps": {s.id: {"kind": s.kind, "deps": s.deps, "cells": s.cells} for s in self.steps.values()}}


def _add_cell(graph: JobGraph, cfg: DictConfig, ref: str, prepare: dict[str, Any] | None) -> Cell:
    key = cell_key(cfg) if prepare is None else config_hash({"cell": cell_key(cfg), "prepare": prepare})
    if key in graph.cells:
        graph.cells[key].rows.append(ref)
        return graph.cells[key]
    pre = graph.add(Step("prepare", config_hash(prepare), OmegaConf.create(prepare)), key) if prepare else None
    first = [pre.id] if pre else []

    def train(c: DictConfig, cluster: Step | None, cell: str | None) -> Step:
        k = config_hash({"config": _without(c, "sample", "eval", "cluster"), "cluster": cluster and cluster.key,
                         **({"prepare": pre.key} if pre else {})})
        return graph.add(Step("train", k, c, deps=first + ([cluster.id] if cluster else [])), cell)

    cluster = None
    if needs_cluster(cfg):
        deps, model = list(first), None
        if cfg.cluster.name in NEEDS_UNIFIED_MODEL:
            model = train(unified_reference(cfg), None, None)
            deps.append(model.id)
        ckey = config_hash({"dataset": to_dict(cfg.dataset), "schedule": to_dict(cfg.schedule),
                            "cluster": to_dict(cfg.cluster), "k": int(cfg.stages.num_stages), "seed": cfg.seed,
                            "model": model and model.key, **({"prepare": pre.key} if pre else {})})
        cluster = graph.add(Step("cluster", ckey, cfg, deps=deps), key)
    tr = train(cfg, cluster, key)
    ev = graph.add(Step("evaluate", key, cfg, deps=[tr.id]), key)
    graph.cells[key] = Cell(key, cfg, [ref], cluster.id if cluster else None, tr.id, ev.id)
    return graph.cells[key]


def _backbone_installed(name: str) -> bool:
    """Whether backbone ``name`` is registered. A plugin that failed to import, or a missing built-in one, is a
    ConfigError naming the cause; an outside backbone that is simply not installed is False (rows skipped)."""
    if name in BACKBONES:
        return True
    for f in plugin_failures():
        if f.group == BACKBONES.entry_point_group and f.name == name:
            raise ConfigError(f"backbone '{name}' ({f.value}) failed to import: {f.error}; fix that installation "
                              f"(msrepro list backbones shows it)")
    if name in BUILTIN_BACKBONES:
        raise ConfigError(f"built-in backbone '{name}' is not registered: msrepro's entry point "
                          f"{name} = {BUILTIN_BACKBONES[name]} is missing; reinstall msrepro (pip install -e .)")
    return False


def _row_entry(graph: JobGraph, row: Row, preset: str, validate: bool) -> RowEntry:
    if row.quoted is not None:
        return RowEntry(row.ref, "quoted", reason=row.quoted)
    try:
        installed = _backbone_installed(row.backbone)
    except ConfigError as exc:
        raise ConfigError(f"{row.ref}: {exc}") from None
    if not installed:
        return RowEntry(row.ref, "skipped", reason=f"backbone {row.backbone} not installed")
    try:
        cfg = row_config(row, preset, validate=validate)
        if validate and needs_cluster(cfg):
            check_cluster_config(cfg)  # the cluster step's k and options, before anything is queued
        prepare = get_backbone(row.backbone).prerequisite(cfg, preset, (row.prepare or {}).get(preset) or {})
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(row.ref) else f"{row.ref} ({preset}): {msg}") from None
    return RowEntry(row.ref, "cell", cell=_add_cell(graph, cfg, row.ref, prepare).key)


def plan(tables: list[str] | tuple[str, ...], preset: str, *, validate: bool = True) -> JobGraph:
    """Every row of the named tables at ``preset`` as cells and deduplicated steps (bad input fails here)."""
    check_preset(preset)
    selected = select_tables(list(tables))
    graph = JobGraph(preset=preset, tables=[t.name for t in selected])
    for table in selected:
        for row in table.rows:
            graph.rows[row.ref] = _row_entry(graph, row, preset, validate)
    return graph
