"""Using a finished output folder: load it as plain transformers, predict on texts or a file, re-evaluate on data."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from .data import DataError, prepare_data, read_table, tokenize_splits
from .errors import RecipeError
from .recipe import Recipe, load_recipe
from .run_folder import RunFolder
from .sources import resolve_dataset_source
from .tasks import is_image_task, probabilities
from .trust import allow_model_code

logger = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """An output folder loaded for inference."""

    folder: Path
    recipe: Recipe
    model: Any
    tokenizer: Any
    id2label: dict[int, str]


def load_run(folder: str | Path, trust_remote_code: bool = False) -> LoadedRun:
    """Load an output folder (never retrains): its recipe, model and tokenizer.

    The model's own code runs only when it is hf_transfer's own architecture, byte for byte, or with the user's
    `trust_remote_code` (`trust.py`); a folder that needs other code is refused rather than loaded wrongly.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{folder} is not a finished hf_transfer output folder (no config.json / recipe.yaml)")
    recipe = load_recipe(folder / "recipe.yaml")
    trusted = allow_model_code(RunFolder(folder), trust_remote_code)
    if is_image_task(recipe.task):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(
            folder, trust_remote_code=trusted, use_safetensors=True
        )
        tokenizer = AutoImageProcessor.from_pretrained(folder)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, trust_remote_code=trusted, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(folder)
    model.eval()
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return LoadedRun(folder, recipe, model, tokenizer, id2label)


@torch.inference_mode()
def predict_texts(run: LoadedRun, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
    """One entry per input: `{"label": ..., "scores": {label: probability}}`; regression: `{"label", "score"}`."""
    results = []
    task = run.recipe.task
    threshold = getattr(run.model.config, "hf_transfer_threshold", 0.5)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        encoded = run.tokenizer(
            chunk, truncation=True, max_length=run.recipe.data.max_length, padding=True, return_tensors="pt"
        )
        scores = probabilities(run.model(**encoded).logits, task).cpu().numpy()
        for row in scores:
            if task == "text-regression":
                results.append({"label": "score", "score": float(row)})
                continue
            named = {run.id2label[i]: float(v) for i, v in enumerate(row)}
            if task == "multi-label-classification":
                labels = [run.id2label[i] for i, v in enumerate(row) if v >= threshold]
                results.append({"label": labels, "scores": named})
            else:
                results.append({"label": run.id2label[int(np.argmax(row))], "scores": named})
    return results


@torch.inference_mode()
def predict_images(run: LoadedRun, paths: list[str], batch_size: int = 16) -> list[dict[str, Any]]:
    """One entry per image file: `{"label": ..., "scores": {label: probability}}`, preprocessed like the pipeline."""
    from .images import open_image

    results = []
    for start in range(0, len(paths), batch_size):
        images = [open_image(path) for path in paths[start : start + batch_size]]
        pixels = run.tokenizer(images=images, return_tensors="pt")["pixel_values"]
        scores = probabilities(run.model(pixel_values=pixels).logits, run.recipe.task).cpu().numpy()
        for row in scores:
            named = {run.id2label[i]: float(v) for i, v in enumerate(row)}
            results.append({"label": run.id2label[int(np.argmax(row))], "scores": named})
    return results


def predict_inputs(run: LoadedRun, inputs: list[str]) -> list[dict[str, Any]]:
    """Texts for a text model, image file paths for an image model."""
    return predict_images(run, inputs) if is_image_task(run.recipe.task) else predict_texts(run, inputs)


def read_texts(path: Path, text_column: str) -> list[str]:
    """Texts from a .txt file (one per line) or a table with the recipe's text column (or `text`)."""
    if path.suffix.lower() == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    table = read_table(path)
    for column in (text_column, "text", "sentence"):
        if column in table.column_names:
            return [str(t) for t in table[column]]
    raise DataError(f"{path}: no text column {text_column!r}; columns are {table.column_names}")


def _refuse_the_folders_own_loader(folder: Path) -> None:
    """Checked before anything loads: the folder's recipe may name a `module:function` loader, which is its code."""
    path = folder / "recipe.yaml"
    source = load_recipe(path).data.source if path.is_file() else None
    if source and resolve_dataset_source(source).record.get("kind") == "function":
        raise RecipeError(
            f"{path}: data.source {source!r} is Python code (module:function) named by the output folder itself, "
            f"so it is not imported. If you trust it, name it yourself: --data-source {source} (or score a "
            "labelled file with --file)."
        )


def evaluate_run(
    folder: str | Path,
    split: str = "test",
    file: str | None = None,
    data_source: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Re-score the saved model on a split of the recipe's data, or on a labelled file with the recipe's columns.

    `data_source` replaces the recipe's `data.source`. A `module:function` loader named only by the folder's own
    recipe is never imported: the folder could have been written by anyone, and importing runs its code.
    """
    from .metrics import flat_scores
    from .train import evaluate_loader

    if not data_source and not file:
        _refuse_the_folders_own_loader(Path(folder))
    run = load_run(folder, trust_remote_code)
    recipe = run.recipe
    if data_source:
        recipe = recipe.model_copy(deep=True)
        recipe.data.source = data_source
    if file:
        # The file's labels are mapped with the run's own label names, so ids match the saved head.
        recipe = recipe.model_copy(deep=True)
        recipe.data.files = {"train": str(file)}
        recipe.data.source = str(file)
        if recipe.task != "text-regression":
            recipe.data.label_names = [run.id2label[i] for i in sorted(run.id2label)]
        prepared = prepare_data(recipe)
        # A file is scored whole: put the held-out rows back.
        from datasets import concatenate_datasets

        dataset = concatenate_datasets([prepared.splits["train"], prepared.splits["validation"]])
    else:
        if recipe.task != "text-regression":
            recipe = recipe.model_copy(deep=True)
            recipe.data.label_names = [run.id2label[i] for i in sorted(run.id2label)]
        prepared = prepare_data(recipe)
        if split not in prepared.splits:
            raise DataError(f"split {split!r} not available; choose from {sorted(prepared.splits)}")
        dataset = prepared.splits[split]
    from datasets import DatasetDict

    if is_image_task(recipe.task):
        from .images import EvalTransform, collate_images

        tokenized, collator = dataset.with_transform(EvalTransform(run.tokenizer)), collate_images
    else:
        tokenized = tokenize_splits(DatasetDict({"train": dataset}), run.tokenizer, recipe.data.max_length)
        tokenized, collator = tokenized["train"].remove_columns("length"), DataCollatorWithPadding(run.tokenizer)
    accelerator = Accelerator()
    loader = accelerator.prepare(DataLoader(tokenized, batch_size=64, collate_fn=collator, shuffle=False))
    model = accelerator.prepare(run.model)
    scores, _, _ = evaluate_loader(accelerator, model, loader, recipe.task, len(run.id2label))
    return flat_scores(scores)
