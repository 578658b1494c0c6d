"""Scoring a model on a loader: every example exactly once across processes, predictions as the task decides them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from .errors import TrainingError
from .metrics import IGNORED, compute_metrics, flat_scores
from .recipe import Recipe

if TYPE_CHECKING:
    from .tasks.spec import Task


@torch.inference_mode()
def evaluate_loader(accelerator: Accelerator, model: Any, loader: DataLoader, task: Task, num_labels: int):
    """Metrics over every example exactly once (gather_for_metrics drops the padding of the last batch)."""
    model.eval()
    all_scores, all_labels = [], []
    for batch in loader:
        labels = batch.pop("labels")
        scores = task.scores(model(**batch).logits)
        if scores.ndim == 3:  # one row of scores per token: batches (and processes) differ in length
            scores = accelerator.pad_across_processes(scores, dim=1)
            labels = accelerator.pad_across_processes(labels, dim=1, pad_index=IGNORED)
        scores, labels = accelerator.gather_for_metrics((scores, labels))
        all_scores.append(scores.float().cpu())
        all_labels.append(labels.cpu())
    scores, labels = _concatenated(all_scores, 0.0), _concatenated(all_labels, IGNORED)
    config = accelerator.unwrap_model(model).config
    predictions = task.decide(scores, config)
    names = _label_names(config, num_labels)
    return compute_metrics(task.name, predictions, task.references(labels), num_labels, names), scores, predictions


def _concatenated(chunks: list[torch.Tensor], pad: float) -> np.ndarray:
    """Batches joined along rows; per-token batches (their widths differ) are first padded to the widest one."""
    if chunks[0].ndim >= 2 and len({c.shape[1] for c in chunks}) > 1:
        width = max(c.shape[1] for c in chunks)
        chunks = [torch.nn.functional.pad(c, _pad_width(c, width), value=pad) for c in chunks]
    return torch.cat(chunks).numpy()


def _pad_width(chunk: torch.Tensor, width: int) -> list[int]:
    """F.pad's argument that pads dimension 1 of `chunk` to `width` (the last dimensions first, unpadded)."""
    return [0, 0] * (chunk.ndim - 2) + [0, width - chunk.shape[1]]


def _label_names(config: Any, num_labels: int) -> list[str] | None:
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label.get(i, id2label.get(str(i))) for i in range(num_labels)]
    return names if all(isinstance(n, str) for n in names) else None


def sequence_labels(labels: list[Any]) -> np.ndarray:
    """Labels as one array: per-token label lists (of different lengths) padded with IGNORED into a rectangle."""
    if labels and isinstance(labels[0], list | tuple) and len({len(row) for row in labels}) > 1:
        width = max(len(row) for row in labels)
        return np.asarray([list(row) + [IGNORED] * (width - len(row)) for row in labels])
    return np.asarray(labels)


def check_metric_for_best(
    recipe: Recipe, task: Task, labels: list[Any], num_labels: int, label_names: list[str] | None = None
) -> None:
    """A misspelt training.metric_for_best fails before anything trains or is cleared, not after the first epoch."""
    name = recipe.training.metric_for_best
    if name is None:
        return
    references = task.references(sequence_labels(labels))
    known = flat_scores(compute_metrics(task.name, references, references, num_labels, label_names))
    if name not in known:
        raise TrainingError(f"training.metric_for_best = {name!r} is not computed; choose from {sorted(known)}")
