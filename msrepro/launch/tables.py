"""Results tables (paper Tables 1-4) from cell result JSONs: ours, the paper's, and the difference; several runs
side by side. Reads only the run folders' files (``run.json``, ``graph.json``, ``cells/*.json``).

A difference is printed only for like-for-like quantities: a column's ``compare`` says when (``always``: NFE,
cut points; ``metric``: the quality metric is the paper's FID; ``full``: the run used the paper's budgets).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msrepro.flops import paper_gflops, training_pflops
from msrepro.launch.experiments import Column, Row, Table
from msrepro.launch.rundir import cell_path, read_json

PAPER_METRIC = "fid"
METRIC_LABELS = {"fid": "FID", "fd_digits": "FD_digits", "kid": "KID", "prc": "PRC"}
FORMATS: tuple[str, ...] = ("md", "latex", "csv", "json")


@dataclass
class Run:
    """A finished or running run, read from its folder."""

    path: Path
    info: dict[str, Any]
    graph: dict[str, Any]

    label: str | None = None  # set by build() when two runs share a name

    @property
    def name(self) -> str:
        return self.label or self.info.get("name") or self.path.name

    @property
    def preset(self) -> str:
        return self.info.get("preset", "?")

    @classmethod
    def load(cls, path: Path) -> "Run":
        return cls(Path(path), read_json(Path(path) / "run.json") or {}, read_json(Path(path) / "graph.json") or {})

    def entry(self, row: Row) -> dict[str, Any] | None:
        return self.graph.get("rows", {}).get(row.ref)

    def result(self, row: Row) -> dict[str, Any] | None:
        e = self.entry(row)
        if not e or not e.get("cell"):
            return None
        return read_json(cell_path(self.path, e["cell"]))


def quality_metric(result: dict[str, Any]) -> str:
    return list(result["config"]["eval"]["metrics"])[0]


def _gflops(result: dict[str, Any]) -> float | None:
    return paper_gflops(result.get("flops") or {})


def _iterations(result: dict[str, Any]) -> float:
    return float((result.get("train") or {}).get("step") or result["config"]["train"]["steps"])


def value(column: Column, result: dict[str, Any], run: Run, row: Row) -> Any:
    """Our value of ``column`` from a cell result (None where the result has no such quantity)."""
    src = column.source
    if src == "nfe":
        return result.get("nfe")
    if src == "quality":
        v = (result.get("metrics") or {}).get(quality_metric(result))
        return v.get("mean") if isinstance(v, dict) else v
    if src == "iterations":
        return _iterations(result)
    if src == "gflops":
        return _gflops(result)
    if src == "pflops":
        return training_pflops(_iterations(result), _gflops(result))
    if src in ("t1", "t2"):
        cuts = (result.get("cluster") or {}).get("boundaries") or []
        i = 0 if src == "t1" else 1
        return cuts[i] if len(cuts) > i else None
    if src == "dataset_label":
        if run.preset == "full":
            return row.paper.get(column.name)
        ds = result["config"]["dataset"]
        return f"{ds['name']} {ds['resolution']}x{ds['resolution']}"
    raise ValueError(f"unknown column source {src}")


def comparable(column: Column, result: dict[str, Any], run: Run) -> bool:
    if column.compare == "always":
        return True
    if column.compare == "metric":
        return quality_metric(result) == PAPER_METRIC
    if column.compare == "full":
        return run.preset == "full"
    return False


def fmt(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if spec == "d":
        return str(int(round(v)))
    if spec == "auto":  # two decimals, or three significant digits for small values (tiny models)
        return f"{v:.2f}" if v == 0 or abs(v) >= 0.1 else f"{v:.3g}"
    return format(v, spec) if spec else str(v)


def _diff(a: Any, b: Any, spec: str) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "-"
    d = a - b
    s = fmt(d, ".2f" if spec == "auto" and max(abs(a), abs(b)) >= 0.1 else spec)
    return s if s.startswith("-") else f"+{s}"


def row_status(run: Run, row: Row) -> str:
    """Why a row has no values: quoted, skipped (reason), or the state of its steps."""
    e = run.entry(row)
    if row.quoted is not None:
        return "quoted"
    if e is None:
        return "not in run"
    if e["status"] == "skipped":
        return f"skipped: {e['reason']}"
    from msrepro.launch.state import run_states

    cell = run.graph["cells"][e["cell"]]
    steps = [s for s in (cell.get("cluster"), cell["train"], cell["evaluate"]) if s]
    saved = read_json(run.path / "states.json")  # a copied run (results/<run>) keeps its final states
    if saved is not None and not (run.path / "steps").is_dir():
        states = {s: saved.get(s, {}).get("state", "missing") for s in steps}
    else:
        states = {s: st.state for s, st in run_states(run.path, steps).items()}
    for label in ("failed", "running", "queued"):
        for s in steps:
            if states[s] == label:
                return f"{label} ({s.split('-')[0]})"
    return "missing"


def build(table: Table, runs: list[Run]) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, notes) of ``table`` for ``runs``: per column the paper's value, then each run's value and
    its difference to the paper where like-for-like."""
    names = [r.info.get("name") or r.path.name for r in runs]
    for run, name in zip(runs, names):  # runs of the same name are told apart by their folder
        run.label = str(run.path) if names.count(name) > 1 else None
    headers = ["Method"]
    notes: list[str] = []
    metric_names: dict[str, set[str]] = {r.name: set() for r in runs}
    results = {(run.name, row.id): run.result(row) for run in runs for row in table.rows}
    for run in runs:
        for row in table.rows:
            res = results[(run.name, row.id)]
            if res is not None:
                metric_names[run.name].add(quality_metric(res))
    for col in table.columns:
        headers.append(f"{col.header} (paper)")
        for run in runs:
            label = col.header
            if col.source == "quality" and metric_names[run.name]:
                label = "/".join(sorted(METRIC_LABELS.get(m, m) for m in metric_names[run.name]))
            headers.append(f"{label} ({run.name})")
            if col.compare != "never":
                headers.append(f"Δ {label} ({run.name})")
    body = []
    for row in table.rows:
        line = [row.label + (" [quoted]" if row.quoted else "")]
        for col in table.columns:
            paper = row.paper.get(col.name)
            line.append(fmt(paper, col.fmt))
            for run in runs:
                res = results[(run.name, row.id)]
                if res is None:
                    line.append(row_status(run, row) if col is table.columns[0] else "")
                    if col.compare != "never":
                        line.append("")
                    continue
                ours = value(col, res, run, row)
                line.append(fmt(ours, col.fmt))
                if col.compare != "never":
                    line.append(_diff(ours, paper, col.fmt) if comparable(col, res, run) else "n/c")
        body.append(line)
    for run in runs:
        other = metric_names[run.name] - {PAPER_METRIC}
        if other:
            notes.append(f"{run.name} (preset {run.preset}): quality is {', '.join(sorted(METRIC_LABELS.get(m, m) for m in other))}"
                         f", not the paper's FID; n/c = not comparable, no difference shown.")
        elif run.preset != "full":
            notes.append(f"{run.name} (preset {run.preset}): budgets are scaled down; n/c = not comparable.")
    notes += cut_point_notes(table, runs, results)
    notes.append("GFLOPs = multiply-adds per forward pass (the paper's convention), weighted by interval length "
                 "over the stages; PFLOPs = iterations x GFLOPs x 1e-6 (paper footnote 2).")
    return headers, body, notes


