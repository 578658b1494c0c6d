"""TASKS: what each task means for the model class, loss, pipeline tag and default metric — and building the model."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from .errors import RecipeError
from .pooled import (
    pooled_model_class,
)
from .recipe import Recipe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    problem_type: str
    pipeline_tag: str
    metric_for_best: str
    greater_is_better: bool
    model_index_type: str
    """Task type in the model card's model-index."""


TASKS: dict[str, TaskSpec] = {
    "text-classification": TaskSpec(
        "single_label_classification", "text-classification", "accuracy", True, "text-classification"
    ),
    "multi-label-classification": TaskSpec(
        "multi_label_classification", "text-classification", "f1_macro", True, "text-classification"
    ),
    "text-regression": TaskSpec("regression", "text-classification", "mse", False, "text-classification"),
    "image-classification": TaskSpec(
        "single_label_classification", "image-classification", "accuracy", True, "image-classification"
    ),
}
IMAGE_TASKS = frozenset({"image-classification"})


def is_image_task(task: str) -> bool:
    return task in IMAGE_TASKS


def sentence_transformers_pooling(model_dir: Path) -> str | None:
    """The pooling a sentence-transformers checkpoint was trained with (`1_Pooling/config.json`), if any."""
    config = model_dir / "1_Pooling" / "config.json"
    if not config.is_file():
        return None
    modes = json.loads(config.read_text(encoding="utf-8"))
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    return None


def sentence_transformers_normalizes(model_dir: Path) -> bool:
    """Whether a sentence-transformers checkpoint scales its embeddings to unit length (a `Normalize` module)."""
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return False
    entries = json.loads(modules.read_text(encoding="utf-8"))
    return any(str(entry.get("type", "")).endswith(".Normalize") for entry in entries if isinstance(entry, dict))


def choose_normalize(recipe: Recipe, model_dir: Path, pooling: str) -> bool:
    """Unit-length pooled features: as the recipe says, else as the checkpoint's own sentence embedding does for an
    L-BFGS head on the checkpoint's own pooling (then the features are exactly its embeddings, and C, chosen by
    cross-validation, absorbs their scale). Heads trained by gradient steps keep the raw pooled vector: at unit length
    their logits move ~6× slower at the same learning rate (MiniLM's mean-pooled norm is 5-7), which cost Banking77
    17 points of test accuracy at 2 epochs (0.798 → 0.628, lr 5e-3)."""
    if recipe.strategy.normalize is not None:
        if recipe.strategy.normalize and pooling not in ("mean", "cls"):
            raise RecipeError(
                f"strategy.normalize = true needs strategy.pooling 'mean' or 'cls' (the head reads {pooling!r})"
            )
        return recipe.strategy.normalize
    fitted = recipe.strategy.kind == "head" and recipe.strategy.head.type == "lbfgs"
    own_pooling = fitted and pooling == sentence_transformers_pooling(model_dir)
    return own_pooling and sentence_transformers_normalizes(model_dir)


def choose_pooling(recipe: Recipe, model_dir: Path) -> str:
    """`pooler` means the architecture's own head; `mean`/`cls` use the project's pooled classifier."""
    if is_image_task(recipe.task) and not recipe.strategy.pooling:
        return "pooler"  # an image model's own global pooling
    if recipe.strategy.pooling:
        return recipe.strategy.pooling
    if recipe.strategy.kind == "head":
        # A frozen CLS/pooler head on a mean-pooled sentence encoder is weak (0.61 vs 0.81 on SST-2, GUIDE.md).
        return sentence_transformers_pooling(model_dir) or "pooler"
    return "pooler"


def load_tokenizer(model_dir: str, recipe: Recipe) -> Any:
    """The model's preprocessor: its tokenizer, or for an image task its image processor (resize, normalise)."""
    if is_image_task(recipe.task):
        from .images import load_image_processor

        return load_image_processor(model_dir, recipe)
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=recipe.trust_remote_code)


