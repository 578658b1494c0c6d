"""Text classification, multi-label classification and regression: the `text` (+ `text_pair`) contract, the
tokenizer, the sequence-classification model (the architecture's own head or the project's pooled one), scores,
and predictions on texts."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from ..answers import text_answers, text_line
from ..card_parts import TaskCard, always, by_gradient, per_class_table, short, table
from ..data import (
    SPLIT_ALIASES,
    LabelInfo,
    PreparedData,
    dataset_source,
    drop_unscored_splits,
    encode_label,
    finish_splits,
    label_names,
    read_table,
    read_text,
    split_files,
    stratified_split,
)
from ..errors import DataError, RecipeError
from ..features import extract_features, pooled_feature_head, pooled_warmup_head, text_digest, tokenizer_digest
from ..pooled import pooled_model_class
from ..recipe import Recipe
from ..sources import BBC_NEWS, Resolved, check_safetensors, load_function
from .classes import label_ids, softmax_scores, top_class
from .spec import Encoded, FeatureExtractor, Task

logger = logging.getLogger(__name__)


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
    files = split_files(path)
    if files:
        return DatasetDict({split: read_table(file) for split, file in files.items()}), notes
    corpus, non_utf8 = _read_class_folders(path)
    notes["non_utf8_decoded_as_latin1"] = non_utf8
    return DatasetDict({"all": corpus}), notes


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
                    f"its columns are {split.column_names}{_words_and_tags_hint(split)}"
                )
        keep = list(wanted)
        split = split.remove_columns([c for c in split.column_names if c not in keep])
        out[name] = split.rename_columns({k: v for k, v in wanted.items() if k != v})
    return DatasetDict(out)


def _words_and_tags_hint(split: Dataset) -> str:
    """A hint when a split holds lists of words and tags (NER data) rather than one text per row."""
    listed = [name for name, feature in split.features.items() if type(feature).__name__ in ("Sequence", "List")]
    return " (it holds lists of words and tags: token-classification data?)" if len(listed) >= 2 else ""


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
            if isinstance(text, list | tuple):
                raise DataError(
                    f"{where}: data.text_column {recipe.data.text_column!r} holds a list, not one text "
                    "(lists of words and tags are task 'token-classification')"
                )
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
                        target[encode_label(item, names, index, int_labels)] = 1.0
                    except (KeyError, ValueError):
                        raise DataError(f"{where}: label {item!r} is not one of {names}") from None
            else:
                try:
                    target = encode_label(value, names, index, int_labels)
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


def prepare_data(recipe: Recipe) -> PreparedData:
    """Load the recipe's data and return splits that honour the contract, with labels and a fingerprint."""
    source = dataset_source(recipe)
    try:
        raw, notes = _load_raw(recipe, source)
    except FileNotFoundError as error:
        raise DataError(f"data file not found: {error.filename or error}") from None
    splits = _rename_columns(raw, recipe, source)
    labels = LabelInfo(id2label={}, skipped=dict(notes))
    seed = recipe.training.seed

    if "all" in splits:  # a corpus of class folders: deduplicate before splitting, or duplicates leak into test
        corpus = splits.pop("all")
        seen: set[str] = set()
        unique = [i for i, text in enumerate(corpus["text"]) if not (text in seen or seen.add(text))]
        labels.skipped["duplicates"] = len(corpus) - len(unique)
        corpus = corpus.select(unique)
        rest, test = stratified_split(corpus, 0.1, seed, stratify=True)
        train, validation = stratified_split(rest, 1 / 9, seed, stratify=True)
        splits = DatasetDict({"train": train, "validation": validation, "test": test})

    drop_unscored_splits(splits, recipe, labels, "is empty")

    if recipe.task == "text-regression":
        labels.id2label = {0: "score"}
    else:
        names = label_names(recipe, splits["train"])
        if len(names) < 2 and recipe.task == "text-classification":
            raise DataError(f"train split has a single class ({names}); classification needs at least two")
        labels.id2label = dict(enumerate(names))
    splits = _apply_contract(splits, recipe, labels)

    if recipe.task == "text-classification":
        present = set(splits["train"]["label"])
        if len(present) < 2:
            raise DataError(f"train split has a single class ({labels.id2label[present.pop()]!r})")
    splits = finish_splits(splits, recipe, stratify=recipe.task == "text-classification", labels=labels)
    digest = hashlib.sha256()
    for name in sorted(splits):
        # In-memory datasets get random fingerprints; hash the contract's content so the record is reproducible.
        digest.update(name.encode())
        digest.update(json.dumps(splits[name].to_dict(), sort_keys=True).encode())
    return PreparedData(splits, labels, source, digest.hexdigest()[:16])


