"""Dataset loading and the one data contract: `text` (+ `text_pair`) and `label` columns, labels mapped, splits."""

from __future__ import annotations

import csv
import hashlib
import io
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
from .sources import Resolved, resolve_dataset_source

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
    sampled: dict[str, Any] | None = None
    """`data.samples_per_class`: what was drawn (run.json's `dataset.samples_per_class`)."""
    selects_best: bool = True
    """Whether validation may choose the best epoch (`training.select_best`, resolved)."""

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

    @property
    def selects_best(self) -> bool:
        return self.labels.selects_best


# ---------------------------------------------------------------- reading files


def read_text(path: Path) -> str:
    """A file's text, or an error naming the file and the first line that is not UTF-8."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
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


def _csv_rows(path: Path, lines: list[str], kind: str) -> list[list[str]]:
    quoting = csv.QUOTE_MINIMAL
    if kind == "tsv" and not _tsv_is_quoted(lines):
        quoting = csv.QUOTE_NONE
    reader = csv.reader(lines, delimiter="\t" if kind == "tsv" else ",", quoting=quoting)
    # The limit guards a streaming reader's memory; the whole file is in memory already, so no field can be larger
    # than the text, and a long document (a book chapter) is a legitimate row. Set for this read only: it is global.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, sum(len(line) for line in lines) + 1))
    try:
        return list(reader)
    except csv.Error as error:
        raise DataError(f"{path}: line {reader.line_num} cannot be read as {kind.upper()} ({error})") from None
    finally:
        csv.field_size_limit(limit)


def _read_delimited(path: Path, kind: str) -> Dataset:
    # Lines end at \n, \r\n or \r only, as csv expects: splitlines() would also cut a field at U+2028 or NEL.
    rows = _csv_rows(path, io.StringIO(read_text(path), newline="").readlines(), kind)
    if not rows:
        raise DataError(f"{path}: the file is empty")
    header, body = rows[0], [r for r in rows[1:] if r]
    repeated = [name for name, count in Counter(header).items() if count > 1]
    if repeated:
        raise DataError(f"{path}: the header names column {repeated[0]!r} twice; rename one of them ({header})")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {number} has {len(row)} fields, the header has {len(header)} ({header})")
    return Dataset.from_dict({name: [row[i] for row in body] for i, name in enumerate(header)})


def _json_problem(path: Path) -> str | None:
    """Where a JSON Lines file (or one JSON document) is broken: "line N is not valid JSON (why)"; None: it parses."""
    text = read_text(path)
    lines = text.split("\n")  # not splitlines(): JSON strings may hold U+2028 and other line breaks as they are
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return "holds no JSON value"
    try:
        json.loads(lines[first])
    except json.JSONDecodeError:
        try:  # the first line alone is no JSON value: one document over many lines (a pretty-printed array)
            json.loads(text)
            return None
        except json.JSONDecodeError as error:
            return f"line {error.lineno} is not valid JSON ({error.msg}, column {error.colno})"
    for number, line in enumerate(lines, start=1):
        try:
            if line.strip():
                json.loads(line)
        except json.JSONDecodeError as error:
            return f"line {number} is not valid JSON ({error.msg}, column {error.colno})"
    return None


def read_table(path: Path) -> Dataset:
    """Read csv/tsv/json/jsonl/parquet into a Dataset; TSVs may be GLUE-style unquoted or quoted."""
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_KINDS)}")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if kind in ("csv", "tsv"):
        return _read_delimited(path, kind)
    import datasets
    import pyarrow
    from datasets.exceptions import DatasetGenerationError

    quiet = logging.getLogger("datasets.packaged_modules.json.json")  # logs the failure we report in one line
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    except (ValueError, DatasetGenerationError, pyarrow.ArrowException) as error:
        problem = _json_problem(path) if kind == "json" else None
        reason = problem or f"cannot be read as {kind} ({str(error.__cause__ or error).splitlines()[0][:300]})"
        raise DataError(f"{path}: {reason}") from None
    finally:
        quiet.setLevel(level)


def split_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = SPLIT_ALIASES.get(path.stem.lower())
        if split and path.suffix.lower() in FILE_KINDS:
            if split in files:
                raise DataError(f"{folder}: two files for split {split!r}: {files[split].name} and {path.name}")
            files[split] = path
    return files


# ---------------------------------------------------------------- the contract


def label_names(recipe: Recipe, train: Dataset) -> list[str]:
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


def encode_label(value: Any, names: list[str], index: dict[str, int], int_labels: bool) -> int:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str) and value.strip() not in index and value.strip().isdigit() and int_labels:
        value = int(value.strip())  # ids read from a CSV/TSV file arrive as text
    if isinstance(value, int | np.integer) and (int_labels or str(value) not in index):
        if not 0 <= value < len(names):
            raise KeyError(value)
        return int(value)
    return index[str(value).strip()]


def stratified_split(dataset: Dataset, fraction: float, seed: int, stratify: bool) -> tuple[Dataset, Dataset]:
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


def is_unlabelled(split: Dataset) -> bool:
    return all(_missing(v) for v in split["label"][:1000])


def drop_unscored_splits(splits: DatasetDict, recipe: Recipe, labels: LabelInfo, empty: str) -> None:
    """A train split is required, no split may be empty, and splits without labels (GLUE's -1) are not scored."""
    if "train" not in splits:
        raise DataError(f"{recipe.data.source!r} has no 'train' split (found: {sorted(splits)})")
    for name in list(splits):
        if len(splits[name]) == 0:
            raise DataError(f"split {name!r} of {recipe.data.source!r} {empty}")
        if name != "train" and is_unlabelled(splits[name]):
            logger.warning("split %r has no labels (GLUE-style -1); it is not scored", name)
            labels.unscored_splits.append(name)
            del splits[name]


def limit_samples(splits: DatasetDict, recipe: Recipe) -> None:
    """`training.max_train_samples` / `max_eval_samples`: seeded subsets, for quick runs."""
    t = recipe.training
    if t.max_train_samples:
        splits["train"] = _head(splits["train"], t.max_train_samples, t.seed)
    if t.max_eval_samples:
        for name in [n for n in splits if n != "train"]:
            splits[name] = _head(splits[name], t.max_eval_samples, t.seed)


def _head(dataset: Dataset, n: int, seed: int) -> Dataset:
    return dataset if len(dataset) <= n else dataset.shuffle(seed=seed).select(range(n))


def dataset_source(recipe: Recipe) -> Resolved:
    """Where the recipe's data comes from; with explicit `data.files`, data.source is only the dataset's name."""
    if recipe.data.files:
        train = Path(recipe.data.files["train"])
        return Resolved(str(train.parent), recipe.data.source, {"kind": "local", "id": recipe.data.source})
    return resolve_dataset_source(recipe.data.source)


def sample_per_class(
    labels: list[Any], per_class: int, seed: int, num_labels: int
) -> tuple[list[int], dict[int, int]]:
    """`data.samples_per_class`: the rows (indices, ascending) that keep `per_class` rows of each class, drawn with
    `seed`, and the classes that have fewer (id → rows kept, all of theirs). Single-label rows are drawn per class;
    multi-hot rows are taken in a seeded order while one of their classes still has fewer than `per_class`."""
    rng = np.random.default_rng(seed)
    if labels and isinstance(labels[0], list | tuple):
        taken, counts = [], np.zeros(num_labels, dtype=int)
        for row in rng.permutation(len(labels)).tolist():
            present = [i for i, v in enumerate(labels[row]) if v]
            if any(counts[i] < per_class for i in present):
                taken.append(row)
                counts[present] += 1
        short = {i: int(counts[i]) for i in range(num_labels) if counts[i] < per_class}
        return sorted(taken), short
    by_class: dict[int, list[int]] = {}
    for row, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(row)
    taken, short = [], {}
    for label in range(num_labels):
        rows = by_class.get(label, [])
        if len(rows) < per_class:
            short[label] = len(rows)
            taken += rows
        else:
            taken += rng.choice(rows, per_class, replace=False).tolist()
    return sorted(taken), short


def _draw_samples(splits: DatasetDict, recipe: Recipe, labels: LabelInfo) -> Dataset:
    """Keep `data.samples_per_class` train rows per class; returns the rows left undrawn. Shortfalls are logged and
    recorded, with a digest of the drawn rows (equal digests: the same rows)."""
    per_class, seed = recipe.data.samples_per_class, recipe.training.seed
    train = splits["train"]
    taken, short = sample_per_class(list(train["label"]), per_class, seed, len(labels.id2label))
    chosen = set(taken)
    splits["train"] = train.select(taken)
    rest = train.select([i for i in range(len(train)) if i not in chosen])
    for label, count in short.items():
        logger.warning(
            "data.samples_per_class = %d: class %r has %d training rows; all of them are kept",
            per_class,
            labels.id2label[label],
            count,
        )
    labels.sampled = {
        "per_class": per_class,
        "seed": seed,
        "rows": len(taken),
        "from_rows": len(train),
        "short": {labels.id2label[label]: count for label, count in short.items()},
        "rows_sha256": hashlib.sha256(json.dumps(taken).encode()).hexdigest(),
    }
    logger.info("data.samples_per_class = %d: %d of %d train rows (seed %d)", per_class, len(taken), len(train), seed)
    return rest


def finish_splits(
    splits: DatasetDict, recipe: Recipe, *, stratify: bool, labels: LabelInfo | None = None
) -> DatasetDict:
    """Draw `data.samples_per_class`, hold out a validation split when the data has none (seeded; stratified when
    asked), then apply the quick-run limits (`training.max_train_samples` / `max_eval_samples`).

    With samples_per_class and no validation split, every drawn row trains: validation is held out from the rows
    left undrawn (as many as `validation_fraction` of train would give), or, when none are left (the data is only the
    few rows), from the drawn rows; either way the last epoch is kept unless `training.select_best` says otherwise."""
    splits = DatasetDict(splits)
    seed, fraction = recipe.training.seed, recipe.data.validation_fraction
    had_validation = "validation" in splits
    if recipe.data.samples_per_class and labels is not None:
        available = len(splits["train"])
        rest = _draw_samples(splits, recipe, labels)
        if not had_validation and len(rest):
            wanted = max(1, int(round(fraction * available)))
            held = rest if wanted >= len(rest) else stratified_split(rest, wanted / len(rest), seed, stratify)[1]
            splits["validation"] = held
            logger.info("no validation split: %d rows held out from the rows not drawn (seeded)", len(held))
        labels.selects_best = had_validation
    if "validation" not in splits:
        splits["train"], splits["validation"] = stratified_split(splits["train"], fraction, seed, stratify)
        logger.info("no validation split: held out %d training rows (seeded)", len(splits["validation"]))
    if labels is not None and recipe.training.select_best is not None:
        labels.selects_best = recipe.training.select_best
    limit_samples(splits, recipe)
    return splits
