"""What a text model answers, from its logits, in numpy: the label (the labels over the threshold, or the value) with
its scores, and the `predict` line that shows one answer. The text tasks' torch `predict` and the torch-free ONNX path
(`onnx_text.py`) both answer through here, so they answer alike; it imports no torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -logits))  # 1 / (1 + e^-x) without overflowing for large |x|


def _one_label(logits: np.ndarray, id2label: dict[int, str], threshold: float) -> list[dict[str, Any]]:
    scores = softmax(logits)
    return [
        {"label": id2label[int(row.argmax())], "scores": {id2label[i]: float(v) for i, v in enumerate(row)}}
        for row in scores
    ]


def _labels_over_threshold(logits: np.ndarray, id2label: dict[int, str], threshold: float) -> list[dict[str, Any]]:
    scores = sigmoid(logits)
    return [
        {
            "label": [id2label[i] for i, v in enumerate(row) if v >= threshold],
            "scores": {id2label[i]: float(v) for i, v in enumerate(row)},
        }
        for row in scores
    ]


def _value(logits: np.ndarray, id2label: dict[int, str], threshold: float) -> list[dict[str, Any]]:
    return [{"label": "score", "score": float(row[0])} for row in logits]


TEXT_ANSWERS: dict[str, Callable[[np.ndarray, dict[int, str], float], list[dict[str, Any]]]] = {
    "text-classification": _one_label,
    "multi-label-classification": _labels_over_threshold,
    "text-regression": _value,
}
"""Per text task: (logits of a batch, id2label, the multi-label threshold) -> one answer per row."""


def text_answers(task: str, logits: np.ndarray, id2label: dict[int, str], threshold: float) -> list[dict[str, Any]]:
    """One entry per row: `{"label": ..., "scores": {label: probability}}`; regression: `{"label", "score"}`."""
    return TEXT_ANSWERS[task](np.asarray(logits, dtype=np.float32), id2label, threshold)


def top_classes_line(shown: str, result: dict[str, Any]) -> str:
    """`label<TAB>the top three classes with their scores<TAB>the input as shown`."""
    top = sorted(result["scores"].items(), key=lambda item: -item[1])[:3]
    return f"{result['label']}\t{', '.join(f'{label} {value:.3f}' for label, value in top)}\t{shown}"


def text_line(text: str, result: dict[str, Any]) -> str:
    """A text's `predict` line: `label<TAB>top-3 scores<TAB>text`; regression: `value<TAB>text`."""
    shown = text if len(text) <= 60 else text[:57] + "..."
    if "scores" not in result:
        return f"{result['score']:.4f}\t{shown}"
    return top_classes_line(shown, result)
