"""Dataset loading and the one data contract: `text` (+ `text_pair`) and `label` columns, labels mapped, splits."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Sequence

from .errors import DataError
from .recipe import Recipe
from .sources import BBC_NEWS, Resolved, load_function, resolve_dataset_source

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
FILE_KINDS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class LabelInfo:
    """Labels as the model config stores them, and what loading skipped."""

    id2label: dict[int, str]
    skipped: dict[str, int] = field(default_factory=dict)
    unscored_splits: list[str] = field(default_factory=list)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in self.id2label.items()}


@dataclass
class PreparedData:
    """The contract every later step relies on."""

    splits: DatasetDict
    labels: LabelInfo
    source: Resolved
    fingerprint: str


# ---------------------------------------------------------------- reading files


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line} is not UTF-8 text (byte {error.start}); re-save the file as UTF-8"
        ) from None


def _tsv_is_quoted(lines: list[str]) -> bool:
    """GLUE-style TSVs are unquoted and may hold stray `"`; a quoted TSV wraps fields in quotes on most rows."""
    wrapped = sum(
        1 for line in lines[1:] if any(len(f) >= 2 and f[0] == f[-1] == '"' for f in line.rstrip("\r\n").split("\t"))
    )
    return wrapped > max(1, (len(lines) - 1) // 2)


def read_table(path: Path) -> Dataset:
    """Read csv/tsv/json/jsonl/parquet into a Dataset; TSVs may be GLUE-style unquoted or quoted."""
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_KINDS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if kind in ("csv", "tsv"):
        text = _read_text(path)
        lines = text.splitlines(keepends=True)
        quoting = csv.QUOTE_MINIMAL
        if kind == "tsv" and not _tsv_is_quoted(lines):
            quoting = csv.QUOTE_NONE
        rows = list(csv.reader(lines, delimiter="\t" if kind == "tsv" else ",", quoting=quoting))
        if not rows:
            raise DataError(f"{path}: the file is empty")
        header, body = rows[0], [r for r in rows[1:] if r]
        for number, row in enumerate(body, start=2):
            if len(row) != len(header):
                raise DataError(
                    f"{path}: line {number} has {len(row)} fields, the header has {len(header)} ({header})"
                )
        return Dataset.from_dict({name: [row[i] for row in body] for i, name in enumerate(header)})
    import datasets

    loader = "json" if kind == "json" else "parquet"
    return datasets.load_dataset(loader, data_files=str(path), split="train")


def _split_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = SPLIT_ALIASES.get(path.stem.lower())
        if split and path.suffix.lower() in FILE_KINDS:
            if split in files:
                raise DataError(f"{folder}: two files for split {split!r}: {files[split].name} and {path.name}")
            files[split] = path
    return files


def _read_class_folders(folder: Path) -> tuple[Dataset, int]:
    """Class folders of .txt files (sorted folder names are the labels); returns the dataset and non-UTF-8 count."""
    texts, labels, non_utf8 = [], [], 0
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for file in sorted(class_dir.glob("*.txt")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                # One BBC article is Latin-1; keep it rather than drop a real example.
                text, non_utf8 = raw.decode("latin-1"), non_utf8 + 1
            texts.append(text.strip())
            labels.append(class_dir.name)
    if not texts:
        raise DataError(f"{folder}: no split files (train.csv, dev.tsv, ...) and no class folders of .txt files")
    return Dataset.from_dict({"text": texts, "label": labels}), non_utf8


def _load_raw(recipe: Recipe, source: Resolved) -> tuple[DatasetDict, dict[str, int]]:
    data = recipe.data
    notes: dict[str, int] = {}
    if data.files:
        return DatasetDict({split: read_table(Path(path).expanduser()) for split, path in data.files.items()}), notes
    kind = source.record["kind"]
    if kind == "function":
        loaded = load_function(source.location)()
        if isinstance(loaded, Dataset):
            loaded = DatasetDict({"train": loaded})
        if not isinstance(loaded, dict | DatasetDict):
            raise DataError(
                f"data.source {data.source!r} returned {type(loaded).__name__}, not a datasets.DatasetDict"
            )
        return DatasetDict(loaded), notes
    if kind == "hub":
        import datasets

        loaded = datasets.load_dataset(source.location, data.config, revision=data.revision)
        return DatasetDict({SPLIT_ALIASES.get(name, name): split for name, split in loaded.items()}), notes
    path = Path(source.location)
    if path.is_file():
        return DatasetDict({"train": read_table(path)}), notes
    files = _split_files(path)
    if files:
        return DatasetDict({split: read_table(file) for split, file in files.items()}), notes
    corpus, non_utf8 = _read_class_folders(path)
    notes["non_utf8_decoded_as_latin1"] = non_utf8
    return DatasetDict({"all": corpus}), notes


# ---------------------------------------------------------------- the contract


def _rename_columns(splits: DatasetDict, recipe: Recipe, source: Resolved) -> DatasetDict:
    data = recipe.data
    wanted = {data.text_column: "text", data.label_column: "label"}
    if data.text_pair_column:
        wanted[data.text_pair_column] = "text_pair"
    out = {}
    for name, split in splits.items():
        split = split.rename_columns({k: v for k, v in source.columns.items() if k in split.column_names})
        if name == "all" and source.record.get("id") == BBC_NEWS:
            out[name] = split
            continue
        for column, role in wanted.items():
            if column not in split.column_names:
                key = {"text": "text_column", "label": "label_column", "text_pair": "text_pair_column"}[role]
                raise DataError(
                    f"split {name!r} of {data.source!r} has no column {column!r} (data.{key}); "
                    f"its columns are {split.column_names}"
                )
        keep = list(wanted)
        split = split.remove_columns([c for c in split.column_names if c not in keep])
        out[name] = split.rename_columns({k: v for k, v in wanted.items() if k != v})
    return DatasetDict(out)


def _label_names(recipe: Recipe, train: Dataset) -> list[str]:
    if recipe.data.label_names:
        return list(recipe.data.label_names)
    feature = train.features["label"]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if isinstance(feature, Sequence) and isinstance(feature.feature, ClassLabel):
        return list(feature.feature.names)
    values = train["label"]
    if recipe.task == "multi-label-classification":
        values = [v for row in values if row is not None for v in row]
    present = sorted({v for v in values if v is not None and v != -1 and v != ""}, key=lambda v: (str(type(v)), v))
    return [str(v) for v in present]


def _missing(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip() in ("", "-1")
    return value is None or value == -1 or (isinstance(value, float) and math.isnan(value))


def _encode_label(value: Any, names: list[str], index: dict[str, int], int_labels: bool) -> int:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str) and value.strip() not in index and value.strip().isdigit() and int_labels:
        value = int(value.strip())  # ids read from a CSV/TSV file arrive as text
    if isinstance(value, int | np.integer) and (int_labels or str(value) not in index):
        if not 0 <= value < len(names):
            raise KeyError(value)
        return int(value)
    return index[str(value).strip()]


def _apply_contract(splits: DatasetDict, recipe: Recipe, labels: LabelInfo) -> DatasetDict:
    names = [labels.id2label[i] for i in range(len(labels.id2label))]
    index = {name: i for i, name in enumerate(names)}
    # Integer labels index label_names (SetFit/sst2: 0, 1 with names negative, positive).
    int_labels = bool(recipe.data.label_names) or not all(n.lstrip("-").isdigit() for n in names)
    out = {}
    for split_name, split in splits.items():
        rows = split.to_dict()
        texts, pairs, targets, empty = [], [], [], 0
        for row_number, text in enumerate(rows["text"]):
            value = rows["label"][row_number]
            where = f"split {split_name!r}, row {row_number}"
            if text is None or not str(text).strip():
                empty += 1
                continue
            if recipe.task == "text-regression":
                try:
                    target = float(value)
                except (TypeError, ValueError):
                    raise DataError(f"{where}: label {value!r} is not a number (data.label_column)") from None
                if not math.isfinite(target):
                    raise DataError(f"{where}: regression target is {value!r}; remove or fix the row")
            elif recipe.task == "multi-label-classification":
                values = value if isinstance(value, list | tuple) else str(value).split(",")
                target = [0.0] * len(names)
                multi_hot = len(values) == len(names) and all(v in (0, 1, 0.0, 1.0) for v in values)
                for position, item in enumerate(values):
                    if multi_hot:
                        target[position] = float(item)
                        continue
                    try:
                        target[_encode_label(item, names, index, int_labels)] = 1.0
                    except (KeyError, ValueError):
                        raise DataError(f"{where}: label {item!r} is not one of {names}") from None
            else:
                try:
                    target = _encode_label(value, names, index, int_labels)
                except (KeyError, ValueError, TypeError):
                    seen = "train" if split_name != "train" else "the label names"
                    raise DataError(
                        f"{where}: label {value!r} does not occur in {seen}; known labels: {names} "
                        f"(data.label_column / data.label_names)"
                    ) from None
            texts.append(str(text))
            targets.append(target)
            if "text_pair" in rows:
                pairs.append(str(rows["text_pair"][row_number] or ""))
        if empty:
            labels.skipped[f"{split_name}_empty_text"] = empty
            logger.warning("skipped %d rows with empty text in split %r", empty, split_name)
        if not texts:
            raise DataError(f"split {split_name!r} of {recipe.data.source!r} has no usable rows")
        columns: dict[str, list] = {"text": texts, "label": targets}
        if pairs:
            columns["text_pair"] = pairs
        out[split_name] = Dataset.from_dict(columns)
    return DatasetDict(out)


def _stratified_split(dataset: Dataset, fraction: float, seed: int, stratify: bool) -> tuple[Dataset, Dataset]:
    from sklearn.model_selection import train_test_split

    if len(dataset) < 2:
        raise DataError(f"only {len(dataset)} row(s): too few to hold out a validation split; add a validation file")
    indices = np.arange(len(dataset))
    labels = list(dataset["label"]) if stratify else None
    held_out = max(1, int(round(fraction * len(dataset))))
    if labels is not None:
        counts = Counter(labels)
        if min(counts.values()) < 2 or held_out < len(counts):
            labels = None  # too few rows per class to stratify: a plain seeded split
    fraction = held_out
    keep, held = train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)
    return dataset.select(sorted(keep)), dataset.select(sorted(held))


def _is_unlabelled(split: Dataset) -> bool:
    return all(_missing(v) for v in split["label"][:1000])


def prepare_data(recipe: Recipe) -> PreparedData:
    """Load the recipe's data and return splits that honour the contract, with labels and a fingerprint."""
    if recipe.data.files:  # explicit files: data.source is only the dataset's name in records and cards
        source = Resolved(
            str(Path(recipe.data.files["train"]).parent),
            recipe.data.source,
            {"kind": "local", "id": recipe.data.source},
        )
    else:
        source = resolve_dataset_source(recipe.data.source)
    if recipe.task == "image-classification":
        return _prepare_image_data(recipe, source)
    try:
        raw, notes = _load_raw(recipe, source)
    except FileNotFoundError as error:
        raise DataError(f"data file not found: {error.filename or error}") from None
    splits = _rename_columns(raw, recipe, source)
    labels = LabelInfo(id2label={}, skipped=dict(notes))
    seed = recipe.training.seed
    classification = recipe.task != "text-regression"

    if "all" in splits:  # a corpus of class folders: deduplicate before splitting, or duplicates leak into test
        corpus = splits.pop("all")
        seen: set[str] = set()
        unique = [i for i, text in enumerate(corpus["text"]) if not (text in seen or seen.add(text))]
        labels.skipped["duplicates"] = len(corpus) - len(unique)
        corpus = corpus.select(unique)
        rest, test = _stratified_split(corpus, 0.1, seed, stratify=True)
        train, validation = _stratified_split(rest, 1 / 9, seed, stratify=True)
        splits = DatasetDict({"train": train, "validation": validation, "test": test})

    _drop_unscored_splits(splits, recipe, labels, "is empty")

    if recipe.task == "text-regression":
        labels.id2label = {0: "score"}
    else:
        names = _label_names(recipe, splits["train"])
        if len(names) < 2 and recipe.task == "text-classification":
            raise DataError(f"train split has a single class ({names}); classification needs at least two")
        labels.id2label = dict(enumerate(names))
    splits = _apply_contract(splits, recipe, labels)

    if recipe.task == "text-classification":
        present = set(splits["train"]["label"])
        if len(present) < 2:
            raise DataError(f"train split has a single class ({labels.id2label[present.pop()]!r})")
    if "validation" not in splits:
        stratify = recipe.task == "text-classification"
        train, validation = _stratified_split(splits["train"], recipe.data.validation_fraction, seed, stratify)
        splits["train"], splits["validation"] = train, validation
        logger.info("no validation split: held out %d training rows (seeded, stratified)", len(validation))

    _limit_samples(splits, recipe)
    if not classification:
        labels.id2label = {0: "score"}
    digest = hashlib.sha256()
    for name in sorted(splits):
        # In-memory datasets get random fingerprints; hash the contract's content so the record is reproducible.
        digest.update(name.encode())
        digest.update(json.dumps(splits[name].to_dict(), sort_keys=True).encode())
    return PreparedData(DatasetDict(splits), labels, source, digest.hexdigest()[:16])


