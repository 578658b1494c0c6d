"""Using a finished output folder: load it as plain transformers, predict on inputs or a file, re-evaluate on data.

The output folder is the one hand-off: nothing here retrains, and what differs by task comes from the task plug-in."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from datasets import DatasetDict, concatenate_datasets
from torch.utils.data import DataLoader

from .errors import DataError
from .evaluation import evaluate_loader
from .metrics import flat_scores
from .recipe import Recipe, load_recipe
from .tasks import Task, task_for

logger = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """An output folder loaded for inference."""

    folder: Path
    recipe: Recipe
    task: Task
    model: Any
    preprocessor: Any
    """The tokenizer, or the image processor."""
    id2label: dict[int, str]


def _trusts_own_architecture(folder: Path) -> bool:
    """Remote code is trusted only for a folder hf_transfer wrote with its own self-contained architecture."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    run_file = folder / "run.json"
    if "auto_map" not in config or not run_file.is_file():
        return False
    run = json.loads(run_file.read_text(encoding="utf-8"))
    return run.get("produced_by") == "hf_transfer" and run.get("trust_remote_code") is True


def load_run(folder: str | Path) -> LoadedRun:
    """Load an output folder (never retrains): its recipe, model and preprocessor."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{folder} is not a finished hf_transfer output folder (no config.json / recipe.yaml)")
    recipe = load_recipe(folder / "recipe.yaml")
    trusted = _trusts_own_architecture(folder)
    if not trusted and "auto_map" in json.loads((folder / "config.json").read_text(encoding="utf-8")):
        # transformers would quietly load its own class for this model_type instead, with a different head.
        raise ValueError(
            f"{folder} needs its own model code (auto_map in config.json), and its run.json does not show "
            "hf_transfer wrote it, so that code is not run. Load it yourself with trust_remote_code=True "
            "only if you trust where it came from."
        )
    task = task_for(recipe.task)
    model, preprocessor = task.load_for_inference(folder, trusted)
    model.eval()
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return LoadedRun(folder, recipe, task, model, preprocessor, id2label)


def predict_inputs(run: LoadedRun, inputs: list[str]) -> list[dict[str, Any]]:
    """One result per input (a text, or an image file path), as the task reads and scores it."""
    return run.task.predict(run, inputs)


def predict_texts(run: LoadedRun, texts: list[str]) -> list[dict[str, Any]]:
    """`predict_inputs` under its older name: one `{"label": ..., "scores": {...}}` per text."""
    return predict_inputs(run, texts)


def evaluate_run(folder: str | Path, split: str = "test", file: str | None = None) -> dict[str, float]:
    """Re-score the saved model on a split of the recipe's data, or on a labelled file with the recipe's columns."""
    run = load_run(folder)
    recipe = run.recipe.model_copy(deep=True)
    if run.task.problem_type != "regression":
        # Labels are mapped with the run's own label names, so ids match the saved head.
        recipe.data.label_names = [run.id2label[i] for i in sorted(run.id2label)]
    if file:
        recipe.data.files = {"train": str(file)}
        recipe.data.source = str(file)
        prepared = run.task.prepare_data(recipe)
        # A file is scored whole: put the held-out rows back.
        dataset = concatenate_datasets([prepared.splits["train"], prepared.splits["validation"]])
    else:
        prepared = run.task.prepare_data(recipe)
        if split not in prepared.splits:
            raise DataError(f"split {split!r} not available; choose from {sorted(prepared.splits)}")
        dataset = prepared.splits[split]
    encoded = run.task.encode(DatasetDict({"scored": dataset}), run.preprocessor, recipe)
    accelerator = Accelerator()
    loader = DataLoader(encoded.splits["scored"], batch_size=64, collate_fn=encoded.collator, shuffle=False)
    loader, model = accelerator.prepare(loader, run.model)
    scores, _, _ = evaluate_loader(accelerator, model, loader, run.task, len(run.id2label))
    return flat_scores(scores)
