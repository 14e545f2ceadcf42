"""The job graph (SPEC 2): table rows -> experiment cells -> steps ``cluster -> train -> evaluate``.

A *cell* is a fully resolved run config; its hash is its identity, so the same cell in two tables runs once.
Steps are deduplicated the same way at their own level: a step's key hashes only what the step reads (the
cluster step: data, schedule, clusterer, k, seed; the train step: everything but sampling and evaluation; the
evaluate step: the whole cell). EDM at 25 and at 35 NFE therefore share one training run. The ``gradient``
clusterer reads checkpoints of the unified model, so its cluster step depends on that model's train step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from msrepro.config import ConfigError, to_dict
from msrepro.launch.experiments import Row, Table, check_preset, row_config

KINDS: tuple[str, ...] = ("vae", "cluster", "train", "evaluate")
#: run-config keys that never change what a step computes (where it writes, which device it picks)
_NEUTRAL = ("name", "output_dir", "device")
#: clusterers that read a trained unified model (their checkpoints) instead of data alone
NEEDS_UNIFIED_MODEL: tuple[str, ...] = ("gradient",)


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _without(cfg: DictConfig, *keys: str) -> dict[str, Any]:
    """The config as a dict without ``keys`` and what cannot matter: where it writes, and for a unified model the
    stage settings and the clusterer; for a clustered model the configured cut points (the cluster step gives them)."""
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


def needs_cluster(cfg: DictConfig) -> bool:
    """Multi-stage cells (K > 1, not unified) get their cut points from a cluster step."""
    return cfg.model.variant != "unified" and int(cfg.stages.num_stages) > 1


def unified_reference(cfg: DictConfig) -> DictConfig:
    """The unified model whose checkpoints a model-reading clusterer (``gradient``) differentiates."""
    ref = OmegaConf.create(to_dict(cfg))
    ref.model.variant = "unified"
    ref.stages.num_stages = 1
    ref.stages.boundaries = None
    ref.stages.from_result = None
    ref.train.early_stopping = {}
    return ref


def needs_latents(cfg: DictConfig) -> bool:
    """Latent-diffusion cells without a latent cache get one from a ``vae`` step (train the VAE, encode)."""
    return cfg.dataset.name == "latents" and not cfg.dataset.root


def cluster_key(cfg: DictConfig, model_key: str | None, vae: str | None = None) -> str:
    return config_hash({"dataset": to_dict(cfg.dataset), "schedule": to_dict(cfg.schedule),
                        "cluster": to_dict(cfg.cluster), "k": int(cfg.stages.num_stages), "seed": cfg.seed,
                        "model": model_key, **({"vae": vae} if vae else {})})


def train_key(cfg: DictConfig, cluster: str | None, vae: str | None = None) -> str:
    return config_hash({"config": _without(cfg, "sample", "eval", "cluster"), "cluster": cluster,
                        **({"vae": vae} if vae else {})})


@dataclass
class Step:
    """One job: ``kind`` on a config; ``deps`` are the keys of the steps it waits for."""

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

    def _add(self, step: Step) -> Step:
        if step.id not in self.steps:
            self.steps[step.id] = step
        return self.steps[step.id]

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
        return {"preset": self.preset, "tables": self.tables,
                "rows": {r: vars(e) for r, e in self.rows.items()},
                "cells": {k: {"rows": c.rows, "cluster": c.cluster, "train": c.train, "evaluate": c.evaluate}
                          for k, c in self.cells.items()},
                "steps": {s.id: {"kind": s.kind, "deps": s.deps, "cells": s.cells} for s in self.steps.values()}}


def _add_train(graph: JobGraph, cfg: DictConfig, cluster: Step | None, cell: str | None,
               vae: Step | None = None) -> Step:
    key = train_key(cfg, cluster.key if cluster else None, vae.key if vae else None)
    deps = [s.id for s in (vae, cluster) if s is not None]
    step = graph._add(Step("train", key, cfg, deps=deps))
    if cell and cell not in step.cells:
        step.cells.append(cell)
    return step


def _add_cell(graph: JobGraph, cfg: DictConfig, ref: str, vae_cfg: DictConfig | None = None) -> Cell:
    key = cell_key(cfg) if vae_cfg is None else config_hash({"cell": cell_key(cfg), "vae": to_dict(vae_cfg)})
    if key in graph.cells:
        graph.cells[key].rows.append(ref)
        return graph.cells[key]
    vae = graph._add(Step("vae", config_hash(to_dict(vae_cfg)), vae_cfg)) if vae_cfg is not None else None
    if vae is not None:
        vae.cells.append(key)
    cluster = None
    if needs_cluster(cfg):
        deps, model_key = [vae.id] if vae else [], None
        if cfg.cluster.name in NEEDS_UNIFIED_MODEL:
            ref_train = _add_train(graph, unified_reference(cfg), None, None, vae)
            deps, model_key = deps + [ref_train.id], ref_train.key
        cluster = graph._add(Step("cluster", cluster_key(cfg, model_key, vae.key if vae else None), cfg, deps=deps))
        cluster.cells.append(key)
    train = _add_train(graph, cfg, cluster, key, vae)
    ev = graph._add(Step("evaluate", key, cfg, deps=[train.id], cells=[key]))
    cell = Cell(key, cfg, [ref], cluster.id if cluster else None, train.id, ev.id)
    graph.cells[key] = cell
    return cell


def _backbone_installed(name: str) -> bool:
    """Whether backbone ``name`` is registered. A backbone whose plugin failed to import, or a built-in one that is
    missing, is a ConfigError naming the cause (its rows would otherwise vanish from the tables); an outside
    backbone that is simply not installed is False (its rows are skipped, with the reason)."""
    from msrepro._builtins import BUILTIN_BACKBONES
    from msrepro.registry import BACKBONES, plugin_failures

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


def build_graph(tables: list[Table], preset: str, *, validate: bool = True) -> JobGraph:
    """Every row of ``tables`` at ``preset`` as cells and deduplicated steps; configs validated up front."""
    check_preset(preset)
    graph = JobGraph(preset=preset, tables=[t.name for t in tables])
    for table in tables:
        for row in table.rows:
            graph.rows[row.ref] = _row_entry(graph, row, preset, validate)
    return graph


def _row_entry(graph: JobGraph, row: Row, preset: str, validate: bool) -> RowEntry:
    if row.quoted is not None:
        return RowEntry(row.ref, "quoted", reason=row.quoted)
    try:
        installed = _backbone_installed(row.backbone)
    except ConfigError as exc:
        raise ConfigError(f"{row.ref}: {exc}") from None
    if not installed:
        return RowEntry(row.ref, "skipped", reason=f"backbone {row.backbone} not installed")
    cfg = row_config(row, preset, validate=validate)
    if validate and needs_cluster(cfg):
        from msrepro.clustering import check_cluster_config

        try:  # the cluster step's k and options, before anything is queued
            check_cluster_config(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{row.ref} ({preset}): {exc}") from None
    vae_cfg = vae_config(row, preset) if needs_latents(cfg) else None
    return RowEntry(row.ref, "cell", cell=_add_cell(graph, cfg, row.ref, vae_cfg).key)


def vae_config(row: Row, preset: str) -> DictConfig:
    """The VAE run (``msrepro train-vae``) whose latents a latent-diffusion row trains on: the VAE preset of the
    same name, overridden by the row's ``vae`` section for that preset."""
    from msrepro.config import merge
    from msrepro.vae.config import load_vae_config

    cfg = load_vae_config(overrides=[f"preset={preset}"])
    return merge(cfg, OmegaConf.create((row.vae or {}).get(preset) or {}), where=f"{row.ref}: vae.{preset}")
