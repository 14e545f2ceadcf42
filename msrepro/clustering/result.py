"""What every clusterer returns: :class:`ClusterResult`, saved as one JSON file (the PNG plots of its
diagnostics are drawn by :mod:`msrepro.clustering.plots`).

JSON layout (read back by ``stages.from_result`` in :mod:`msrepro.models`)::

    {"clusterer": "snr", "k": 3,
     "boundaries": [t1, t2],                  # cut points in the clusterer schedule's time
     "objective": "DP minimising ...",        # what produced them (objective, weighting, size limits)
     "log_snr": [lambda(t1), lambda(t2)],
     "schedule": {"name": "vp_linear", ...},
     "stage_boundaries": StageBoundaries.to_dict(),
     "params": {...},                          # the clusterer's resolved Config
     "diagnostics": {"curves": {...}, "matrix": {...}, ...},
     "provenance": {"dataset": {...} | null, "seed": 0, "code_version": {...}, "created": "..."},
     "files": {"json": ..., "curves": ..., "matrix": ...}}

``diagnostics["curves"]`` = ``{"x": [...], "xlabel", "ylabel", "series": {label: [...]}}`` and
``diagnostics["matrix"]`` = ``{"grid": [...], "values": [[...]], "label"}`` are what the plots draw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msrepro.boundaries import StageBoundaries
from msrepro.io import atomic_write_json
from msrepro.schedules import NoiseSchedule, build_schedule

RESULT_FILE = "result.json"
PLOTTED = ("curves", "matrix")


@dataclass
class ClusterResult:
    """Stage boundaries found by one clusterer, with the evidence (curves, matrices) and provenance."""

    clusterer: str
    k: int
    boundaries: list[float]
    schedule: NoiseSchedule
    params: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    objective: str = ""  # one line: what the cut points optimise (Clusterer.objective)

    def __post_init__(self) -> None:
        self.boundaries = [float(c) for c in self.boundaries]
        if len(self.boundaries) != self.k - 1:
            raise ValueError(f"{self.clusterer}: k={self.k} stages need {self.k - 1} cut points, got {self.boundaries}")
        self.stage_boundaries  # validates: strictly increasing, inside the schedule's time domain

    @property
    def stage_boundaries(self) -> StageBoundaries:
        return StageBoundaries(tuple(self.boundaries), self.schedule, source={"clusterer": self.clusterer})

    @property
    def log_snr(self) -> list[float]:
        return [float(self.schedule.log_snr(c)) for c in self.boundaries]

    def to_dict(self, *, full: bool = True) -> dict[str, Any]:
        """The JSON record; ``full=False`` leaves out the plotted arrays (curves, matrix)."""
        diag = self.diagnostics if full else {k: v for k, v in self.diagnostics.items() if k not in PLOTTED}
        return {"clusterer": self.clusterer, "k": self.k, "boundaries": list(self.boundaries),
                "objective": self.objective, "log_snr": self.log_snr, "schedule": self.schedule.to_config(),
                "stage_boundaries": self.stage_boundaries.to_dict(), "params": self.params,
                "diagnostics": diag, "provenance": self.provenance, "files": dict(self.files)}

    def save(self, out_dir: str | Path) -> Path:
        """Write ``result.json`` (atomically) into ``out_dir``, listing itself and the files already in
        ``self.files`` (the plots, :func:`msrepro.clustering.plots.save_result`)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.files = {**self.files, "json": str(out / RESULT_FILE)}
        return atomic_write_json(out / RESULT_FILE, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClusterResult":
        return cls(d["clusterer"], int(d["k"]), list(d["boundaries"]), build_schedule(dict(d["schedule"])),
                   dict(d.get("params") or {}), dict(d.get("diagnostics") or {}), dict(d.get("provenance") or {}),
                   dict(d.get("files") or {}), str(d.get("objective") or ""))

    @classmethod
    def load(cls, path: str | Path) -> "ClusterResult":
        p = Path(path)
        return cls.from_dict(json.loads((p / RESULT_FILE if p.is_dir() else p).read_text()))
