"""The task plug-in contract: what a task family tells the rest of the package (data, model, scores, inference)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from datasets import Dataset, DatasetDict

    from ..card_parts import TaskCard
    from ..data import PreparedData
    from ..recipe import Recipe


@dataclass
class Encoded:
    """Splits ready for the model, and how to batch them."""

    splits: DatasetDict
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]
    lengths: list[int] | None = None
    """Train rows' lengths, for length-grouped batches (None: plain shuffled batches)."""
    set_epoch: Callable[[int], None] | None = None
    """Called at the start of every epoch (train augmentation draws per epoch)."""
    sampler: Callable[[torch.Generator], Any] | None = None
    """The train rows' order, from the loop's seeded generator (the contrastive strategy's class blocks); None:
    length-grouped or shuffled batches."""
    left_out: dict[str, int] = field(default_factory=dict)
    """What encoding cut, by reason (words and entities past data.max_length): recorded with the run's data."""


@dataclass(frozen=True)
class FeatureExtractor:
    """How a frozen backbone of this task turns rows into the vectors its head reads, and what identifies them."""

    extract: Callable[..., torch.Tensor]
    """(accelerator, model, split, preprocessor, batch_size, desc) -> [rows, features], in dataset order."""
    cache_key: Callable[[Recipe, Any, Any], dict[str, Any]]
    """(recipe, preprocessor, model) -> the parts of the feature-cache key this task's features depend on."""
    content_digest: Callable[[Dataset], str]
    """A split's inputs by content, in order (labels left out: features do not depend on them)."""
    head: Callable[[Any], Any]
    """model -> its own head as a module of cached features, when only that head trains; else None."""
    vectors: Callable[[Dataset], int] | None = None
    """How many feature vectors `extract` returns for an encoded split (None: one per row; per token: one per
    labelled token)."""
    head_rows: Callable[[torch.Tensor, Dataset], Any] | None = None
    """(features, encoded split) -> the head's dataset (None: one `features` + `labels` row per example)."""
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    """How the head's rows are batched (None: stacked)."""
    warmup_head: Callable[[Any], Any] | None = None
    """model -> its own head as a module of cached features whatever else trains, for LP-FT's warm-up
    (`strategy.warmup_head_epochs`); raises StrategyError naming the key when this model's head cannot train that
    way. None: the task has no warm-up (`Task.warmup_refusal` says why)."""


@dataclass(frozen=True)
class Task:
    """One task: its names and defaults, and the functions everything else calls instead of branching on it."""

    name: str
    pipeline_tag: str
    problem_type: str
    metric_for_best: str
    greater_is_better: bool
    single_label: bool
    """One class per row: the balanced sampler and L-BFGS heads apply."""
    compare_metric: str | None
    """The metric `compare` ranks runs by (None: the task cannot be ranked that way)."""
    peft_task_type: str | None
    """PEFT's task type for LoRA (`SEQ_CLS` feeds input_ids); None passes the model's inputs as they come."""
    prepare_data: Callable[[Recipe], PreparedData]
    load_preprocessor: Callable[[str, Recipe], Any]
    """The model's tokenizer or image processor."""
    encode: Callable[[DatasetDict, Any, Recipe], Encoded]
    augments: Callable[[Recipe], bool]
    """Whether train rows change from epoch to epoch (then features cannot be computed once)."""
    choose_pooling: Callable[[Recipe, Path], str]
    build_model: Callable[[Recipe, str, dict[int, str], str], Any]
    scores: Callable[[torch.Tensor], torch.Tensor]
    """Logits -> what the pipeline reports: probabilities, or the raw value for regression."""
    decide: Callable[[np.ndarray, Any], np.ndarray]
    """(scores, model config) -> predictions, as the metrics take them."""
    references: Callable[[np.ndarray], np.ndarray]
    example: Callable[..., dict[str, Any]]
    """(output folder, split, row, scores, prediction, label names) -> one run.json example."""
    features: FeatureExtractor
    load_for_inference: Callable[[Path, bool], tuple[Any, Any]]
    """(output folder, may run its own code) -> (model, preprocessor)."""
    predict: Callable[[Any, list[str]], list[dict[str, Any]]]
    """(loaded run, inputs) -> one result per input."""
    read_inputs: Callable[[Path, Recipe], list[str]]
    """A --file of inputs (texts, or image paths)."""
    format_result: Callable[[str, dict[str, Any]], str]
    """One line of `predict` output."""
    card: TaskCard
    """The task's own sections of the model card: usage snippet, examples and per-class tables, its recipe keys."""
    input_noun: str = "texts"
    advise_probe: bool = False
    """`advise` can probe this task (a text encoder's hidden states, one class per row)."""
    fixed_rows_hint: str = ""
    """How to make train rows the same every epoch (so features can be computed once), when `augments` says not."""
    per_class_loss: bool = False
    """The loss is a cross-entropy over classes, per row or per token: `training.class_weights` apply."""
    warmup_refusal: str | None = None
    """Why LP-FT (`strategy.warmup_head_epochs`) cannot run on this task's models, when its features have no
    `warmup_head`."""
