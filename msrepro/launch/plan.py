"""The plan (SPEC 2): tables (:mod:`msrepro.paper_tables`) -> rows -> cells -> deduplicated steps.

A *cell* is a fully resolved run config; its hash is its identity, so the same cell in two tables runs once. Steps
``prepare -> cluster -> train -> evaluate`` are deduplicated the same way at their own level: a step's key hashes
only what the step reads (cluster: data, schedule, clusterer, k, seed; train: everything but sampling and
evaluation; evaluate: the whole cell). ``prepare`` is the backbone's prerequisite step
(:meth:`msrepro.backbones.base.Backbone.prerequisite`), if it declares one. A clusterer that reads a model
(``Clusterer.reads_model``: ``gradient``) differentiates the unified model, so its cluster step waits for that
model's train step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from msrepro.clustering import check_cluster_config
from msrepro.config import ConfigError, to_dict
from msrepro.models import get_backbone
from msrepro.paper_tables import Row, backbone_installed, check_preset, row_config, select_tables
from msrepro.registry import CLUSTERERS

_NEUTRAL = ("name", "output_dir", "device")  # never change what a step computes


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
    """The unified model whose checkpoints a clusterer that reads a model (``gradient``) differentiates."""
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
        if CLUSTERERS.get(cfg.cluster.name).reads_model:
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


def _row_entry(graph: JobGraph, row: Row, preset: str, validate: bool) -> RowEntry:
    if row.quoted is not None:
        return RowEntry(row.ref, "quoted", reason=row.quoted)
    if not backbone_installed(row.backbone, row.ref):
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
