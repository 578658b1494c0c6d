"""The output folder: writing weights, tokenizer, recipe, metrics, provenance and the card."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from .card import public_recipe_as_written, write_model_card
from .fileio import write_json_atomic
from .pooled import POOLED_MODEL_FILE, is_pooled, mark_pooled_for_export, pooled_model_source
from .recipe import Recipe, as_written

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .data import PreparedData
    from .sources import Resolved
    from .tasks.spec import Task

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("torch", "transformers", "datasets", "peft", "accelerate", "evaluate", "huggingface_hub")
EXAMPLES_IN_CARD = 5


def available_trackers(names: list[str]) -> list[str]:
    """Only the trackers that are installed; a missing one is a warning, not a failed run."""
    from accelerate.utils import is_tensorboard_available, is_trackio_available, is_wandb_available

    checks = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "trackio": is_trackio_available}
    usable = []
    for name in names:
        if name in checks and checks[name]():
            usable.append(name)
        else:
            logger.warning("tracker %r is not installed; skipping it", name)
    return usable


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES + ("hf-transfer-recipes",):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def model_license(model_dir: Path) -> str | None:
    """The `license:` of the base model's card, when it ships one."""
    readme = model_dir / "README.md"
    if not readme.is_file():
        return None
    match = re.match(r"^---\n(.*?)\n---", readme.read_text(encoding="utf-8", errors="replace"), re.DOTALL)
    if not match:
        return None
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def plot_confusion_matrix(matrix: list[list[int]], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.6 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size, size), dpi=100)
    data = np.asarray(matrix)
    axis.imshow(data, cmap="Blues")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=10)
    if len(names) <= 20:
        for (row, column), value in np.ndenumerate(data):
            color = "white" if value > data.max() / 2 else "black"
            axis.text(column, row, str(value), ha="center", va="center", color=color, fontsize=8)
    figure.tight_layout()
    # Fixed metadata keeps the PNG byte-identical for identical numbers (re-publishing is then a no-op).
    figure.savefig(path, format="png", metadata={"Software": None})
    plt.close(figure)


def save_output_folder(
    accelerator: Accelerator,
    out: Path,
    *,
    recipe: Recipe,
    task: Task,
    model: Any,
    preprocessor: Any,
    model_source: Resolved,
    data: PreparedData,
    pooling: str,
    metrics: dict[str, Any],
    details: dict[str, Any],
    eval_split: str,
    eval_predictions: tuple[np.ndarray, np.ndarray] | None,
) -> None:
    """Write the folder that evaluate, predict, publish and the Space start from. Only the main process writes."""
    state_dict = accelerator.get_state_dict(model)  # gathers sharded weights (FSDP/DeepSpeed) on every rank
    unwrapped = accelerator.unwrap_model(model)
    if not accelerator.is_main_process:
        return
    is_peft = _save_weights(out, unwrapped, state_dict, model_source.hub_id)
    preprocessor.save_pretrained(out)
    _scrub_local_paths(out, model_source.location)
    (out / "recipe.yaml").write_text(
        "# The resolved recipe of this run. Rerun: hf-transfer train recipe.yaml --output-dir NEW_FOLDER\n"
        + recipe.to_yaml(),
        encoding="utf-8",
    )
    write_json_atomic(out / "metrics.json", metrics)
    names = [data.labels.id2label[i] for i in range(len(data.labels.id2label))]
    examples = []
    if eval_predictions is not None:
        raw_scores, predictions = eval_predictions
        split = data.splits[eval_split]
        for index in range(min(EXAMPLES_IN_CARD, len(split))):
            examples.append(task.example(out, split, index, raw_scores[index], predictions[index], names))
    run = _run_record(recipe, task, unwrapped, model_source, data, pooling, metrics, details, eval_split)
    run.update(examples=examples, adapter=is_peft, recipe_as_written=_public_as_written(recipe, run))
    write_json_atomic(out / "run.json", run)
    if details.get("confusion_matrix"):
        title = f"{model_source.hub_id}\n{recipe.strategy.kind} · {eval_split} split"
        plot_confusion_matrix(details["confusion_matrix"], names, out / "confusion_matrix.png", title)
    write_model_card(out)
    logger.info("wrote %s", out)