def tokenize_splits(splits: DatasetDict, tokenizer: Any, max_length: int) -> DatasetDict:
    """Truncate to max_length without padding (the collator pads per batch); keep `length` for grouping."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        pair = batch.get("text_pair")
        encoded = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    tokenizer_id = hashlib.sha256(f"{tokenizer.name_or_path}|{len(tokenizer)}|{max_length}".encode()).hexdigest()
    # An explicit fingerprint spares `datasets` from pickling the whole tokenizer to hash `encode` (seconds per map).
    return DatasetDict(
        {
            name: split.map(
                encode,
                batched=True,
                remove_columns=[c for c in split.column_names if c in ("text", "text_pair")],
                desc="tokenizing",
                new_fingerprint=hashlib.sha256(f"{split._fingerprint}|{tokenizer_id}".encode()).hexdigest()[:32],
            )
            for name, split in splits.items()
        }
    )


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
    fitted = recipe.strategy.head.type == "lbfgs"  # kinds `head` and `contrastive` (the recipe allows no other)
    own_pooling = fitted and pooling == sentence_transformers_pooling(model_dir)
    return own_pooling and sentence_transformers_normalizes(model_dir)


def choose_pooling(recipe: Recipe, model_dir: Path) -> str:
    """`pooler` means the architecture's own head; `mean`/`cls` use the project's pooled classifier."""
    if recipe.strategy.pooling:
        return recipe.strategy.pooling
    if recipe.strategy.kind == "head" or recipe.strategy.head.type == "lbfgs":
        # A frozen CLS/pooler head on a mean-pooled sentence encoder is weak (0.61 vs 0.81 on SST-2, GUIDE.md); a head
        # fitted on tuned sentence embeddings (`contrastive`) reads them as the checkpoint pools them, and a plain
        # encoder's sentence embedding is the mean of its tokens (as sentence-transformers builds one).
        tuned = "mean" if recipe.strategy.kind == "contrastive" else "pooler"
        return sentence_transformers_pooling(model_dir) or tuned
    return "pooler"


def load_tokenizer(model_dir: str, recipe: Recipe) -> Any:
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=recipe.trust_remote_code)


def build_model(recipe: Recipe, model_dir: str, id2label: dict[int, str], pooling: str) -> Any:
    """The task model on the pretrained backbone, with a new head sized to the labels."""
    check_safetensors(Path(model_dir), recipe)
    num_labels = 1 if recipe.task == "text-regression" else len(id2label)
    config = AutoConfig.from_pretrained(
        model_dir,
        num_labels=num_labels,
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
        problem_type=TEXT_TASKS[recipe.task].problem_type,
        trust_remote_code=recipe.trust_remote_code,
    )
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


def _regression_value(logits: torch.Tensor) -> torch.Tensor:
    return logits.squeeze(-1)


def _over_threshold(scores: np.ndarray, config: Any) -> np.ndarray:
    return (scores >= getattr(config, "hf_transfer_threshold", 0.5)).astype(int)


def _as_is(scores: np.ndarray, config: Any = None) -> np.ndarray:
    return scores


@torch.inference_mode()
def predict_texts(run: Any, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
    """One entry per input: `{"label": ..., "scores": {label: probability}}`; regression: `{"label", "score"}`."""
    results = []
    threshold = getattr(run.model.config, "hf_transfer_threshold", 0.5)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        encoded = run.preprocessor(
            chunk, truncation=True, max_length=run.recipe.data.max_length, padding=True, return_tensors="pt"
        )
        logits = run.model(**encoded).logits.detach().float().cpu().numpy()
        results += text_answers(run.recipe.task, logits, run.id2label, threshold)
    return results


def read_texts(path: Path, recipe: Recipe) -> list[str]:
    """Texts from a .txt file (one per line) or a table with the recipe's text column (or `text`)."""
    if path.suffix.lower() == ".txt":
        return [line for line in read_text(path).splitlines() if line.strip()]
    table = read_table(path)
    for column in (recipe.data.text_column, "text", "sentence"):
        if column in table.column_names:
            return [str(t) for t in table[column]]
    raise DataError(f"{path}: no text column {recipe.data.text_column!r}; columns are {table.column_names}")


def _example(
    task: str, out: Path, split: Dataset, index: int, scores: np.ndarray, prediction: Any, names: list[str]
) -> dict[str, Any]:
    """An evaluation row as the card and the Space show it: its text, true label, prediction and score."""
    row = split[index]
    example: dict[str, Any] = {"text": row["text"]}
    if "text_pair" in row:
        example["text_pair"] = row["text_pair"]
    if task == "text-regression":
        example.update(label=float(row["label"]), prediction=float(prediction), score=float(prediction))
    elif task == "multi-label-classification":
        example["label"] = [names[i] for i, v in enumerate(row["label"]) if v]
        example["prediction"] = [names[i] for i, v in enumerate(prediction) if v]
        example["score"] = round(float(np.max(scores)), 6)
    else:
        example.update(label=names[int(row["label"])], prediction=names[int(prediction)])
        example["score"] = round(float(scores[int(prediction)]), 6)
    return example


# -- the model card's sections for these tasks


def _text_per_class(run: dict) -> str:
    title = "Per-label metrics" if run.get("task") == "multi-label-classification" else "Per-class metrics"
    return per_class_table(run, title)


def _text_examples(examples: list[dict]) -> str:
    if not examples:
        return ""
    rows = [[short(e.get("text", "")), *(e.get(k, "") for k in ("label", "prediction", "score"))] for e in examples]
    return "### Examples\n\n" + table(["text", "label", "prediction", "score"], rows)


