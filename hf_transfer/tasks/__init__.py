"""TASKS: one plug-in per task family, and the lookups everything else uses instead of branching on a task's name.

Adding a task is one module in this package (its data contract, preprocessor, model, scores, inference) plus one
entry here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import PreparedData
from ..errors import RecipeError
from ..recipe import Recipe
from .image_classification import IMAGE_CLASSIFICATION
from .spec import Encoded, FeatureExtractor, Task
from .text_classification import TEXT_TASKS
from .token_classification import TOKEN_CLASSIFICATION

TASKS: dict[str, Task] = {
    **TEXT_TASKS,
    IMAGE_CLASSIFICATION.name: IMAGE_CLASSIFICATION,
    TOKEN_CLASSIFICATION.name: TOKEN_CLASSIFICATION,
}

__all__ = ["TASKS", "Encoded", "FeatureExtractor", "Task", "task_for", "prepare_data", "build_model"]


def task_for(name: str) -> Task:
    """The plug-in of a task name, or an error listing the known ones."""
    if name not in TASKS:
        raise RecipeError(f"task {name!r} is unknown; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def prepare_data(recipe: Recipe) -> PreparedData:
    """The recipe's data read by its task into the contract: splits, labels, source and fingerprint."""
    return task_for(recipe.task).prepare_data(recipe)


def load_preprocessor(model_dir: str, recipe: Recipe) -> Any:
    """The model's tokenizer or image processor, as the task needs it."""
    return task_for(recipe.task).load_preprocessor(model_dir, recipe)


def build_model(recipe: Recipe, model_dir: str, id2label: dict[int, str], pooling: str) -> Any:
    """The task's model on the pretrained backbone, with a new head sized to the labels."""
    return task_for(recipe.task).build_model(recipe, model_dir, id2label, pooling)


def choose_pooling(recipe: Recipe, model_dir: str | Path) -> str:
    """How the task's head reads the backbone for this recipe and checkpoint (`pooler`, `mean` or `cls`)."""
    return task_for(recipe.task).choose_pooling(recipe, Path(model_dir))