def _save_weights(out: Path, unwrapped: Any, state_dict: dict[str, Any], hub_id: str) -> bool:
    """The model's weights and config (its own architecture file beside them when pooled); a LoRA run saves the
    merged model at the top and the adapter in `adapter/`. Returns whether it was a LoRA run."""
    is_peft = hasattr(unwrapped, "peft_config")
    if is_peft:
        unwrapped.peft_config["default"].base_model_name_or_path = hub_id
        # save_embedding_layers="auto" would look the base model up on the Hub; embeddings never train here.
        unwrapped.save_pretrained(out / "adapter", state_dict=state_dict, save_embedding_layers=False)
        merged = unwrapped.merge_and_unload()
        merged.config._name_or_path = hub_id
        _write_own_architecture(out, merged)  # a pooled LoRA run merges into the pooled architecture
        merged.save_pretrained(out)
        return True
    unwrapped.config._name_or_path = hub_id
    _write_own_architecture(out, unwrapped)
    unwrapped.save_pretrained(out, state_dict=state_dict)
    return False


def _write_own_architecture(out: Path, model: Any) -> None:
    """A pooled model points its config at its own architecture file, written beside the weights."""
    if is_pooled(model):
        mark_pooled_for_export(model)
        (out / POOLED_MODEL_FILE).write_text(pooled_model_source(model.config), encoding="utf-8")


def _run_record(
    recipe: Recipe,
    task: Task,
    model: Any,
    model_source: Resolved,
    data: PreparedData,
    pooling: str,
    metrics: dict[str, Any],
    details: dict[str, Any],
    eval_split: str,
) -> dict[str, Any]:
    """run.json: what ran, on what, from where, and how it scored (the card and the Space read it)."""
    id2label = {str(k): v for k, v in data.labels.id2label.items()}
    classes = task.problem_type != "regression"
    # Keyed by label id, or by name where classes are not labels (token classification: entity types).
    per_class = {id2label.get(str(k), str(k)): v for k, v in (details.get("per_class") or {}).items() if classes}
    return {
        "task": recipe.task,
        "pipeline_tag": task.pipeline_tag,
        "strategy": recipe.strategy.kind,
        "pooling": pooling,
        "normalize": bool(getattr(model.config, "hf_transfer_normalize", False)),
        "base_model": model_source.hub_id,
        "model_source": model_source.record,
        "dataset": {
            "id": data.source.hub_id,
            "source_kind": data.source.record.get("kind"),
            **{k: v for k, v in data.source.record.items() if k not in ("kind", "id")},
            "fingerprint": data.fingerprint,
            "splits": {name: len(split) for name, split in data.splits.items()},
            "skipped": data.labels.skipped,
            "unscored_splits": data.labels.unscored_splits,
            "samples_per_class": data.labels.sampled,
        },
        "recipe_sha256": recipe.sha256(),
        "versions": package_versions(),
        "id2label": id2label,
        "trainable_params": metrics["train"]["trainable_params"],
        "total_params": metrics["train"]["total_params"],
        "eval_split": eval_split,
        "per_class": per_class,
        "confusion_matrix": details.get("confusion_matrix"),
        "examples": [],
        "license": model_license(Path(model_source.location)),
        "trust_remote_code": is_pooled(model),
        "adapter": False,
        "produced_by": "hf_transfer",
    }


def _scrub_local_paths(out: Path, local_location: str) -> None:
    """Saved configs carry Hub IDs, never the mirror or cache path the weights were read from."""
    for path in out.glob("*.json"):
        text = path.read_text(encoding="utf-8")
        if local_location in text:
            data = json.loads(text)
            for key in ("_name_or_path", "name_or_path", "base_model_name_or_path"):
                if isinstance(data.get(key), str) and local_location in data[key]:
                    data.pop(key)
            write_json_atomic(path, data)


def _public_as_written(recipe: Recipe, run: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe as the user wrote it, with local paths made public as the published card shows them: run.json
    travels with the model, so it never holds a local path."""
    written = as_written(recipe)
    if written is None:
        return None
    name, text, overrides = public_recipe_as_written(written, run)
    return {"file": name, "text": text, "overrides": overrides}
