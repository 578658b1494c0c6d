"""Metrics through `evaluate`, offline: the project's own metric modules, loaded by local path (no Hub scripts)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import evaluate

_HERE = Path(__file__).parent
IGNORED = -100
"""The label of positions that count in neither loss nor metrics (special tokens, later sub-words, padding)."""


@functools.cache
def load_metric(task: str) -> evaluate.EvaluationModule:
    """The evaluate module for a task, loaded from this package's files (works with no network)."""
    # Imported here: `evaluate` brings transformers' pipelines (and torchvision, when installed) with it, seconds of
    # start-up that `predict` never needs.
    import evaluate

    if task == "text-regression":
        return evaluate.load(str(_HERE / "regression.py"))
    if task == "token-classification":
        return evaluate.load(str(_HERE / "token_classification.py"))
    config = "multilabel" if task == "multi-label-classification" else "default"
    return evaluate.load(str(_HERE / "classification.py"), config)


def compute_metrics(
    task: str,
    predictions: np.ndarray,
    references: np.ndarray,
    num_labels: int,
    label_names: list[str] | None = None,
) -> dict[str, Any]:
    """All metrics for the task; numbers are flat, `per_class` and `confusion_matrix` are the detailed report.
    Token classification takes `[sentences, positions]` tag ids (-100: not scored) and the tag names, in id order."""
    metric = load_metric(task)
    if task == "token-classification":
        names = label_names or [str(i) for i in range(num_labels)]
        kept = [row != IGNORED for row in references]
        tags = [[names[i] for i in row[keep]] for row, keep in zip(references, kept, strict=True)]
        guesses = [[names[i] for i in row[keep]] for row, keep in zip(predictions, kept, strict=True)]
        types = sorted({name[2:] for name in names if name[:2] in ("B-", "I-")})
        return metric.compute(predictions=guesses, references=tags, types=types) | {"examples": len(references)}
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