def _text_usage(repo_id: str, examples: list[dict], remote_code: bool, adapter: bool) -> str:
    text = short(examples[0]["text"], 80) if examples and "text" in examples[0] else "Replace me with your text"
    text = repr(text)
    remote = ", trust_remote_code=True" if remote_code else ""
    if adapter:
        # A Hub adapter repo makes pipeline() take the config (and labels) from the base model, so the labels come
        # from the config.json pushed beside the adapter; transformers then loads base + adapter (peft installed).
        return (
            "from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline\n\n"
            f'config = AutoConfig.from_pretrained("{repo_id}"{remote})\n'
            f'model = AutoModelForSequenceClassification.from_pretrained("{repo_id}", config=config{remote})\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
            f'classifier = pipeline("text-classification", model=model, tokenizer=tokenizer)\n'
            f"print(classifier({text}))\n\n"
            "# or with PEFT directly:\n"
            "from peft import AutoPeftModelForSequenceClassification\n\n"
            "model = AutoPeftModelForSequenceClassification.from_pretrained(\n"
            f'    "{repo_id}", num_labels=config.num_labels, id2label=config.id2label, label2id=config.label2id\n'
            ")\n"
        )
    return (
        "from transformers import pipeline\n\n"
        f'classifier = pipeline("text-classification", model="{repo_id}"{remote})\n'
        f"print(classifier({text}))\n"
    )


TEXT_CARD = TaskCard(
    usage=_text_usage,
    examples=_text_examples,
    per_class=_text_per_class,
    keys={
        "data.max_length": always,
        # Length-grouped batches need token lengths: cached features have none.
        "training.group_by_length": lambda f: by_gradient(f) and not f.on_features,
        "data.threshold": lambda f: f.task == "multi-label-classification",
        "strategy.pooling": always,
        "strategy.normalize": lambda f: f.pooled,
    },
)


def _encode(splits: DatasetDict, tokenizer: Any, recipe: Recipe) -> Encoded:
    """Token ids truncated to data.max_length, padded per batch; train lengths kept for length-grouped batches."""
    tokenized = tokenize_splits(splits, tokenizer, recipe.data.max_length)
    grouped = recipe.training.group_by_length and "train" in tokenized
    lengths = tokenized["train"]["length"] if grouped else None
    return Encoded(tokenized.remove_columns("length"), DataCollatorWithPadding(tokenizer), lengths)


def _never_augments(recipe: Recipe) -> bool:
    return False


def _feature_key(recipe: Recipe, tokenizer: Any, model: Any) -> dict[str, Any]:
    return {
        "normalize": bool(getattr(model.config, "hf_transfer_normalize", False)),
        "max_length": recipe.data.max_length,
        "tokenizer": tokenizer_digest(tokenizer),
    }


def load_for_inference(folder: Path, trusted: bool) -> tuple[Any, Any]:
    """The saved sequence classifier (its own pooled architecture only when `trusted`) and its tokenizer."""
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trusted, use_safetensors=True)
    return model, AutoTokenizer.from_pretrained(folder)


TEXT_FEATURES = FeatureExtractor(
    extract=extract_features,
    cache_key=_feature_key,
    content_digest=text_digest,
    head=pooled_feature_head,
    warmup_head=pooled_warmup_head,
)
_SHARED: dict[str, Any] = dict(
    pipeline_tag="text-classification",
    peft_task_type="SEQ_CLS",
    prepare_data=prepare_data,
    load_preprocessor=load_tokenizer,
    encode=_encode,
    augments=_never_augments,
    choose_pooling=choose_pooling,
    build_model=build_model,
    features=TEXT_FEATURES,
    load_for_inference=load_for_inference,
    predict=predict_texts,
    read_inputs=read_texts,
    format_result=text_line,
    card=TEXT_CARD,
)
TEXT_TASKS: dict[str, Task] = {
    "text-classification": Task(
        name="text-classification",
        example=partial(_example, "text-classification"),
        problem_type="single_label_classification",
        metric_for_best="accuracy",
        greater_is_better=True,
        single_label=True,
        per_class_loss=True,
        compare_metric="accuracy",
        advise_probe=True,
        scores=softmax_scores,
        decide=top_class,
        references=label_ids,
        **_SHARED,
    ),
    "multi-label-classification": Task(
        name="multi-label-classification",
        example=partial(_example, "multi-label-classification"),
        problem_type="multi_label_classification",
        metric_for_best="f1_macro",
        greater_is_better=True,
        single_label=False,
        compare_metric="accuracy",
        scores=torch.sigmoid,
        decide=_over_threshold,
        references=label_ids,
        **_SHARED,
    ),
    "text-regression": Task(
        name="text-regression",
        example=partial(_example, "text-regression"),
        problem_type="regression",
        metric_for_best="mse",
        greater_is_better=False,
        single_label=False,
        compare_metric=None,
        scores=_regression_value,
        decide=_as_is,
        references=_as_is,
        **_SHARED,
    ),
}