def cut_point_notes(table: Table, runs: list[Run], results: dict[tuple[str, str], Any]) -> list[str]:
    """For tables that show cut points: which objective produced each row's cut points (the cluster step's
    ``objective``, e.g. the optimal denoiser's weighting)."""
    if not any(c.source in ("t1", "t2") for c in table.columns):
        return []
    notes = []
    for run in runs:
        for row in table.rows:
            cluster = (results.get((run.name, row.id)) or {}).get("cluster") or {}
            if cluster.get("objective"):
                notes.append(f"{run.name}: cut points of {row.label}: {cluster['objective']}.")
    return notes


def render(table: Table, runs: list[Run], form: str) -> str:
    """``table`` for ``runs`` in ``md``, ``latex``, ``csv`` or ``json``."""
    from tabulate import tabulate

    headers, body, notes = build(table, runs)
    if form == "md":
        return f"**{table.title}**\n\n" + tabulate(body, headers, tablefmt="github", disable_numparse=True) + "\n\n" + \
            "\n".join(f"- {n}" for n in notes) + "\n"
    if form == "latex":
        return (f"% {table.title}\n" + tabulate(body, headers, tablefmt="latex_booktabs", disable_numparse=True) + "\n"
                + "".join(f"% {n}\n" for n in notes))
    if form == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(headers)
        w.writerows(body)
        return buf.getvalue()
    if form == "json":
        import json

        return json.dumps({"table": table.name, "title": table.title, "headers": headers, "rows": body,
                           "notes": notes}, indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown format '{form}'; valid: {', '.join(FORMATS)}")


def write_tables(tables: list[Table], runs: list[Run], out_dir: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Each table in each format into ``out_dir`` (atomically); returns the files."""
    from msrepro.io import atomic_write_text

    ext = {"md": "md", "latex": "tex", "csv": "csv", "json": "json"}
    out = []
    for table in tables:
        for form in formats:
            path = Path(out_dir) / f"{table.name}.{ext[form]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            out.append(atomic_write_text(path, render(table, runs, form)))
    return out
