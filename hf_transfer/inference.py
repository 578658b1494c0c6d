"""Using a finished output folder: load it as plain transformers, predict on inputs or a file, re-evaluate on data.

The output folder is the one hand-off: nothing here retrains, and what differs by task comes from the task plug-in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from datasets import DatasetDict, concatenate_datasets
from torch.utils.data import DataLoader
from transformers import AutoConfig

from .errors import DataError, RecipeError
from .evaluation import evaluate_loader
from .metrics import flat_scores
from .onnx_model import load_onnx_model
from .recipe import Recipe, load_recipe
from .run_folder import RunFolder
from .runtimes import choose_runtime
from .sources import check_saved_weights, resolve_dataset_source
from .tasks import Task, task_for
from .trust import allow_model_code

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
    runtime: str = "torch"
    """What runs the model: `torch`, or its ONNX export `onnx` / `onnx-int8` (`runtimes.py`)."""

    @property
    def input_noun(self) -> str:
        return self.task.input_noun

    def predict(self, inputs: list[str]) -> list[dict[str, Any]]:
        """One result per input (a text, or an image file path), as the task reads and scores it."""
        return self.task.predict(self, inputs)

    def read_inputs(self, path: Path) -> list[str]:
        """The inputs of a table (or .txt) file, as the task reads them."""
        return self.task.read_inputs(path, self.recipe)

    def format_result(self, value: str, result: Any) -> str:
        """The task's `predict` line for one input and its result."""
        return self.task.format_result(value, result)


def load_run(folder: str | Path, trust_remote_code: bool = False, runtime: str | None = None) -> LoadedRun:
    """Load an output folder (never retrains): its recipe, model and preprocessor.

    The model's own code runs only when it is hf_transfer's own architecture, byte for byte, or with the user's
    `trust_remote_code` (`trust.py`); a folder that needs other code is refused rather than loaded wrongly.
    `runtime` (None: the fastest ONNX export present whose parity passed, else torch) is chosen by `runtimes.py`;
    an ONNX model stands in for the torch one, so the task's predict and scores run unchanged.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{folder} is not a finished hf_transfer output folder (no config.json / recipe.yaml)")
    recipe = load_recipe(folder / "recipe.yaml")
    check_saved_weights(folder)
    trusted = allow_model_code(RunFolder(folder), trust_remote_code)
    task = task_for(recipe.task)
    chosen = choose_runtime(RunFolder(folder), runtime)
    if chosen == "torch":
        model, preprocessor = task.load_for_inference(folder, trusted)
    else:
        # The folder's own recipe never decides to run code: its preprocessor loads as load_for_inference's does.
        preprocessor = task.load_preprocessor(str(folder), recipe.model_copy(update={"trust_remote_code": False}))
        model = load_onnx_model(RunFolder(folder), chosen, AutoConfig.from_pretrained(folder))
    model.eval()
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return LoadedRun(folder, recipe, task, model, preprocessor, id2label, chosen)


def predict_inputs(run: LoadedRun, inputs: list[str]) -> list[dict[str, Any]]:
    """One result per input (a text, or an image file path), as the task reads and scores it."""
    return run.predict(inputs)


def predict_texts(run: LoadedRun, texts: list[str]) -> list[dict[str, Any]]:
    """`predict_inputs` under its older name: one `{"label": ..., "scores": {...}}` per text."""
    return predict_inputs(run, texts)


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
    runtime: str | None = None,
) -> dict[str, float]:
    """Re-score the saved model on a split of the recipe's data, or on a labelled file with the recipe's columns.

    `data_source` replaces the recipe's `data.source`. A `module:function` loader named only by the folder's own
    recipe is never imported: the folder could have been written by anyone, and importing runs its code.
    """
    if not data_source and not file:
        _refuse_the_folders_own_loader(Path(folder))
    run = load_run(folder, trust_remote_code, runtime)
    recipe = run.recipe.model_copy(deep=True)
    if data_source:
        recipe.data.source = data_source
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
