"""Token classification (named-entity recognition): words + BIO tags (`token_data.py`), sub-word alignment and
truncation accounting, the token-classification model, per-token features for frozen heads, and entities predicted
on texts with the transformers pipeline (word spans with character offsets)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification

from ..card_parts import TaskCard, always, by_gradient, per_class_table, short, table
from ..data import read_table, read_text
from ..errors import DataError, RecipeError
from ..features import tokenizer_digest
from ..metrics import IGNORED
from ..recipe import Recipe
from ..sources import check_safetensors
from ..token_features import (
    collate_token_rows,
    extract_token_features,
    labelled_tokens,
    token_feature_head,
    token_rows,
    token_warmup_head,
)
from .classes import softmax_scores
from .spec import Encoded, FeatureExtractor, Task
from .token_data import entity_spans, prepare_data, split_tag_names, word_entities

logger = logging.getLogger(__name__)

NAME = "token-classification"
AGGREGATION = "first"
"""How predict, the card's snippet and the Space group sub-word predictions into entities: the transformers pipeline's
`first` strategy — each word takes its first sub-word's tag, as it was trained and is scored — so the three give the
same spans. `simple` (grouping every sub-word's own tag) gives the same spans once continuation sub-words are tagged
like their word, and fragments ("Mer", "kel") before that."""


# ---------------------------------------------------------------- sub-word alignment


def align_labels(word_ids: list[int | None], tags: list[int], inside: dict[int, int], all_subwords: bool) -> list[int]:
    """One label per token: a word's first sub-word carries its tag; its other sub-words IGNORED, or with
    `all_subwords` the tag too (`I-X` for a `B-X` word: they continue its entity); special tokens IGNORED."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORED)
        elif word != previous:
            labels.append(tags[word])
        else:
            labels.append(inside.get(tags[word], tags[word]) if all_subwords else IGNORED)
        previous = word
    return labels


def _inside_of(id2label: dict[int, str]) -> dict[int, int]:
    """B-X id -> I-X id."""
    index = {name: i for i, name in id2label.items()}
    return {i: index[f"I-{n[2:]}"] for i, n in id2label.items() if n.startswith("B-") and f"I-{n[2:]}" in index}


def _encode_split(split: Dataset, tokenizer: Any, recipe: Recipe, names: list[str]) -> tuple[dict, dict]:
    """Token ids and aligned labels of one split, and what truncation cut (sentences, words, entities)."""
    encoded = tokenizer(
        list(split["tokens"]), is_split_into_words=True, truncation=True, max_length=recipe.data.max_length
    )
    inside = _inside_of(dict(enumerate(names)))
    columns: dict[str, list] = {key: list(values) for key, values in encoded.items()}
    columns["labels"], columns["length"] = [], []
    cut = {"truncated_sentences": 0, "truncated_words": 0, "truncated_entities": 0}
    for row, tags in enumerate(split["label"]):
        word_ids = encoded.word_ids(row)
        columns["labels"].append(align_labels(word_ids, tags, inside, recipe.data.label_all_subwords))
        columns["length"].append(len(word_ids))
        kept = max((w for w in word_ids if w is not None), default=-1) + 1
        if kept < len(tags):
            cut["truncated_sentences"] += 1
            cut["truncated_words"] += len(tags) - kept
            # An entity counts as lost when any of its words is cut: the model never sees it whole.
            cut["truncated_entities"] += sum(1 for _, _, end in entity_spans([names[t] for t in tags]) if end > kept)
    return columns, cut


def _encode(splits: DatasetDict, tokenizer: Any, recipe: Recipe) -> Encoded:
    """Sub-word ids truncated to data.max_length with aligned labels, padded per batch (labels with IGNORED);
    what truncation cut is logged and recorded per split."""
    if not getattr(tokenizer, "is_fast", False):
        raise RecipeError(
            f"{recipe.model!r} has no fast tokenizer: token classification needs its word alignment (word_ids)"
        )
    tokenized, left_out = {}, {}
    for name, split in splits.items():
        columns, cut = _encode_split(split, tokenizer, recipe, split_tag_names(split))
        tokenized[name] = Dataset.from_dict(columns)
        if cut["truncated_sentences"]:
            logger.warning(
                "split %r: %d sentences longer than data.max_length = %d lost %d words and %d entities",
                name,
                cut["truncated_sentences"],
                recipe.data.max_length,
                cut["truncated_words"],
                cut["truncated_entities"],
            )
        left_out.update({f"{name}_{k}": v for k, v in cut.items() if v})
    tokenized = DatasetDict(tokenized)
    grouped = recipe.training.group_by_length and "train" in tokenized
    lengths = tokenized["train"]["length"] if grouped else None
    collator = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORED)
    return Encoded(tokenized.remove_columns("length"), collator, lengths, left_out=left_out)


# ---------------------------------------------------------------- the model