def check_safetensors(model_dir: Path, recipe: Recipe) -> None:
    """Safetensors only, unless the recipe says `allow_pickle: true`: pickle files can run code when loaded."""
    if any(model_dir.glob("*.safetensors")) or recipe.allow_pickle:
        return
    pickles = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
    if pickles:
        raise RecipeError(
            f"model {recipe.model!r} has only pickle weights ({', '.join(pickles)}); pickle can execute code on "
            "load. Convert it to safetensors, or set `allow_pickle: true` in the recipe if you trust the source."
        )


def build_model(recipe: Recipe, model_dir: str, id2label: dict[int, str], pooling: str) -> PreTrainedModel:
    """The task model on the pretrained backbone, with a new head sized to the labels."""
    spec = TASKS[recipe.task]
    check_safetensors(Path(model_dir), recipe)
    num_labels = 1 if recipe.task == "text-regression" else len(id2label)
    config = AutoConfig.from_pretrained(
        model_dir,
        num_labels=num_labels,
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
        problem_type=spec.problem_type,
        trust_remote_code=recipe.trust_remote_code,
    )
    if is_image_task(recipe.task):
        return _build_image_model(recipe, model_dir, config, pooling)
    if recipe.data.max_length > getattr(config, "max_position_embeddings", 10**9):
        raise RecipeError(
            f"data.max_length = {recipe.data.max_length} exceeds the model's max_position_embeddings "
            f"({config.max_position_embeddings}); lower data.max_length"
        )
    kwargs: dict[str, Any] = {"config": config, "use_safetensors": not recipe.allow_pickle or None}
    if pooling == "pooler" and recipe.strategy.head.type != "linear":
        raise RecipeError(
            f"strategy.head.type = {recipe.strategy.head.type!r} needs the project's pooled head: set "
            "strategy.pooling to 'mean' or 'cls' (the architecture's own 'pooler' head is linear)"
        )
    normalize = choose_normalize(recipe, Path(model_dir), pooling)  # refuses `normalize: true` on the pooler head
    if pooling == "pooler":
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, trust_remote_code=recipe.trust_remote_code, ignore_mismatched_sizes=True, **kwargs
        )
    else:
        config.hf_transfer_pooling = pooling
        if normalize:
            config.hf_transfer_normalize = True
        if recipe.strategy.head.type == "mlp":
            config.hf_transfer_head_hidden = recipe.strategy.head.hidden or config.hidden_size
        model = pooled_model_class(config).from_pretrained(model_dir, **kwargs)
    if recipe.task == "multi-label-classification":
        model.config.hf_transfer_threshold = recipe.data.threshold
    return model


def _build_image_model(recipe: Recipe, model_dir: str, config: Any, pooling: str) -> PreTrainedModel:
    """Any image-classification checkpoint (transformers' own, or timm's through TimmWrapper) with a new head."""
    from transformers import AutoModelForImageClassification

    if recipe.strategy.head.type == "mlp" or pooling != "pooler" or recipe.strategy.normalize:
        raise RecipeError(
            "image models train their own classifier on their own pooling: strategy.head.type must be 'linear' or "
            "'lbfgs' and strategy.pooling and strategy.normalize unset (got head.type "
            f"{recipe.strategy.head.type!r}, pooling {pooling!r}, normalize {recipe.strategy.normalize!r})"
        )
    if getattr(config, "model_type", None) == "timm_wrapper":
        from .images import require_timm

        require_timm(recipe.model)
    return AutoModelForImageClassification.from_pretrained(
        model_dir,
        config=config,
        trust_remote_code=recipe.trust_remote_code,
        ignore_mismatched_sizes=True,  # the pretrained head (ImageNet's 1,000 classes) is replaced
        use_safetensors=not recipe.allow_pickle or None,
    )


def predict_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits for a batch, without the labels (the loss is the loop's business)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "length")}
    return model(**inputs).logits


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Scores as the pipeline would report them: softmax, sigmoid (multi-label) or the raw value (regression)."""
    if task == "multi-label-classification":
        return torch.sigmoid(logits)
    if task == "text-regression":
        return logits.squeeze(-1)
    return torch.softmax(logits, dim=-1)
