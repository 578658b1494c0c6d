"""Metrics through `evaluate`, offline: the project's own metric modules, loaded by local path (no Hub scripts)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import evaluate
import numpy as np

_HERE = Path(__file__).parent


@functools.cache
def load_metric(task: str) -> evaluate.EvaluationModule:
    """The evaluate module for a task, loaded from this package's files (works with no network)."""
    if task == "text-regression":
        return evaluate.load(str(_HERE / "regression.py"))
    config = "multilabel" if task == "multi-label-classification" else "default"
    return evaluate.load(str(_HERE / "classification.py"), config)


def compute_metrics(task: str, predictions: np.ndarray, references: np.ndarray, num_labels: int) -> dict[str, Any]:
    """All metrics for the task; numbers are flat, `per_class` and `confusion_matrix` are the detailed report."""
    metric = load_metric(task)
    if task == "text-regression":
        scores = metric.compute(predictions=predictions.tolist(), references=references.tolist())
    else:
        labels = list(range(num_labels))
        scores = metric.compute(predictions=predictions.tolist(), references=references.tolist(), labels=labels)
    # How many examples were scored: proves each one counted exactly once, whatever the number of processes.
    return {**scores, "examples": len(references)}


def flat_scores(scores: dict[str, Any]) -> dict[str, float]:
    """Only the numbers, for metrics.json and trackers."""
    return {k: v if isinstance(v, int) else float(v) for k, v in scores.items() if isinstance(v, int | float)}
