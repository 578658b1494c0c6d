"""What every task with one class per row shares: softmax scores, the top class as the prediction, label ids as the
references, and the `predict` line that shows the top three classes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def softmax_scores(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1)


def top_class(scores: np.ndarray, config: Any) -> np.ndarray:
    return scores.argmax(axis=-1)


def label_ids(labels: np.ndarray) -> np.ndarray:
    return labels.astype(int)


def top_classes_line(shown: str, result: dict[str, Any]) -> str:
    """`label<TAB>the top three classes with their scores<TAB>the input as shown`."""
    top = sorted(result["scores"].items(), key=lambda item: -item[1])[:3]
    return f"{result['label']}\t{', '.join(f'{label} {value:.3f}' for label, value in top)}\t{shown}"
