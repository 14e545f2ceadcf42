"""Evaluation through torch-fidelity: FID, FD-digits, KID, precision/recall; reference statistics; runs.

Public API: :func:`evaluate_checkpoint`, :func:`evaluate_run`, :func:`refstats`, :func:`plot_metric_vs_iterations`.
Importing this package registers the metrics (``METRICS``) and the prefetch target ``inception``; the public
functions are imported on first use, so that commands which evaluate nothing do not pay for importing
torch-fidelity and torchvision (seconds). The torch-fidelity feature extractor ``msrepro-digits`` is registered by
:mod:`msrepro.evaluation.digits_classifier`, which the evaluation modules import.
"""

from __future__ import annotations

import importlib
from typing import Any

from msrepro.evaluation import inception, metrics  # noqa: F401  (registrations)
from msrepro.evaluation.metrics import LABELS

_LAZY = {"evaluate_checkpoint": "msrepro.evaluation.scoring", "refstats": "msrepro.evaluation.reference",
         "evaluate_run": "msrepro.evaluation.runs", "plot_metric_vs_iterations": "msrepro.evaluation.runs"}

__all__ = ["LABELS", "evaluate_checkpoint", "evaluate_run", "plot_metric_vs_iterations", "refstats"]


def __getattr__(name: str) -> Any:
    """The public functions, imported from their modules on first access (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'msrepro.evaluation' has no attribute '{name}'")
