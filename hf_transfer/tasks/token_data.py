"""Token-classification data: reading words + BIO tags (JSON Lines / Hub datasets / CoNLL text files), checking the
tag scheme, and the contract `tokens` (a list of words) + `label` (one tag id per word); BIO entity spans."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from ..data import (
    FILE_KINDS,
    SPLIT_ALIASES,
    LabelInfo,
    PreparedData,
    dataset_source,
    drop_unscored_splits,
    finish_splits,
    read_table,
    read_text,
)
from ..errors import DataError
from ..recipe import Recipe
from ..sources import Resolved, load_function

logger = logging.getLogger(__name__)

CONLL_SUFFIXES = (".conll", ".iob", ".bio", ".txt")
"""Files read as CoNLL text: one `token ... tag` per line, a blank line between sentences."""
BIO_TAG = re.compile(r"^(O|[BI]-\S+)$")
REPORTED_ROWS = 3
"""How many rows with an `I-X` that continues no entity are named in the log, per split (all are counted)."""


# ---------------------------------------------------------------- reading


def read_conll(path: Path, tokens_column: str, tags_column: str) -> Dataset:
    """A CoNLL-style text file: the first field of a line is the token, the last its tag; `-DOCSTART-` skipped."""
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    labels: list[str] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(words)
                tags.append(labels)
            words, labels = [], []
            continue
        if len(fields) < 2:
            raise DataError(f"{path}: line {number} has one field ({line.strip()!r}); CoNLL lines are `token ... tag`")
        words.append(fields[0])
        labels.append(fields[-1])
    if words:
        sentences.append(words)
        tags.append(labels)
    if not sentences:
        raise DataError(f"{path}: no sentences (CoNLL text: one `token ... tag` per line, blank lines between)")
    return Dataset.from_dict({tokens_column: sentences, tags_column: tags})


def _read_file(path: Path, recipe: Recipe) -> Dataset:
    if path.suffix.lower() in CONLL_SUFFIXES:
        return read_conll(path, recipe.data.tokens_column, recipe.data.tags_column)
    return read_table(path)


def _split_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = SPLIT_ALIASES.get(path.stem.lower())
        if split and path.suffix.lower() in (*FILE_KINDS, *CONLL_SUFFIXES):
            if split in files:
                raise DataError(f"{folder}: two files for split {split!r}: {files[split].name} and {path.name}")
            files[split] = path
    if not files:
        raise DataError(
            f"{folder}: no split files (train.jsonl, validation.conll, ...) for task 'token-classification'"
        )
    return files


def _load_raw(recipe: Recipe, source: Resolved) -> DatasetDict:
    data = recipe.data
    if data.files:
        return DatasetDict({split: _read_file(Path(path).expanduser(), recipe) for split, path in data.files.items()})
    kind = source.record["kind"]
    if kind == "function":
        loaded = load_function(source.location)()
        return DatasetDict({"train": loaded} if isinstance(loaded, Dataset) else loaded)
    if kind == "hub":
        import datasets

        loaded = datasets.load_dataset(source.location, data.config, revision=data.revision)
        return DatasetDict({SPLIT_ALIASES.get(name, name): split for name, split in loaded.items()})
    path = Path(source.location)
    if path.is_file():
        return DatasetDict({"train": _read_file(path, recipe)})
    return DatasetDict({split: _read_file(file, recipe) for split, file in _split_files(path).items()})


# ---------------------------------------------------------------- columns and tags


def _columns(splits: DatasetDict, recipe: Recipe, source: Resolved) -> DatasetDict:
    """Each split reduced to the words and tags columns (renamed `tokens`, `tags`), or an error naming the key."""
    data = recipe.data
    out = {}
    for name, split in splits.items():
        split = split.rename_columns({k: v for k, v in source.columns.items() if k in split.column_names})
        for column, key in ((data.tokens_column, "tokens_column"), (data.tags_column, "tags_column")):
            if column not in split.column_names:
                hint = ""
                if {data.text_column, data.label_column} <= set(split.column_names):
                    hint = f" (it holds {data.text_column!r} and {data.label_column!r}: text-classification data?)"
                raise DataError(
                    f"split {name!r} of {data.source!r} has no column {column!r} (data.{key}); "
                    f"its columns are {split.column_names}{hint}"
                )
        split = split.select_columns([data.tokens_column, data.tags_column])
        out[name] = split.rename_columns({data.tokens_column: "tokens", data.tags_column: "tags"})
    return DatasetDict(out)


def _feature_names(split: Dataset) -> list[str] | None:
    """The tag names of a `Sequence(ClassLabel)` tags column (the Hub's NER datasets), else None."""
    feature = split.features["tags"]
    inner = getattr(feature, "feature", None)
    if isinstance(feature, Sequence) and isinstance(inner, ClassLabel):
        return list(inner.names)
    if isinstance(feature, list) and feature and isinstance(feature[0], ClassLabel):
        return list(feature[0].names)
    return None


def _row_tags(split_name: str, row: int, words: Any, tags: Any, recipe: Recipe, names: list[str] | None) -> list[str]:
    """One row's tags as strings, after checking the row's shape; errors name the split, the row and the key."""
    where = f"split {split_name!r}, row {row}"
    data = recipe.data
    if not isinstance(words, list | tuple):
        raise DataError(
            f"{where}: data.tokens_column {data.tokens_column!r} holds {_shown(words)}, not a list of words "
            "(for one text per row use task 'text-classification')"
        )
    if not isinstance(tags, list | tuple):
        raise DataError(
            f"{where}: data.tags_column {data.tags_column!r} holds {_shown(tags)}, not a list of one tag per word"
        )
    if not words:
        raise DataError(f"{where}: the list of words is empty (data.tokens_column {data.tokens_column!r})")
    if len(words) != len(tags):
        raise DataError(
            f"{where}: {len(words)} words but {len(tags)} tags (data.tokens_column {data.tokens_column!r}, "
            f"data.tags_column {data.tags_column!r}); every word needs one tag"
        )
    if not all(isinstance(w, str) for w in words):
        raise DataError(f"{where}: data.tokens_column {data.tokens_column!r} holds a non-text word {words!r:.80}")
    out = []
    for position, tag in enumerate(tags):
        if isinstance(tag, int) and not isinstance(tag, bool):
            if names is None:
                raise DataError(
                    f"{where}: tag {tag} is a number, and the tags column has no ClassLabel names; "
                    "give them in id order as data.label_names"
                )
            if not 0 <= tag < len(names):
                raise DataError(f"{where}: tag id {tag} is outside the {len(names)} tag names")
            tag = names[tag]
        if not isinstance(tag, str) or not BIO_TAG.match(tag):
            raise DataError(
                f"{where}, word {position}: tag {tag!r} is not BIO/IOB2 (`O`, `B-TYPE`, `I-TYPE`; "
                f"data.tags_column {data.tags_column!r}); convert other schemes (IOBES, bare types) to BIO first"
            )
        out.append(tag)
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + " ..."


def orphan_positions(tags: list[str]) -> list[int]:
    """Positions of `I-X` tags that continue no `X` entity (after `O`, another type, or at the start)."""
    return [
        i
        for i, tag in enumerate(tags)
        if tag.startswith("I-") and (i == 0 or tags[i - 1] == "O" or tags[i - 1][2:] != tag[2:])
    ]


def _checked_splits(splits: DatasetDict, recipe: Recipe, labels: LabelInfo) -> dict[str, tuple[list, list]]:
    """Every split's words and string tags, shapes and scheme checked; orphan `I-X` tags counted (or repaired)."""
    given = list(recipe.data.label_names) if recipe.data.label_names else None
    out = {}
    for name, split in splits.items():
        names = _feature_names(split) or given
        rows = split.to_dict()
        words_out, tags_out, orphans, reported = [], [], 0, []
        for row, (words, tags) in enumerate(zip(rows["tokens"], rows["tags"], strict=True)):
            tags = _row_tags(name, row, words, tags, recipe, names)
            found = orphan_positions(tags)
            if found:
                orphans += len(found)
                if len(reported) < REPORTED_ROWS:
                    reported.append(f"row {row} word {found[0]} ({tags[found[0]]})")
                if recipe.data.repair_tags:
                    for i in found:
                        tags[i] = "B-" + tags[i][2:]
            words_out.append(list(words))
            tags_out.append(tags)
        if orphans:
            what = "repaired as B-X (data.repair_tags)" if recipe.data.repair_tags else "kept as written"
            labels.skipped[f"{name}_i_tags_without_entity"] = orphans
            logger.warning(
                "split %r: %d I-X tags continue no entity (at %s): %s; IOB1 data? set data.repair_tags: true",
                name,
                orphans,
                ", ".join(reported) + (", ..." if orphans > len(reported) else ""),
                what,
            )
        out[name] = (words_out, tags_out)
    return out


def tag_names(train_tags: list[list[str]], given: list[str] | None) -> list[str]:
    """The tag set in id order: the given names, else `O` then `B-X, I-X` for every type in train (sorted)."""
    if given:
        return list(given)
    types = sorted({tag[2:] for row in train_tags for tag in row if tag != "O"})
    if not types:
        raise DataError("the train split tags no entity at all (every tag is O); nothing to learn")
    return ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


def _encoded(checked: dict[str, tuple[list, list]], names: list[str]) -> DatasetDict:
    index = {name: i for i, name in enumerate(names)}
    out = {}
    for split, (words, tags) in checked.items():
        ids = []
        for row, row_tags in enumerate(tags):
            unknown = next((t for t in row_tags if t not in index), None)
            if unknown is not None:
                seen = "train" if split != "train" else "the tag names (data.label_names)"
                raise DataError(
                    f"split {split!r}, row {row}: tag {unknown!r} never occurs in {seen}; known tags: {names}"
                )
            ids.append([index[t] for t in row_tags])
        # The tag names travel with the splits (encoding aligns B-X pieces as I-X and counts cut entities by them).
        features = Features({"tokens": Sequence(Value("string")), "label": Sequence(ClassLabel(names=names))})
        out[split] = Dataset.from_dict({"tokens": words, "label": ids}, features=features)
    return DatasetDict(out)


def split_tag_names(split: Dataset) -> list[str]:
    """The tag names in id order, as `prepare_data` stored them on the `label` feature."""
    return list(split.features["label"].feature.names)


def prepare_data(recipe: Recipe) -> PreparedData:
    """Read the recipe's words and tags into the contract: `tokens` + `label` (tag ids), the tag set from train."""
    source = dataset_source(recipe)
    try:
        raw = _load_raw(recipe, source)
    except FileNotFoundError as error:
        raise DataError(f"data file not found: {error.filename or error}") from None
    splits = _columns(raw, recipe, source)
    labels = LabelInfo(id2label={})
    if "train" not in splits:
        raise DataError(f"{recipe.data.source!r} has no 'train' split (found: {sorted(splits)})")
    for name in list(splits):
        if len(splits[name]) == 0:
            raise DataError(f"split {name!r} of {recipe.data.source!r} is empty")
    checked = _checked_splits(splits, recipe, labels)
    given = recipe.data.label_names or _feature_names(splits["train"])
    names = tag_names(checked["train"][1], given)
    bad = [n for n in names if not BIO_TAG.match(n)]
    if bad:
        raise DataError(f"tag name {bad[0]!r} is not BIO/IOB2 (`O`, `B-TYPE`, `I-TYPE`; data.label_names)")
    labels.id2label = dict(enumerate(names))
    encoded = _encoded(checked, names)
    drop_unscored_splits(encoded, recipe, labels, "is empty")
    encoded = finish_splits(encoded, recipe, stratify=False)
    digest = hashlib.sha256()
    for name in sorted(encoded):
        digest.update(name.encode())
        digest.update(json.dumps(encoded[name].to_dict(), sort_keys=True).encode())
    return PreparedData(encoded, labels, source, digest.hexdigest()[:16])


# ---------------------------------------------------------------- entities


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of every entity in a BIO sequence; an orphan `I-X` starts one."""
    spans: list[tuple[str, int, int]] = []
    for i, tag in enumerate(tags):
        if tag == "O":
            continue
        kind = tag[2:]
        if tag.startswith("I-") and spans and spans[-1][0] == kind and spans[-1][2] == i:
            spans[-1] = (kind, spans[-1][1], i + 1)
        else:
            spans.append((kind, i, i + 1))
    return spans


def word_entities(words: list[str], tags: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """The words joined by spaces, and their entities with character offsets in that text."""
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    text = " ".join(words)
    entities = []
    for kind, first, end in entity_spans(tags):
        start, stop = starts[first], starts[end - 1] + len(words[end - 1])
        entities.append({"type": kind, "text": text[start:stop], "start": start, "end": stop})
    return text, entities
