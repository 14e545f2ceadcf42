"""Evaluation through torch-fidelity: FID, FD-digits, KID, precision/recall; reference statistics; runs.

Public API: :func:`evaluate_checkpoint`, :func:`evaluate_run`, :func:`refstats`, :func:`plot_metric_vs_iterations`.
Importing this package registers the metrics (``METRICS``), the torch-fidelity feature extractor
``msrepro-digits`` and the prefetch target ``inception``.
"""

from msrepro.evaluation import digits_classifier, inception, metrics  # noqa: F401  (registrations)
from msrepro.evaluation.evaluate import evaluate_checkpoint
from msrepro.evaluation.metrics import LABELS
from msrepro.evaluation.reference import refstats
from msrepro.evaluation.runs import evaluate_run, plot_metric_vs_iterations

__all__ = ["LABELS", "evaluate_checkpoint", "evaluate_run", "plot_metric_vs_iterations", "refstats"]
