"""Scoring a model on a loader: every example exactly once across processes, predictions as the task decides them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from .errors import TrainingError
from .metrics import compute_metrics, flat_scores
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
        logits = model(**batch).logits
        scores, labels = accelerator.gather_for_metrics((task.scores(logits), labels))
        all_scores.append(scores.float().cpu())
        all_labels.append(labels.cpu())
    scores, labels = torch.cat(all_scores).numpy(), torch.cat(all_labels).numpy()
    predictions = task.decide(scores, accelerator.unwrap_model(model).config)
    return compute_metrics(task.name, predictions, task.references(labels), num_labels), scores, predictions


def check_metric_for_best(recipe: Recipe, task: Task, labels: list[Any], num_labels: int) -> None:
    """A misspelt training.metric_for_best fails before anything trains or is cleared, not after the first epoch."""
    name = recipe.training.metric_for_best
    if name is None:
        return
    references = task.references(np.asarray(labels))
    known = flat_scores(compute_metrics(task.name, references, references, num_labels))
    if name not in known:
        raise TrainingError(f"training.metric_for_best = {name!r} is not computed; choose from {sorted(known)}")
