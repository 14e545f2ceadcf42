"""Comparison with the paper that survives the change of scale: ratios to a baseline row, ordering verdicts, the
real-data floor, compute to reach a quality (Figure 1d, Table 2) and early-stopping notes.

A table YAML's ``comparison:`` section declares what is compared (``registry/experiments/table*.yaml``)::

    comparison:
      baseline: unified                 # every run row against this row, or
      baselines: {multistage_row: unified_row, ...}
      ratios: [gflops, pflops, quality] # columns shown as row / baseline, ours beside the paper's
      compute_to_reach: true            # Table 2: multistage vs unified PFLOPs to the unified model's quality

Everything here is a pure function of cell results (``cells/*.json``) and the paper's numbers;
:func:`extend_table` is the results tables' hook (:data:`msrepro.launch.results.TABLE_EXTENSIONS`), written
against the table view's fields only, so this module imports nothing from the launcher.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from msrepro.flops import paper_gflops, training_pflops

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"
FLOOR_LABEL = "Real {dataset} (test split)"
METRIC_LABELS = {"fid": "FID", "fd_digits": "FD_digits", "kid": "KID", "prc": "PRC"}


# -- quantities of a cell result ----------------------------------------------------------------------------------
def quality_metric(result: Mapping[str, Any]) -> str:
    """The cell's quality metric: the first of ``config.eval.metrics``."""
    return list(result["config"]["eval"]["metrics"])[0]


def blocks(result: Mapping[str, Any]) -> int:
    """How many disjoint seed blocks the cell's quality is the mean of (``eval.repeats``; 1 if not recorded)."""
    return int(((result.get("config") or {}).get("eval") or {}).get("repeats") or 1)


