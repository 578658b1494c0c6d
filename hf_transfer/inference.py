"""Using a finished output folder: load it as plain transformers, predict on texts or a file, re-evaluate on data."""

from __future__ import annotations

import json
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
from .recipe import Recipe, load_recipe
from .tasks import is_image_task, probabilities

logger = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """An output folder loaded for inference."""

    folder: Path
    recipe: Recipe
    model: Any
    tokenizer: Any
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
    """Load an output folder (never retrains): its recipe, model and tokenizer."""
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
    if is_image_task(recipe.task):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True)
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


def evaluate_run(folder: str | Path, split: str = "test", file: str | None = None) -> dict[str, float]:
    """Re-score the saved model on a split of the recipe's data, or on a labelled file with the recipe's columns."""
    from .metrics import flat_scores
    from .train import evaluate_loader

    run = load_run(folder)
    recipe = run.recipe
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
