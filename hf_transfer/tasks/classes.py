"""What every task with one class per row shares: softmax scores, the top class as the prediction, label ids as the
references (the `predict` line that shows the top three classes is `answers.top_classes_line`)."""

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