def quality(result: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(mean, std over seed blocks) of the cell's quality metric; std is None with a single block."""
    m = quality_metric(result)
    v = (result.get("metrics") or {}).get(m)
    mean = v.get("mean") if isinstance(v, dict) else v
    std = (result.get("metrics_std") or {}).get(m)
    return mean, (float(std) if std is not None and blocks(result) > 1 else None)


def quantity(result: Mapping[str, Any], source: str) -> float | None:
    """A numeric column of a cell result: nfe, quality (mean), iterations, gflops or pflops (paper footnote 2)."""
    if source == "nfe":
        return result.get("nfe")
    if source == "quality":
        return quality(result)[0]
    iterations = float((result.get("train") or {}).get("step") or result["config"]["train"]["steps"])
    if source == "iterations":
        return iterations
    if source in ("gflops", "pflops"):
        g = paper_gflops(result.get("flops") or {})
        return g if source == "gflops" else training_pflops(iterations, g)
    raise ValueError(f"no numeric quantity '{source}'")


# -- ratios and verdicts ------------------------------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``; None where either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0 or not all(map(math.isfinite, (a, b))):
        return None
    return float(a) / float(b)


def verdict(ours: float, ours_std: float | None, base: float, base_std: float | None, paper: float,
            paper_base: float) -> str:
    """Does our row order against its baseline as the paper's does?

    With Δ = ours - base (means over seed blocks) and σ = sqrt(std_ours² + std_base²) (the spread of one seed
    block's score, each std over the disjoint blocks; a conservative error bar for the difference of the means):

    - no error bars (either side has a single seed block): ``inconclusive``;
    - |Δ| ≤ σ: ``agrees`` if the paper reports a tie (paper Δ = 0), else ``inconclusive``;
    - |Δ| > σ: ``agrees`` if sign(Δ) = sign(paper Δ), else ``disagrees`` (a paper tie: ``disagrees``).

    The direction of "better" does not enter: the verdict compares orderings, so it holds for FID (lower is better)
    and any other metric alike.
    """
    if ours_std is None or base_std is None:
        return INCONCLUSIVE
    delta, paper_delta = ours - base, paper - paper_base
    if abs(delta) <= math.hypot(ours_std, base_std):
        return AGREES if paper_delta == 0 else INCONCLUSIVE
    return AGREES if paper_delta != 0 and (delta > 0) == (paper_delta > 0) else DISAGREES


def baselines(table: Any) -> dict[str, str]:
    """``{row id: baseline row id}`` from the table's ``comparison`` section (the baseline row itself excluded)."""
    spec = getattr(table, "comparison", None) or {}
    ids = [r.id for r in table.rows if r.quoted is None]
    if "baselines" in spec:
        return {str(k): str(v) for k, v in spec["baselines"].items()}
    if "baseline" in spec:
        return {i: str(spec["baseline"]) for i in ids if i != spec["baseline"]}
    return {}


# -- compute to reach ---------------------------------------------------------------------------------------------
def curve_points(result: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(training PFLOPs, quality) at each saved checkpoint of the cell's ``curve``, by PFLOPs."""
    m = quality_metric(result)
    pts = [(float(p["pflops"]), float(p["metrics"][m])) for p in result.get("curve") or []
           if p.get("pflops") is not None and m in (p.get("metrics") or {})]
    return sorted(pts)


def pflops_to_reach(points: Sequence[tuple[float, float]], target: float) -> tuple[float, bool] | None:
    """The training PFLOPs at which a lower-is-better quality curve first reaches ``target``: linear interpolation
    between the two checkpoints around the first crossing. Returns (PFLOPs, exact); ``exact`` is False when the
    first checkpoint already reaches it (the PFLOPs are then an upper bound). None: never reached."""
    for i, (p, q) in enumerate(points):
        if q <= target:
            if i == 0:
                return p, False
            p0, q0 = points[i - 1]
            return p0 + (q0 - target) * (p - p0) / (q0 - q), True
    return None


def compute_to_reach(multistage: Mapping[str, Any], unified: Mapping[str, Any]) -> tuple[float, bool] | str:
    """Fraction of the unified model's training PFLOPs the multistage model needs to reach the unified model's
    final quality (Table 2's "less training compute"; the paper: 4.66 / 7.94 = 0.59 for DPM-Solver). Both ends are
    read from the curves (same samples per checkpoint): the target is the unified curve's last point, the
    denominator its PFLOPs. Returns (fraction, exact) or the reason there is none (``not reached``, ``no curve``)."""
    uni, ms = curve_points(unified), curve_points(multistage)
    if not uni or not ms:
        return "no curve"
    total, target = uni[-1]
    hit = pflops_to_reach(ms, target)
    if hit is None:
        return "not reached"
    return hit[0] / total, hit[1]


# -- early stopping -----------------------------------------------------------------------------------------------
def early_stopping_note(result: Mapping[str, Any]) -> str:
    """Where each stage's early stopping fired: ``stage 0: step 120, stage 1: not triggered``; ``not triggered``
    when none did; ``not recorded`` when the cell carries no ``early_stopped`` record (written by
    :func:`msrepro.evaluation.extras.cell_extras`)."""
    rec = result.get("early_stopped")
    if not isinstance(rec, Mapping):
        return "not recorded"
    if all(v is None for v in rec.values()):
        return "not triggered"
    return ", ".join(f"stage {k}: " + ("not triggered" if v is None else f"step {int(v)}")
                     for k, v in sorted(rec.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0))


# -- the table extension --------------------------------------------------------------------------------------------
def _f(v: float | None, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if abs(v) >= 0.01 or v == 0 else f"{v:.2g}"


def _pair(ours: str, paper: str) -> str:
    return f"{ours} / {paper}"


def _quality_text(result: Mapping[str, Any], spec: str) -> str:
    mean, std = quality(result)
    return "-" if mean is None else format(mean, spec or ".2f") + (f" ± {std:{spec or '.2f'}}" if std is not None
                                                                   else "")


def _layout(table: Any, runs: Sequence[Any]) -> dict[tuple[str, str, str], int]:
    """Index of each (column, run, value|delta) in the assembled view (the order of ``assemble_table``)."""
    pos, i = {}, 1
    for col in table.columns:
        pos[(col.name, "", "paper")] = i
        i += 1
        for run in runs:
            pos[(col.name, run.name, "value")] = i
            i += 1
            if col.compare != "never":
                pos[(col.name, run.name, "delta")] = i
                i += 1
    return pos


def floor_of(results: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The real-data floor recorded with the results (the first that has one)."""
    return next((r["floor"] for r in results if r and r.get("floor")), None)


def extend_table(table: Any, runs: Sequence[Any], view: Any) -> None:
    """The results tables' hook: quality as mean ± std, a "Real <data> (test split)" row, per run the ratio of
    each ``comparison.ratios`` column to the row's baseline beside the paper's, the ordering verdict, Table 2's
    compute to reach, early-stopping notes; Δ columns with nothing comparable (all ``n/c``) are dropped."""
    spec = getattr(table, "comparison", None) or {}
    base_of = baselines(table)
    pos = _layout(table, runs)
    qcol = next((c for c in table.columns if c.source == "quality"), None)
    ratio_cols = [c for c in table.columns if c.name in (spec.get("ratios") or [])]
    first_base = next(iter(base_of.values()), None)
    res = view.results
    floors = {run.name: floor_of([res.get((run.name, r.id)) for r in table.rows]) for run in runs}
    floor_line: list[str] | None = None
    if qcol is not None and any(floors.values()):
        dataset = next(f.get("dataset") for f in floors.values() if f)
        floor_line = [FLOOR_LABEL.format(dataset=dataset)] + [""] * (len(view.headers) - 1)
        floor_line[pos[(qcol.name, "", "paper")]] = "-"
    for run in runs:  # quality as mean ± std, and the floor's value
        if qcol is None:
            continue
        for line, row in zip(view.rows, table.rows):
            r = res.get((run.name, row.id))
            if r is not None:
                line[pos[(qcol.name, run.name, "value")]] = _quality_text(r, qcol.fmt)
        f = floors[run.name]
        if floor_line is not None and f:
            m = next(iter(f["metrics"]))
            std = f["metrics_std"].get(m) if f.get("blocks", 1) > 1 else None
            floor_line[pos[(qcol.name, run.name, "value")]] = _f(f["metrics"][m], qcol.fmt or ".2f") + (
                f" ± {_f(std, qcol.fmt or '.2f')}" if std is not None else "")
    extra_headers: list[str] = []
    extra_cells: list[list[str]] = [[] for _ in table.rows]
    floor_extra: list[str] = []
    for run in runs:
        for col in ratio_cols:
            label = view.headers[pos[(col.name, run.name, "value")]].rsplit(" (", 1)[0]
            extra_headers.append(f"{label} ÷ baseline ({run.name} / paper)")
            for cells, row in zip(extra_cells, table.rows):
                b = base_of.get(row.id)
                if row.id in base_of.values() and b is None:
                    cells.append("baseline")
                    continue
                brow = table.row(b) if b else None
                paper = ratio(row.paper.get(col.name), brow.paper.get(col.name)) if brow else None
                r, rb = res.get((run.name, row.id)), res.get((run.name, b)) if b else None
                ours = ratio(quantity(r, col.source), quantity(rb, col.source)) if r and rb else None
                cells.append(_pair(_f(ours), _f(paper)) if brow else "-")
            if col is qcol:
                f, rb = floors[run.name], res.get((run.name, first_base)) if first_base else None
                fv = f["metrics"].get(quality_metric(rb)) if f and rb else None
                floor_extra.append(_pair(_f(ratio(fv, quantity(rb, "quality")) if rb else None), "-"))
            else:
                floor_extra.append("")
        if qcol is not None and base_of:
            extra_headers.append(f"ordering vs baseline ({run.name})")
            for cells, row in zip(extra_cells, table.rows):
                cells.append(_row_verdict(table, row, base_of, res, run.name, qcol.name))
            floor_extra.append("real data")
        if spec.get("compute_to_reach"):
            extra_headers.append(f"compute to reach baseline quality ({run.name} / paper)")
            for cells, row in zip(extra_cells, table.rows):
                b = base_of.get(row.id)
                if b is None:
                    cells.append("baseline" if row.id in base_of.values() else "-")
                    continue
                paper = ratio(row.paper.get("pflops"), table.row(b).paper.get("pflops"))
                r, rb = res.get((run.name, row.id)), res.get((run.name, b))
                got = compute_to_reach(r, rb) if r and rb else "missing"
                ours = got if isinstance(got, str) else (_f(got[0]) if got[1] else f"≤ {_f(got[0])}")
                cells.append(_pair(ours, _f(paper)))
            floor_extra.append("")
    for line, cells in zip(view.rows, extra_cells):
        line.extend(cells)
    view.headers.extend(extra_headers)
    if floor_line is not None:
        view.rows.append(floor_line + floor_extra)
    _drop_empty_deltas(view)
    view.notes.extend(_notes(table, runs, res, base_of, floors, ratio_cols, spec))


def _row_verdict(table: Any, row: Any, base_of: Mapping[str, str], res: Mapping, run: str, qname: str) -> str:
    b = base_of.get(row.id)
    if b is None:
        return "baseline" if row.id in base_of.values() else "-"
    r, rb = res.get((run, row.id)), res.get((run, b))
    if not r or not rb:
        return "missing"
    (m, s), (mb, sb) = quality(r), quality(rb)
    if m is None or mb is None:
        return "missing"
    v = verdict(m, s, mb, sb, float(row.paper[qname]), float(table.row(b).paper[qname]))
    return v + " (1 seed block)" if s is None or sb is None else v


def _drop_empty_deltas(view: Any) -> None:
    """Remove Δ columns in which nothing is comparable (only ``n/c`` or empty cells)."""
    keep = [i for i, h in enumerate(view.headers)
            if not (h.startswith("Δ ") and all(line[i] in ("n/c", "") for line in view.rows)
                    and any(line[i] == "n/c" for line in view.rows))]
    view.headers[:] = [view.headers[i] for i in keep]
    view.rows[:] = [[line[i] for i in keep] for line in view.rows]


def _notes(table: Any, runs: Sequence[Any], res: Mapping, base_of: Mapping[str, str], floors: Mapping,
           ratio_cols: Sequence[Any], spec: Mapping[str, Any]) -> list[str]:
    notes = []
    if ratio_cols and base_of:
        label = {r.id: r.label + (f" [{r.id}]" if [x.label for x in table.rows].count(r.label) > 1 else "")
                 for r in table.rows}
        pairs = ([f"every row ÷ {label[spec['baseline']]}"] if "baseline" in spec else
                 [f"{label[k]} ÷ {label[v]}" for k, v in base_of.items()])
        notes.append("÷ baseline: each row's value divided by its baseline row's in the same run, beside the "
                     f"paper's ratio ({'; '.join(pairs)}); scale-free, so comparable at every preset.")
    if base_of and any(c.source == "quality" for c in table.columns):
        notes.append("ordering vs baseline: agrees / disagrees with the paper's ordering of the row against its "
                     "baseline; inconclusive when |Δ mean| ≤ sqrt(std_row² + std_baseline²) over disjoint seed "
                     "blocks, or when there are no error bars (one seed block).")
    for run in runs:
        f = floors[run.name]
        if f:
            counts = sorted({int((r.get("num_samples") or 0)) for (n, _), r in res.items() if n == run.name and r})
            notes.append(f"{run.name}: {FLOOR_LABEL.format(dataset=f.get('dataset'))}: {f['protocol']} "
                         f"(cells: {', '.join(map(str, counts))} samples per block"
                         + ("; not the same count, so the floor is only indicative" if counts != [f['num_samples']]
                            else "") + ").")
    if spec.get("compute_to_reach"):
        n = sorted({p.get("num_samples") for (rn, _), r in res.items() if r for p in (r.get("curve") or [])})
        notes.append("compute to reach: fraction of the unified model's training PFLOPs at which the multistage "
                     "model's quality curve (saved checkpoints, " + (f"{'/'.join(map(str, n))} samples each, "
                     if n else "") + "one seed block; linear interpolation) first reaches the unified model's "
                     "final quality on its own curve; ≤: already at the first checkpoint. Paper: the rows' PFLOPs "
                     "ratio (multistage reaches the unified FID with that much compute). Curves: "
                     "plots/compute-to-quality-<backbone>.png.")
    for run in runs:
        for row in table.rows:
            r = res.get((run.name, row.id))
            if r and (((r.get("config") or {}).get("train") or {}).get("early_stopping")):
                notes.append(f"{run.name}: {row.label}: early stopping: {early_stopping_note(r)}.")
    return notes


# -- summary and plots --------------------------------------------------------------------------------------------
def agreement(tables: Sequence[Any], run: Any, assemble: Any) -> dict[str, int]:
    """Verdict counts over all rows of ``tables`` for ``run`` (``assemble(table, [run])`` gives the view)."""
    counts = {AGREES: 0, DISAGREES: 0, INCONCLUSIVE: 0}
    for t in tables:
        v = assemble(t, [run])
        header = f"ordering vs baseline ({run.name})"
        if header in v.headers:
            i = v.headers.index(header)
            for line in v.rows:
                if line[i].split(" ")[0] in counts:
                    counts[line[i].split(" ")[0]] += 1
    return counts


def agreement_text(counts: Mapping[str, int]) -> str:
    """``k of n orderings agree, m inconclusive, d disagree`` (n: rows with a verdict)."""
    n = sum(counts.values())
    return (f"{counts[AGREES]} of {n} orderings agree with the paper, {counts[INCONCLUSIVE]} inconclusive, "
            f"{counts[DISAGREES]} disagree")


def plot_compute_to_quality(curves: Mapping[str, Mapping[str, Any]], out_png: str | Path, title: str = "",
                            reach: tuple[float, float, str] | None = None) -> Path:
    """Figure 1d: quality against training PFLOPs, one line per model (``{label: cell result}``); ``reach``
    (PFLOPs, quality, text) marks where the second model reaches the first one's final quality."""
    import matplotlib  # heavy, only for plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    metric = "quality"
    for label, result in curves.items():
        pts = curve_points(result)
        metric = quality_metric(result)
        ax.plot([p for p, _ in pts], [q for _, q in pts], marker="o", label=label)
    floor = floor_of(list(curves.values()))
    if floor and metric in floor["metrics"]:
        ax.axhline(floor["metrics"][metric], color="grey", ls="--", lw=1,
                   label=f"real test split ({floor['num_samples']} images)")
    first = next(iter(curves.values()), None)
    if first is not None and curve_points(first):
        ax.axhline(curve_points(first)[-1][1], color="C0", ls=":", lw=1, label=f"{next(iter(curves))}: final")
    if reach is not None:
        ax.plot([reach[0]], [reach[1]], marker="*", ms=12, color="C3", ls="", label=reach[2])
    ax.set_xlim(left=0)
    ax.set_xlabel("training PFLOPs (iterations x GFLOPs x 1e-6)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)


def compute_plots(table: Any, run: Any, out_dir: str | Path) -> list[str]:
    """One compute-to-quality PNG per baseline pair of ``table`` with curves: ``compute-to-quality-<backbone>.png``."""
    made = []
    for row_id, base_id in baselines(table).items():
        r, rb = run.result(table.row(row_id)), run.result(table.row(base_id))
        if not r or not rb or not curve_points(r) or not curve_points(rb):
            continue
        backbone, (total, target) = table.row(row_id).backbone, curve_points(rb)[-1]
        hit, got = pflops_to_reach(curve_points(r), target), compute_to_reach(r, rb)
        mark = None if hit is None else (hit[0], target, f"reaches the final {table.row(base_id).label} at "
                                                         f"{'' if hit[1] else '≤ '}{got[0]:.2f} x its PFLOPs")
        png = Path(out_dir) / f"compute-to-quality-{backbone}.png"
        made.append(str(plot_compute_to_quality({table.row(base_id).label: rb, table.row(row_id).label: r}, png,
                                                title=f"{backbone}: {r['curve'][0]['num_samples']} samples per "
                                                      f"checkpoint", reach=mark)))
    return made