def load_tokenizer(model_dir: str, recipe: Recipe) -> Any:
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=recipe.trust_remote_code)


def _choose_pooling(recipe: Recipe, model_dir: Path) -> str:
    if recipe.strategy.pooling or recipe.strategy.normalize:
        raise RecipeError(
            "strategy.pooling and strategy.normalize apply to sequence tasks; token classification reads every "
            "token's state (leave both out)"
        )
    return "tokens"


def build_model(recipe: Recipe, model_dir: str, id2label: dict[int, str], pooling: str) -> Any:
    """The checkpoint's token-classification model with a new per-token classifier sized to the tags."""
    check_safetensors(Path(model_dir), recipe)
    if recipe.strategy.head.type == "mlp":
        raise RecipeError("strategy.head.type 'mlp' is for sequence tasks; token classification trains a linear head")
    config = AutoConfig.from_pretrained(
        model_dir,
        num_labels=len(id2label),
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
        trust_remote_code=recipe.trust_remote_code,
    )
    if recipe.data.max_length > getattr(config, "max_position_embeddings", 10**9):
        raise RecipeError(
            f"data.max_length = {recipe.data.max_length} exceeds the model's max_position_embeddings "
            f"({config.max_position_embeddings}); lower data.max_length"
        )
    return AutoModelForTokenClassification.from_pretrained(
        model_dir,
        config=config,
        trust_remote_code=recipe.trust_remote_code,
        ignore_mismatched_sizes=True,
        use_safetensors=not recipe.allow_pickle or None,
    )


def _top_tag(scores: np.ndarray, config: Any) -> np.ndarray:
    return scores.argmax(axis=-1)


def _tag_ids(labels: np.ndarray) -> np.ndarray:
    return labels.astype(int)


def load_for_inference(folder: Path, trusted: bool) -> tuple[Any, Any]:
    """The saved token classifier (plain transformers) and its tokenizer."""
    model = AutoModelForTokenClassification.from_pretrained(folder, trust_remote_code=trusted, use_safetensors=True)
    return model, AutoTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------- predictions


def entities_pipeline(model: Any, tokenizer: Any) -> Any:
    """The transformers pipeline a Hub user gets, with the same aggregation (AGGREGATION)."""
    from transformers import PreTrainedModel, pipeline

    # The pipeline logs an error naming every supported class when the model is not one of transformers' own; the
    # ONNX runtime's stand-in (runtimes.OnnxModel) returns the same logits, so that line would only mislead.
    # The pipeline truncates at the tokenizer's model_max_length, which some checkpoints leave above what the model
    # has position embeddings for (or unset): a long text would then fail inside the model instead of being cut.
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions and not 0 < (tokenizer.model_max_length or 0) <= positions:
        tokenizer.model_max_length = positions
    check_logger = logging.getLogger("transformers.pipelines.base")
    level = check_logger.level
    if not isinstance(model, PreTrainedModel) and not hasattr(model, "peft_config"):
        check_logger.setLevel(logging.CRITICAL)
    try:
        return pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy=AGGREGATION)
    finally:
        check_logger.setLevel(level)


