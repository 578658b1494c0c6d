"""Image classification: the `image` + `label` contract (folders, tables or Hub datasets, read by `images.py`), the
image processor, any image-classification checkpoint (transformers' own or timm's), features from the frozen
backbone (`image_features.py`), and predictions on image files."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoConfig, AutoModelForImageClassification

from ..answers import top_classes_line
from ..card_parts import TaskCard, always, per_class_table, table
from ..data import LabelInfo, PreparedData, dataset_source, drop_unscored_splits, finish_splits, label_names
from ..errors import DataError, RecipeError
from ..image_features import (
    IMAGE_FEATURE_LAYER,
    extract_image_features,
    image_content_digest,
    image_feature_head,
    processor_digest,
)
from ..images import (
    collate_images,
    encode_image_labels,
    example_image_bytes,
    image_fingerprint,
    load_image_processor,
    load_image_splits,
    open_image,
    require_timm,
    transformed_splits,
)
from ..recipe import Recipe
from ..sources import check_safetensors
from .classes import label_ids, softmax_scores, top_class
from .spec import Encoded, FeatureExtractor, Task

logger = logging.getLogger(__name__)


def build_model(recipe: Recipe, model_dir: str, id2label: dict[int, str], pooling: str) -> Any:
    """Any image-classification checkpoint (transformers' own, or timm's through TimmWrapper) with a new head."""
    check_safetensors(Path(model_dir), recipe)
    config = AutoConfig.from_pretrained(
        model_dir,
        num_labels=len(id2label),
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
        problem_type="single_label_classification",
        trust_remote_code=recipe.trust_remote_code,
    )
    if recipe.strategy.head.type == "mlp" or pooling != "pooler" or recipe.strategy.normalize:
        raise RecipeError(
            "image models train their own classifier on their own pooling: strategy.head.type must be 'linear' or "
            "'lbfgs' and strategy.pooling and strategy.normalize unset (got head.type "
            f"{recipe.strategy.head.type!r}, pooling {pooling!r}, normalize {recipe.strategy.normalize!r})"
        )
    if getattr(config, "model_type", None) == "timm_wrapper":
        require_timm(recipe.model)
    return AutoModelForImageClassification.from_pretrained(
        model_dir,
        config=config,
        trust_remote_code=recipe.trust_remote_code,
        ignore_mismatched_sizes=True,  # the pretrained head (ImageNet's 1,000 classes) is replaced
        use_safetensors=not recipe.allow_pickle or None,
    )


def prepare_data(recipe: Recipe) -> PreparedData:
    """The image contract: `image` (decoded lazily) + `label` ids; unreadable and excluded files skipped, counted."""
    source = dataset_source(recipe)
    try:
        splits, notes = load_image_splits(recipe, source)
    except FileNotFoundError as error:
        raise DataError(f"data file not found: {error.filename or error}") from None
    labels = LabelInfo(id2label={}, skipped=dict(notes))
    drop_unscored_splits(splits, recipe, labels, "has no readable images")
    names = label_names(recipe, splits["train"])
    if len(names) < 2:
        raise DataError(f"train split has a single class ({names}); classification needs at least two")
    labels.id2label = dict(enumerate(names))
    splits = encode_image_labels(splits, recipe, names)
    if len(set(splits["train"]["label"])) < 2:
        raise DataError("train split has a single class")
    splits = finish_splits(splits, recipe, stratify=True, labels=labels)
    digest = hashlib.sha256()
    for name in sorted(splits):
        digest.update(name.encode())
        image_fingerprint(splits[name], digest)
    return PreparedData(splits, labels, source, digest.hexdigest()[:16])


@torch.inference_mode()
def predict_images(run: Any, paths: list[str], batch_size: int = 16) -> list[dict[str, Any]]:
    """One entry per image file: `{"label": ..., "scores": {label: probability}}`, preprocessed like the pipeline."""
    results = []
    for start in range(0, len(paths), batch_size):
        images = [open_image(path) for path in paths[start : start + batch_size]]
        pixels = run.preprocessor(images=images, return_tensors="pt")["pixel_values"]
        scores = softmax_scores(run.model(pixel_values=pixels).logits).cpu().numpy()
        for row in scores:
            named = {run.id2label[i]: float(v) for i, v in enumerate(row)}
            results.append({"label": run.id2label[int(np.argmax(row))], "scores": named})
    return results


def _example(
    out: Path, split: Any, index: int, scores: np.ndarray, prediction: Any, names: list[str]
) -> dict[str, Any]:
    """A real evaluation image, copied into `examples/` of the output folder (the card and the Space show it)."""
    content, suffix = example_image_bytes(split, index)
    relative = f"examples/{index}{suffix}"
    (out / "examples").mkdir(exist_ok=True)
    (out / relative).write_bytes(content)
    label = names[int(split.select_columns(["label"])[index]["label"])]
    return {
        "image": relative,
        "label": label,
        "prediction": names[int(prediction)],
        "score": round(float(scores[int(prediction)]), 6),
    }


# -- the model card's sections for this task


def _image_per_class(run: dict) -> str:
    return per_class_table(run, "Per-class metrics")


def _image_examples(examples: list[dict]) -> str:
    examples = [e for e in examples if "image" in e]  # a path inside the folder (RunFolder.examples checked it)
    if not examples:
        return ""
    rows = [[f"`{e['image']}`", *(e.get(k, "") for k in ("label", "prediction", "score"))] for e in examples]
    return "### Examples\n\n" + table(["image", "label", "prediction", "score"], rows)


def _image_usage(repo_id: str, examples: list[dict], remote_code: bool, adapter: bool) -> str:
    remote = ", trust_remote_code=True" if remote_code else ""
    if adapter:
        return (
            "from peft import PeftConfig, PeftModel\n"
            "from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline\n\n"
            f'config = AutoConfig.from_pretrained("{repo_id}")\n'
            f'base_id = PeftConfig.from_pretrained("{repo_id}").base_model_name_or_path\n'
            "base = AutoModelForImageClassification.from_pretrained(\n"
            "    base_id, num_labels=config.num_labels, id2label=config.id2label, label2id=config.label2id,\n"
            "    ignore_mismatched_sizes=True,\n"
            ")\n"
            f'model = PeftModel.from_pretrained(base, "{repo_id}").merge_and_unload()\n'
            f'classifier = pipeline("image-classification", model=model, '
            f'image_processor=AutoImageProcessor.from_pretrained("{repo_id}"))\n'
            'print(classifier("photo.jpg"))\n'
        )
    return (
        "from transformers import pipeline\n\n"
        f'classifier = pipeline("image-classification", model="{repo_id}"{remote})\n'
        'print(classifier("photo.jpg"))  # a path, a URL or a PIL image\n'
    )


IMAGE_CARD = TaskCard(
    usage=_image_usage,
    examples=_image_examples,
    per_class=_image_per_class,
    keys={
        "data.image_extensions": always,
        # A head on cached features saw the processor's pixels only: augmentation was off by construction.
        "data.augmentation.random_resized_crop": lambda f: not f.on_features,
        "data.augmentation.crop_scale": lambda f: f.crop and not f.on_features,
        "data.augmentation.horizontal_flip": lambda f: not f.on_features,
    },
)


def _choose_pooling(recipe: Recipe, model_dir: Path) -> str:
    """An image model's own global pooling, unless the recipe asks otherwise (refused by `build_model`)."""
    return recipe.strategy.pooling or "pooler"