def _drop_unscored_splits(splits: DatasetDict, recipe: Recipe, labels: LabelInfo, empty: str) -> None:
    """A train split is required, no split may be empty, and splits without labels (GLUE's -1) are not scored."""
    if "train" not in splits:
        raise DataError(f"{recipe.data.source!r} has no 'train' split (found: {sorted(splits)})")
    for name in list(splits):
        if len(splits[name]) == 0:
            raise DataError(f"split {name!r} of {recipe.data.source!r} {empty}")
        if name != "train" and _is_unlabelled(splits[name]):
            logger.warning("split %r has no labels (GLUE-style -1); it is not scored", name)
            labels.unscored_splits.append(name)
            del splits[name]


def _limit_samples(splits: DatasetDict, recipe: Recipe) -> None:
    """`training.max_train_samples` / `max_eval_samples`: seeded subsets, for quick runs."""
    t = recipe.training
    if t.max_train_samples:
        splits["train"] = _head(splits["train"], t.max_train_samples, t.seed)
    if t.max_eval_samples:
        for name in [n for n in splits if n != "train"]:
            splits[name] = _head(splits[name], t.max_eval_samples, t.seed)


def _prepare_image_data(recipe: Recipe, source: Resolved) -> PreparedData:
    """The image contract: `image` (decoded lazily) + `label` ids; unreadable and excluded files skipped, counted."""
    from .images import encode_image_labels, image_fingerprint, load_image_splits

    try:
        splits, notes = load_image_splits(recipe, source)
    except FileNotFoundError as error:
        raise DataError(f"data file not found: {error.filename or error}") from None
    labels = LabelInfo(id2label={}, skipped=dict(notes))
    _drop_unscored_splits(splits, recipe, labels, "has no readable images")
    names = _label_names(recipe, splits["train"])
    if len(names) < 2:
        raise DataError(f"train split has a single class ({names}); classification needs at least two")
    labels.id2label = dict(enumerate(names))
    splits = encode_image_labels(splits, recipe, names)
    if len(set(splits["train"]["label"])) < 2:
        raise DataError("train split has a single class")
    seed = recipe.training.seed
    if "validation" not in splits:
        train, validation = _stratified_split(splits["train"], recipe.data.validation_fraction, seed, True)
        splits["train"], splits["validation"] = train, validation
        logger.info("no validation split: held out %d training images (seeded, stratified)", len(validation))
    _limit_samples(splits, recipe)
    digest = hashlib.sha256()
    for name in sorted(splits):
        digest.update(name.encode())
        image_fingerprint(splits[name], digest)
    return PreparedData(DatasetDict(splits), labels, source, digest.hexdigest()[:16])


def _head(dataset: Dataset, n: int, seed: int) -> Dataset:
    return dataset if len(dataset) <= n else dataset.shuffle(seed=seed).select(range(n))


def tokenize_splits(splits: DatasetDict, tokenizer: Any, max_length: int) -> DatasetDict:
    """Truncate to max_length without padding (the collator pads per batch); keep `length` for grouping."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        pair = batch.get("text_pair")
        encoded = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    drop = [c for c in splits["train"].column_names if c in ("text", "text_pair")]
    tokenizer_id = hashlib.sha256(f"{tokenizer.name_or_path}|{len(tokenizer)}|{max_length}".encode()).hexdigest()
    # An explicit fingerprint spares `datasets` from pickling the whole tokenizer to hash `encode` (seconds per map).
    return DatasetDict(
        {
            name: split.map(
                encode,
                batched=True,
                remove_columns=drop,
                desc="tokenizing",
                new_fingerprint=hashlib.sha256(f"{split._fingerprint}|{tokenizer_id}".encode()).hexdigest()[:32],
            )
            for name, split in splits.items()
        }
    )
