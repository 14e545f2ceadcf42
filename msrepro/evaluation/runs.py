"""Metric vs training iterations (the paper's Figure 1d): evaluate a run's saved checkpoints, plot several runs.

``evaluate_run`` appends one JSON line per checkpoint to ``<run_dir>/eval.jsonl`` (step, metrics, protocol,
PFLOPs) and skips checkpoints already evaluated under the same protocol, so it resumes. PFLOPs follow the
paper's Table 2 footnote: iterations x GFLOPs x 1e-6 with "GFLOPs" = GMACs per forward, length-weighted over
stages (:func:`msrepro.flops.accounting`).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from msrepro.evaluation.scoring import evaluate_checkpoint
from msrepro.evaluation.metrics import LABELS
from msrepro.flops import training_pflops
from msrepro.io import append_jsonl, atomic_write

EVAL_FILE = "eval.jsonl"
_CKPT = re.compile(r"ckpt-(\d+)\.pt$")
X_AXES = ("iterations", "pflops")


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's saved checkpoints ``checkpoints/ckpt-{step:08d}.pt``, by step."""
    found = [p for p in (Path(run_dir) / "checkpoints").glob("ckpt-*.pt") if _CKPT.search(p.name)]
    return sorted(found, key=lambda p: int(_CKPT.search(p.name).group(1)))


def read_eval(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / EVAL_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gmacs_per_iteration(cfg: Any) -> float | None:
    """Length-weighted GMACs of one forward pass (the paper's "GFLOPs"), or None if it cannot be counted."""
    try:
        from msrepro.flops import accounting, paper_gflops

        return paper_gflops(accounting(cfg))
    except Exception:  # a backbone without FLOP support must not stop an evaluation
        return None


def _request(kwargs: Mapping[str, Any]) -> str:
    """What was asked (metrics, num, seeds, repeats, sampler, ema): equal requests give equal records."""
    from msrepro.config import to_dict

    keys = ("metrics", "num", "seeds", "repeats", "sample", "ema")
    return json.dumps({k: to_dict(kwargs.get(k)) for k in keys}, sort_keys=True, default=str)


def evaluate_run(run_dir: str | Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Evaluate every saved checkpoint of a run (``evaluate_checkpoint`` keyword arguments), append to
    ``eval.jsonl``; returns its records for this request, by step. Checkpoints evaluated alike before are skipped."""
    from msrepro.checkpoint import checkpoint_config, load_checkpoint

    run_dir = Path(run_dir)
    ckpts = run_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"no checkpoints (checkpoints/ckpt-*.pt) in run folder {run_dir}")
    request = _request(kwargs)
    done = {Path(r["checkpoint"]).name for r in read_eval(run_dir) if r.get("request") == request}
    gmacs = gmacs_per_iteration(checkpoint_config(load_checkpoint(ckpts[-1])))
    for ckpt in ckpts:
        if ckpt.name in done:
            continue
        result = evaluate_checkpoint(ckpt, **kwargs)
        record = {k: v for k, v in result.items() if k != "repeats"}
        record.update(checkpoint=str(Path(ckpt).resolve()), request=request, gmacs_per_iteration=gmacs,
                      pflops=training_pflops(result["step"], gmacs))
        append_jsonl(run_dir / EVAL_FILE, record)
    return sorted((r for r in read_eval(run_dir) if r.get("request") == request), key=lambda r: r["step"])


def _label_and_dir(runs: Sequence[str | Path] | Mapping[str, str | Path]) -> list[tuple[str, Path]]:
    if isinstance(runs, Mapping):
        return [(str(k), Path(v)) for k, v in runs.items()]
    return [(Path(r).name, Path(r)) for r in runs]


def plot_metric_vs_iterations(runs: Sequence[str | Path] | Mapping[str, str | Path], out_png: str | Path, *,
                              metric: str | None = None, x: str = "iterations") -> Path:
    """One PNG, one curve per run (label: run folder name, or the mapping's keys): ``metric`` from each run's
    ``eval.jsonl`` against training iterations or PFLOPs (paper Figure 1d). The latest record per step is used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in X_AXES:
        raise ValueError(f"x axis '{x}' is not valid; allowed: {', '.join(X_AXES)}")
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, run_dir in _label_and_dir(runs):
        records = read_eval(run_dir)
        if not records:
            raise FileNotFoundError(f"{run_dir / EVAL_FILE} is missing or empty: run msrepro evaluate-run first")
        metric = metric or next(iter(records[0]["metrics"]))
        by_step = {r["step"]: r for r in records if metric in r["metrics"]}
        steps = sorted(by_step)
        xs = [s if x == "iterations" else by_step[s].get("pflops") for s in steps]
        if any(v is None for v in xs):
            raise ValueError(f"{run_dir}: PFLOPs unknown for some checkpoints; plot against iterations")
        ax.plot(xs, [by_step[s]["metrics"][metric] for s in steps], marker="o", label=label)
    ax.set_xlabel("training iterations" if x == "iterations" else "training PFLOPs (iterations x GMACs x 1e-6)")
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(out_png, lambda f: f.write(buf.getvalue()), mode="wb")
