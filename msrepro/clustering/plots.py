"""PNG plots of a clusterer's evidence (matplotlib, Agg): similarity curves with the cut points marked, and the
similarity / affinity matrix with the cut points drawn as lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from msrepro.clustering.result import ClusterResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _edges(grid: np.ndarray) -> np.ndarray:
    """Cell edges around each grid value (midpoints; the ends mirrored)."""
    mid = (grid[1:] + grid[:-1]) / 2
    return np.concatenate([[grid[0] - (mid[0] - grid[0])], mid, [grid[-1] + (grid[-1] - mid[-1])]])


def _mark_cuts(ax: Any, cuts: Sequence[float], *, horizontal: bool = False) -> None:
    for j, c in enumerate(cuts, start=1):
        ax.axvline(c, color="k", ls="--", lw=1)
        if horizontal:
            ax.axhline(c, color="k", ls="--", lw=1)
        ax.annotate(f"t{j}={c:.4g}", (c, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top",
                    ha="right", fontsize=8)


def plot_curves(result: ClusterResult, path: Path) -> Path:
    """The clusterer's curves against schedule time, each cut point t_j marked."""
    plt = _pyplot()
    cur = result.diagnostics["curves"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    x = np.asarray(cur["x"], dtype=float)
    for label, ys in cur["series"].items():
        ax.plot(x, np.asarray(ys, dtype=float), marker="o" if len(x) <= 30 else None, ms=3, label=label)
    for label, level in (cur.get("levels") or {}).items():
        ax.axhline(level, color="grey", ls=":", lw=1, label=label)
    _mark_cuts(ax, result.boundaries)
    ax.set_xlabel(cur.get("xlabel", "t"))
    ax.set_ylabel(cur.get("ylabel", ""))
    ax.set_title(f"{result.clusterer} (k={result.k})")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_matrix(result: ClusterResult, path: Path) -> Path:
    """The similarity / affinity matrix on the grid, cut points drawn on both axes."""
    plt = _pyplot()
    mat = result.diagnostics["matrix"]
    grid = np.asarray(mat["grid"], dtype=float)
    values = np.asarray(mat["values"], dtype=float)
    edges = _edges(grid)
    fig, ax = plt.subplots(figsize=(5.6, 4.8), dpi=120)
    mesh = ax.pcolormesh(edges, edges, values, cmap=mat.get("cmap", "viridis"), shading="flat")
    fig.colorbar(mesh, ax=ax, label=mat.get("label", ""))
    _mark_cuts(ax, result.boundaries, horizontal=True)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(edges[-1], edges[0])
    ax.set_xlabel("t")
    ax.set_ylabel("t")
    ax.set_title(f"{result.clusterer}: {mat.get('title', 'similarity matrix')}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(result: ClusterResult, out_dir: Path) -> dict[str, Path]:
    """``curves.png`` and ``matrix.png`` for whatever of the two the result's diagnostics hold."""
    out: dict[str, Path] = {}
    if "curves" in result.diagnostics:
        out["curves"] = plot_curves(result, out_dir / "curves.png")
    if "matrix" in result.diagnostics:
        out["matrix"] = plot_matrix(result, out_dir / "matrix.png")
    return out


def save_result(result: ClusterResult, out_dir: str | Path, *, plots: bool = True) -> dict[str, str]:
    """The plots (unless ``plots`` is false), then ``result.json`` naming them, into ``out_dir``; the file paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.files = {k: str(p) for k, p in write_plots(result, out).items()} if plots else {}
    result.save(out)
    return result.files