def pipeline_entities(text: str, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pipeline's grouped entities as `{type, text, start, end, score}`; the text is the input's own span (the
    pipeline's `word` is decoded sub-words: lower-cased by an uncased tokenizer)."""
    return [
        {
            "type": e["entity_group"],
            "text": text[e["start"] : e["end"]],
            "start": int(e["start"]),
            "end": int(e["end"]),
            "score": round(float(e["score"]), 6),
        }
        for e in found
    ]


@torch.inference_mode()
def predict_entities(run: Any, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
    """One `{"entities": [{type, text, start, end, score}, ...]}` per text."""
    tagger = entities_pipeline(run.model, run.preprocessor)
    found = tagger(list(texts), batch_size=batch_size)
    return [{"entities": pipeline_entities(text, entities)} for text, entities in zip(texts, found, strict=True)]


def read_texts(path: Path, recipe: Recipe) -> list[str]:
    """Texts from a .txt file (one per line), or rows of words (the recipe's tokens column) joined by spaces."""
    if path.suffix.lower() == ".txt":
        return [line for line in read_text(path).splitlines() if line.strip()]
    table = read_table(path)
    if recipe.data.tokens_column in table.column_names:
        return [" ".join(words) for words in table[recipe.data.tokens_column]]
    for column in ("text", "sentence"):
        if column in table.column_names:
            return [str(t) for t in table[column]]
    raise DataError(
        f"{path}: no {recipe.data.tokens_column!r} column (data.tokens_column) and no 'text' column; "
        f"columns are {table.column_names}"
    )


def format_result(text: str, result: dict[str, Any]) -> str:
    """`TYPE 'words' start-end score, ...<TAB>text` (`-` when no entity is found)."""
    shown = text if len(text) <= 60 else text[:57] + "..."
    found = [f"{e['type']} {e['text']!r} {e['start']}-{e['end']} {e['score']:.3f}" for e in result["entities"]]
    return f"{', '.join(found) or '-'}\t{shown}"


@functools.lru_cache(maxsize=2)
def _saved_tagger(folder: str, stamp: float) -> Any:
    model = AutoModelForTokenClassification.from_pretrained(folder, use_safetensors=True)
    return entities_pipeline(model.eval(), AutoTokenizer.from_pretrained(folder))


def _example(out: Path, split: Dataset, index: int, scores: np.ndarray, prediction: Any, names: list[str]):
    """An evaluation sentence as the card and the Space show it: its text, true entities, and the entities the saved
    model finds (through the pipeline a Hub user runs, so the card shows what they will see)."""
    row = split[index]
    text, truth = word_entities(row["tokens"], [names[i] for i in row["label"]])
    weights = out / "model.safetensors"
    tagger = _saved_tagger(str(out), weights.stat().st_mtime if weights.is_file() else 0.0)
    found = pipeline_entities(text, tagger(text))
    score = round(float(np.mean([e["score"] for e in found])), 6) if found else None
    return {"text": text, "label": truth, "prediction": found, "score": score}


# ---------------------------------------------------------------- the model card


def _entity_list(entities: list[dict]) -> str:
    return ", ".join(f"{e.get('text')} ({e.get('type')})" for e in entities) or "—"


def _token_examples(examples: list[dict]) -> str:
    if not examples:
        return ""
    rows = [
        [short(e.get("text", "")), _entity_list(e.get("label") or []), _entity_list(e.get("prediction") or [])]
        for e in examples
    ]
    return "### Examples\n\n" + table(["text", "entities", "predicted"], rows)


def _token_per_class(run: dict) -> str:
    return per_class_table(run, "Per-entity-type metrics (entity level)")


def _token_usage(repo_id: str, examples: list[dict], remote_code: bool, adapter: bool) -> str:
    text = (
        short(examples[0]["text"], 80)
        if examples and "text" in examples[0]
        else "My name is Clara and I live in Berkeley."
    )
    remote = ", trust_remote_code=True" if remote_code else ""
    if adapter:
        return (
            "from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, pipeline\n\n"
            f'config = AutoConfig.from_pretrained("{repo_id}"{remote})\n'
            f'model = AutoModelForTokenClassification.from_pretrained("{repo_id}", config=config{remote})\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n'
            f'tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, '
            f'aggregation_strategy="{AGGREGATION}")\n'
            f"print(tagger({text!r}))\n"
        )
    return (
        "from transformers import pipeline\n\n"
        f'tagger = pipeline("token-classification", model="{repo_id}", aggregation_strategy="{AGGREGATION}"{remote})\n'
        f"print(tagger({text!r}))\n"
    )


TOKEN_CARD = TaskCard(
    usage=_token_usage,
    examples=_token_examples,
    per_class=_token_per_class,
    keys={
        "data.max_length": always,
        "data.label_all_subwords": always,
        "data.repair_tags": always,
        "training.group_by_length": lambda f: by_gradient(f) and not f.on_features,
    },
)


# ---------------------------------------------------------------- features and the plug-in


def _feature_key(recipe: Recipe, tokenizer: Any, model: Any) -> dict[str, Any]:
    # Which tokens have states stored depends on the alignment as well as on the tokenizer and the length.
    return {
        "max_length": recipe.data.max_length,
        "tokenizer": tokenizer_digest(tokenizer),
        "label_all_subwords": recipe.data.label_all_subwords,
    }


def _words_digest(split: Dataset) -> str:
    """The split's sentences (lists of words), in order; tags left out: the states do not depend on them."""
    return hashlib.sha256(json.dumps(list(split["tokens"])).encode()).hexdigest()


def _never_augments(recipe: Recipe) -> bool:
    return False


TOKEN_CLASSIFICATION = Task(
    name=NAME,
    pipeline_tag="token-classification",
    problem_type="token_classification",
    metric_for_best="f1",
    greater_is_better=True,
    single_label=False,
    compare_metric="f1",
    peft_task_type="TOKEN_CLS",
    prepare_data=prepare_data,
    load_preprocessor=load_tokenizer,
    encode=_encode,
    augments=_never_augments,
    choose_pooling=_choose_pooling,
    build_model=build_model,
    scores=softmax_scores,
    decide=_top_tag,
    references=_tag_ids,
    example=_example,
    features=FeatureExtractor(
        extract=extract_token_features,
        cache_key=_feature_key,
        content_digest=_words_digest,
        head=token_feature_head,
        vectors=labelled_tokens,
        head_rows=token_rows,
        collate=collate_token_rows,
        warmup_head=token_warmup_head,
    ),
    load_for_inference=load_for_inference,
    predict=predict_entities,
    read_inputs=read_texts,
    format_result=format_result,
    card=TOKEN_CARD,
    per_class_loss=True,
)