def _encode(splits: DatasetDict, processor: Any, recipe: Recipe) -> Encoded:
    """Images decoded and transformed lazily, batch by batch; the train transform augments anew every epoch."""
    transformed, train_transform = transformed_splits(splits, processor, recipe)

    def set_epoch(epoch: int) -> None:
        train_transform.epoch = epoch  # each epoch draws new crops, the same ones on a rerun or resume

    return Encoded(transformed, collate_images, None, set_epoch)


def _augments(recipe: Recipe) -> bool:
    return recipe.data.augmentation.active


def _feature_key(recipe: Recipe, processor: Any, model: Any) -> dict[str, Any]:
    return {"layer": IMAGE_FEATURE_LAYER, "processor": processor_digest(processor)}


def _extract(accelerator: Any, model: Any, split: Dataset, processor: Any, batch_size: int, desc: str) -> torch.Tensor:
    return extract_image_features(accelerator, model, split, batch_size, desc)


def load_for_inference(folder: Path, trusted: bool) -> tuple[Any, Any]:
    """The saved image classifier and its image processor (transformers' own classes: no code of the folder's)."""
    # Imported here: transformers' image processing imports torchvision (and with it torch._dynamo), seconds of
    # start-up that text and token tasks never need.
    from transformers import AutoImageProcessor

    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=trusted, use_safetensors=True)
    return model, AutoImageProcessor.from_pretrained(folder)


def read_image_paths(path: Path, recipe: Recipe) -> list[str]:
    """Image paths from a .txt file (one per line) or a table's image column."""
    from ..data import read_table, read_text

    if path.suffix.lower() == ".txt":
        return [line.strip() for line in read_text(path).splitlines() if line.strip()]
    table = read_table(path)
    if recipe.data.image_column not in table.column_names:
        raise DataError(f"{path}: no image column {recipe.data.image_column!r}; columns are {table.column_names}")
    return [str(value) for value in table[recipe.data.image_column]]


def format_result(path: str, result: dict[str, Any]) -> str:
    """`label<TAB>top-3 scores<TAB>image path`."""
    shown = path if len(path) <= 60 else "..." + path[-57:]
    return top_classes_line(shown, result)


IMAGE_CLASSIFICATION = Task(
    name="image-classification",
    pipeline_tag="image-classification",
    problem_type="single_label_classification",
    metric_for_best="accuracy",
    greater_is_better=True,
    single_label=True,
    per_class_loss=True,
    compare_metric="accuracy",
    peft_task_type=None,
    prepare_data=prepare_data,
    load_preprocessor=load_image_processor,
    encode=_encode,
    augments=_augments,
    choose_pooling=_choose_pooling,
    build_model=build_model,
    scores=softmax_scores,
    decide=top_class,
    references=label_ids,
    example=_example,
    features=FeatureExtractor(
        extract=_extract, cache_key=_feature_key, content_digest=image_content_digest, head=image_feature_head
    ),
    load_for_inference=load_for_inference,
    predict=predict_images,
    read_inputs=read_image_paths,
    format_result=format_result,
    card=IMAGE_CARD,
    input_noun="image files",
    fixed_rows_hint=(
        "data.augmentation draws new training images every epoch: set data.augmentation.random_resized_crop and "
        "data.augmentation.horizontal_flip to false"
    ),
    warmup_refusal=(
        "strategy.warmup_head_epochs (LP-FT) is built for text models only; for images, train a `head` run "
        "first and fine-tune from its output folder (model: that folder)"
    ),
)
