"""Recipes: typed models of the YAML file, dotted command-line overrides, validation with errors naming the key."""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import typing
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import RecipeError

TaskName = Literal[
    "text-classification",
    "multi-label-classification",
    "text-regression",
    "image-classification",
    "token-classification",
]
StrategyName = Literal["head", "partial", "lora", "full", "contrastive"]
SchedulerName = Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]
PoolingName = Literal["cls", "mean", "pooler"]
HeadType = Literal["linear", "mlp", "lbfgs"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_YAML_DEPTH = 32
"""Nesting a recipe may use (it needs 4); deeper is refused while parsing, long before Python's recursion limit."""
MAX_SHOWN_CHARS = 80
"""A value or key quoted in an error is cut to this many characters: the message stays one readable line."""
MAX_ERROR_LINES = 8
"""A recipe with more mistakes shows this many lines, the last one counting the rest."""


class _Section(BaseModel):
    # inf and nan pass every `gt=0` bound (inf > 0), so they are refused for every float field.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_likely_mistakes(cls, value: Any, info: ValidationInfo) -> Any:
        kinds = _types_in(cls.model_fields[info.field_name].annotation)
        if any(_is_model(kind) for kind in kinds):
            return value  # a section: its own fields are checked inside it
        if _contains(value, lambda v: isinstance(v, str) and not v.strip()):
            raise ValueError("an empty string; give a value or leave the key out")
        # YAML reads true/false (and yes/no, on/off) as booleans, which Python would take as 1 and 0.
        if kinds & {int, float} and bool not in kinds and _contains(value, lambda v: isinstance(v, bool)):
            raise ValueError("true/false is not a number here; give a number")
        return value


def _types_in(annotation: Any) -> set[Any]:
    """Every type an annotation admits, nested ones included: `dict[str, float] | None` → {dict, str, float, None}."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return {type(arg) for arg in args}
    kinds = {origin or annotation}
    for arg in args:
        kinds |= _types_in(arg)
    return kinds


def _contains(value: Any, test: Callable[[Any], bool]) -> bool:
    """`test` holds for the value, an item of it, or a key or value of it, at any depth."""
    if isinstance(value, dict):
        return any(_contains(k, test) or _contains(v, test) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains(item, test) for item in value)
    return test(value)


class AugmentationConfig(_Section):
    """Train-time image augmentation (`image-classification`); evaluation always sees the processor's own resize and
    centre crop. Each image's draw is seeded by the run's seed, the epoch and the row, so reruns and resumes match."""

    random_resized_crop: bool = True
    """Crop a random part of the image (area fraction in `crop_scale`, aspect ratio 3/4–4/3), resized to the
    model's input size."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    horizontal_flip: bool = True
    """Mirror the image left-right with probability 0.5."""

    @property
    def active(self) -> bool:
        """False when both are off: then every epoch sees the same (the processor's) pixels, which can be cached."""
        return self.random_resized_crop or self.horizontal_flip

    @field_validator("crop_scale")
    @classmethod
    def _fraction_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError("give [low, high] with 0 < low <= high <= 1")
        return value


class DataConfig(_Section):
    source: str
    """Hub dataset ID, a local folder of split files, a local file, or `package.module:function` (a DatasetDict)."""
    text_column: str = "text"
    image_column: str = "image"
    """`image-classification`: the column holding images (a Hub Image feature, or file paths in a csv, relative to
    the csv's folder). Folders of class folders need no column."""
    text_pair_column: str | None = None
    """Second text of a pair (NLI, paraphrase); the pair is tokenized together."""
    label_column: str = "label"
    label_names: list[str] | None = None
    """Label names in id order; by default taken from a ClassLabel column or the sorted string labels."""
    config: str | None = None
    """Hub dataset configuration name."""
    revision: str | None = None
    files: dict[str, str] | None = None
    """Explicit split files, e.g. {train: a.csv, validation: b.tsv, test: c.csv}."""
    max_length: int = Field(default=256, gt=0)
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)
    """Held out from train (stratified, seeded) when the data has no validation split."""
    samples_per_class: int | None = Field(default=None, gt=0)
    """Few-shot runs: train on N rows of each class, drawn from the train split with `training.seed` (a class with
    fewer keeps all of its rows, logged and recorded in run.json). Without a validation split in the data, the
    validation rows are held out from the rows left undrawn, and the last epoch is kept (`training.select_best`)."""
    threshold: float = Field(default=0.5, gt=0, lt=1)
    """Multi-label decision threshold on the sigmoid."""
    image_extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    """`image-classification`: file types read from image folders; any other file is skipped and counted. GIF is
    left out on purpose: in photo datasets a .gif is usually a placeholder ("image not found") or an animation."""
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    tokens_column: str = "tokens"
    """`token-classification`: the column holding each sentence's list of words."""
    tags_column: str = "ner_tags"
    """`token-classification`: the column holding one BIO tag per word (strings, or a `Sequence(ClassLabel)`)."""
    repair_tags: bool = False
    """`token-classification`: rewrite an `I-X` that continues no `X` entity as `B-X` (otherwise counted and
    reported with its split and row, and trained as written)."""
    label_all_subwords: bool = False
    """`token-classification`: every sub-word of a word carries its tag (`I-X` after a `B-X` word's first piece);
    by default only the first sub-word does and the others count in neither the loss nor the metrics."""

    @field_validator("label_names")
    @classmethod
    def _some_labels(cls, value: list[str] | None) -> list[str] | None:
        if value == []:
            raise ValueError("an empty list; name the labels in id order, or leave the key out to read them")
        return value

    @field_validator("image_extensions")
    @classmethod
    def _dotted_lowercase(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one file type, e.g. [.jpg, .png]")
        return ["." + v.lower().lstrip(".") for v in value]

    @field_validator("files")
    @classmethod
    def _known_splits(cls, files: dict[str, str] | None) -> dict[str, str] | None:
        if files is not None:
            unknown = sorted(set(files) - {"train", "validation", "test"})
            if unknown:
                raise ValueError(f"unknown split {_shown(unknown[0])}; allowed: train, validation, test")
            if "train" not in files:
                raise ValueError("a 'train' file is required")
        return files


TOKEN_DATA_KEYS = ("tokens_column", "tags_column", "repair_tags", "label_all_subwords")
"""The data keys of `token-classification` alone."""


class HeadConfig(_Section):
    type: HeadType = "linear"
    """`linear`: one linear layer; `mlp`: one hidden layer; `lbfgs`: multinomial logistic regression fitted with
    L-BFGS on the cached features (`kind: head` only), its C chosen by cross-validation on train."""
    hidden: int | None = Field(default=None, gt=0)
    """`mlp`: width of the hidden layer (default: the backbone's hidden size)."""
    C: float | list[float] | None = None
    """`lbfgs`: inverse regularisation strength. One number is used as is; a list is the grid searched by
    stratified cross-validation on train; default: 10 values log-spaced from 1e-4 to 1e4."""
    cv_folds: int = Field(default=5, ge=2)
    """`lbfgs`: folds of the stratified cross-validation on train that chooses C."""
    max_iter: int = Field(default=1000, gt=0)
    """`lbfgs`: L-BFGS iterations per fit."""

    @field_validator("C")
    @classmethod
    def _positive(cls, value: float | list[float] | None) -> float | list[float] | None:
        values = value if isinstance(value, list) else [] if value is None else [value]
        if isinstance(value, list) and not value:
            raise ValueError("an empty list; give one C or several")
        if any(v <= 0 for v in values):
            raise ValueError("C must be > 0")
        return value

    @model_validator(mode="after")
    def _keys_of_the_type(self) -> HeadConfig:
        if self.hidden is not None and self.type != "mlp":
            raise ValueError(f"'strategy.head.hidden' applies to type 'mlp' only, not {self.type!r}")
        defaults = HeadConfig.model_fields
        for name in ("C", "cv_folds", "max_iter"):
            if getattr(self, name) != defaults[name].default and self.type != "lbfgs":
                raise ValueError(f"'strategy.head.{name}' applies to type 'lbfgs' only, not {self.type!r}")
        return self


class StrategyConfig(_Section):
    kind: StrategyName = "lora"
    pooling: PoolingName | None = None
    """How the head reads the backbone: cls token, mean of tokens, or the architecture's pooler. Default: mean for
    `head` on a sentence-transformers checkpoint trained with mean pooling, otherwise the architecture's own head."""
    normalize: bool | None = None
    """Scale each pooled vector to unit length before the head (`mean`/`cls` pooling only). Default: as the
    checkpoint's sentence-transformers modules do (all-MiniLM-L6-v2 ends in `Normalize`) for a `head` of type `lbfgs`
    on the checkpoint's own pooling, so the frozen features are exactly its sentence embeddings; otherwise off (a head
    trained by gradient steps learns far slower on unit-length features at the same learning rate)."""
    layers: int | None = Field(default=None, gt=0)
    """`partial`: how many of the last encoder layers to unlock (default 3)."""
    r: int | None = Field(default=None, gt=0)
    """LoRA rank: `lora` (16 when not given); `contrastive`: LoRA adapters on the encoder during the contrastive
    phase when given (large encoders), else the whole encoder trains."""
    alpha: int | None = Field(default=None, gt=0)
    """LoRA scaling numerator; default 2 × r."""
    dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = None
    """LoRA targets; default per architecture (all linear layers of the encoder)."""
    unfreeze_every: int | None = Field(default=None, gt=0)
    """Gradual unfreezing (`partial`, `lora`, `full`): the head trains from the first epoch, then one more layer,
    top down, every N epochs; what sits below the layers (embeddings) comes last."""
    warmup_head_epochs: int | None = Field(default=None, gt=0)
    """LP-FT (`partial`, `lora`, `full`): train the head for N epochs on the frozen backbone's features first (text
    classification: pooled, with `pooling: mean | cls`; token classification: per-token states), then fine-tune with
    the chosen strategy from that head."""
    warmup_head_lr: float = Field(default=1e-3, gt=0)
    """Learning rate of the head warm-up (`warmup_head_epochs`)."""
    head: HeadConfig = Field(default_factory=HeadConfig)
    """The classifier on top of the (pooled) backbone: linear, mlp or lbfgs."""
    feature_cache: str | bool | None = None
    """`head` on pooled features: where features are cached on disk. A folder, `false` for no cache; default
    $HF_TRANSFER_FEATURE_CACHE, else <HF_HOME>/hf_transfer/features."""
    loss: Literal["triplet", "pairs"] = "triplet"
    """`contrastive`: `triplet`, sentence-transformers' batch-all triplet loss (cosine distance) over every valid
    triplet of each batch; `pairs`, SetFit's objective (sentence-transformers' CosineSimilarityLoss) on every pair of
    rows within each batch."""
    margin: float = Field(default=0.25, gt=0)
    """`contrastive`, loss `triplet`: how much farther (cosine distance) a row of another class must be than one of
    its own class."""
    class_block: int = Field(default=4, ge=2)
    """`contrastive`: rows of one class that sit together in a batch (a batch holds batch_size / class_block
    classes), so every row meets rows of its own class and of others."""
    epoch_rows: int | None = Field(default=256, gt=0)
    """`contrastive`: rows an epoch draws, in class blocks: a small train split is cycled through again (at most 10
    times), a large one sampled, so the contrastive phase costs about the same at 8 or 64 rows per class (the head is
    then fitted on every row). null: one pass over every train row."""

    @model_validator(mode="before")
    @classmethod
    def _defaults_of_the_kind(cls, value: Any) -> Any:
        # LoRA's rank defaults to 16 (written out in the saved recipe); for `contrastive` no rank means no LoRA.
        if isinstance(value, dict) and value.get("kind", "lora") == "lora" and value.get("r") is None:
            value = {**value, "r": 16}
        # The contrastive strategy's head is fitted on the tuned features: L-BFGS unless the recipe says otherwise.
        if isinstance(value, dict) and value.get("kind") == "contrastive":
            head = value.get("head")
            if head is None:
                value = {**value, "head": {"type": "lbfgs"}}
            elif isinstance(head, dict) and "type" not in head:
                value = {**value, "head": {**head, "type": "lbfgs"}}
        return value

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, value: list[str] | str | None) -> list[str] | str | None:
        if value == []:
            raise ValueError(
                "an empty list would adapt nothing; name the modules (e.g. [query, value]), write 'all-linear', or "
                "leave the key out for the architecture's default"
            )
        return value

    @model_validator(mode="after")
    def _layers_only_for_partial(self) -> StrategyConfig:
        if self.layers is not None and self.kind != "partial":
            raise ValueError(f"'layers' applies to kind 'partial' only, not {self.kind!r}")
        for name in ("unfreeze_every", "warmup_head_epochs"):
            if getattr(self, name) is not None and self.kind in ("head", "contrastive"):
                raise ValueError(f"'strategy.{name}' applies to kinds 'partial', 'lora' and 'full', not {self.kind!r}")
        # Compared with the default, not "was it set": a saved recipe.yaml spells out every default.
        lr_default = StrategyConfig.model_fields["warmup_head_lr"].default
        if self.warmup_head_lr != lr_default and not self.warmup_head_epochs:
            raise ValueError("'strategy.warmup_head_lr' is used only with 'strategy.warmup_head_epochs'")
        if self.head.type == "lbfgs" and self.kind not in ("head", "contrastive"):
            raise ValueError(
                f"'strategy.head.type' 'lbfgs' fits frozen features: kinds 'head' and 'contrastive' (fitted after "
                f"its encoder is tuned), not {self.kind!r}"
            )
        if self.kind == "contrastive" and self.head.type != "lbfgs":
            raise ValueError(
                f"kind 'contrastive' fits its head with L-BFGS on the tuned features: 'strategy.head.type' must be "
                f"'lbfgs', not {self.head.type!r}"
            )
        for name in ("loss", "margin", "class_block", "epoch_rows"):
            if getattr(self, name) != StrategyConfig.model_fields[name].default and self.kind != "contrastive":
                raise ValueError(f"'strategy.{name}' applies to kind 'contrastive' only, not {self.kind!r}")
        return self


class TrainingConfig(_Section):
    epochs: int = Field(default=3, gt=0)
    batch_size: int = Field(default=32, gt=0)
    """Per device: the effective batch is batch_size × processes × grad_accum."""
    lr: float = Field(default=3e-4, gt=0)
    seed: int = 42
    output_dir: str = "outputs/run"
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: float = Field(default=0.06, ge=0)
    """Warm-up length: a fraction of all steps when < 1, else a number of steps."""
    scheduler: SchedulerName = "linear"
    grad_accum: int = Field(default=1, gt=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    eval_every: int | None = Field(default=None, gt=0)
    """Evaluate every N optimizer steps; default once per epoch."""
    early_stopping_patience: int | None = Field(default=None, gt=0)
    metric_for_best: str | None = None
    """Default: accuracy (single-label), f1_macro (multi-label), mse (regression), f1 (token classification:
    entity-level micro F1)."""
    save_total_limit: int = Field(default=2, gt=0)
    group_by_length: bool = True
    """Batch examples of similar length together (less padding, faster)."""
    eval_batch_size: int | None = Field(default=None, gt=0)
    log_with: list[str] = Field(default_factory=list)
    """Accelerate trackers, e.g. [tensorboard]; only those installed are used."""
    max_train_samples: int | None = Field(default=None, gt=0)
    max_eval_samples: int | None = Field(default=None, gt=0)
    layer_lr_decay: float | None = Field(default=None, gt=0, le=1)
    """Layer-wise learning-rate decay (`partial`, `lora`, `full`): the head and the top layer train at `lr`, each
    layer below at ×decay of the one above, the embeddings lowest."""
    class_weights: Literal["balanced", "none"] | dict[str, float] = "none"
    """Single-label and token classification: weight each class's loss (per token: each tag's, over the labelled
    tokens). `balanced` = rows / (classes × rows of the class) on the train split, counting word-level tags for
    token classification; or {label or tag name: weight}, unnamed ones weighing 1."""
    balanced_sampler: bool = False
    """Single-label classification: draw training rows with every class equally likely (with replacement, as many
    rows per epoch as train holds), instead of grouping by length. Not token classification: a sentence has many
    tags (use class_weights)."""
    select_best: bool | None = None
    """Keep the weights of the best validation score (true) or of the last epoch (false). Default: the best, except
    with `data.samples_per_class` on data without a validation split, where a few held-out rows would pick an epoch
    by chance."""

    @field_validator("class_weights", mode="before")
    @classmethod
    def _known_weights(cls, value: Any) -> Any:
        if value is None:
            return "none"
        if isinstance(value, dict):
            bad = [name for name, weight in value.items() if not isinstance(weight, int | float) or not weight > 0]
            if bad:
                raise ValueError(f"the weight of {_shown(bad[0])} must be a number > 0")
        elif value not in ("balanced", "none"):
            raise ValueError("use 'balanced', 'none' or a mapping {label name: weight}")
        return value


class HubConfig(_Section):
    repo_id: str
    space: str | None = None
    private: bool = False


class Recipe(_Section):
    _as_written: dict[str, Any] | None = PrivateAttr(default=None)
    """What the user wrote: the file's name, its text and the dotted overrides (publishing replaces local paths)."""
    model: str
    """Hub ID (e.g. sentence-transformers/all-MiniLM-L6-v2) or a local folder."""
    model_revision: str | None = None
    task: TaskName = "text-classification"
    data: DataConfig
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    hub: HubConfig | None = None
    trust_remote_code: bool = False
    """Allow model code from the model repository to run. Off unless the recipe asks."""
    allow_pickle: bool = False
    """Allow loading pickle (`.bin`) weights when a checkpoint has no safetensors. Off by default."""

    def __eq__(self, other: object) -> bool:
        # Two recipes are the same when their values are: where one was read from (`_as_written`) does not count.
        return isinstance(other, Recipe) and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  (mutable, as every pydantic model)

    @model_validator(mode="after")
    def _training_options_of_the_strategy(self) -> Recipe:
        # Rules between keys of two sections; rules that need the task's or the model's nature are the strategy's.
        if self.training.layer_lr_decay and self.strategy.kind in ("head", "contrastive"):
            raise ValueError(
                f"training.layer_lr_decay applies to kinds 'partial', 'lora' and 'full', not {self.strategy.kind!r}"
            )
        if self.data.samples_per_class and self.task in ("text-regression", "token-classification"):
            raise ValueError(f"data.samples_per_class draws rows per class: task {self.task!r} has no class per row")
        if self.task != "token-classification":
            defaults = DataConfig.model_fields
            for name in TOKEN_DATA_KEYS:
                if getattr(self.data, name) != defaults[name].default:
                    raise ValueError(f"data.{name} applies to task 'token-classification' only, not {self.task!r}")
        return self

    def to_yaml(self) -> str:
        """The resolved recipe as YAML, stable key order."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def sha256(self) -> str:
        """Hash of what determines the trained model: the resolved recipe less where it is written and published."""
        # Where features are cached changes nothing the run computes, so moving the cache never blocks a resume.
        exclude = {"hub": True, "training": {"output_dir"}, "strategy": {"feature_cache"}}
        tree = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


def default_metric_for_best(task: str) -> str:
    """The metric that picks the best checkpoint when the recipe names none."""
    return {
        "text-classification": "accuracy",
        "image-classification": "accuracy",
        "multi-label-classification": "f1_macro",
        "token-classification": "f1",
    }.get(task, "mse")


# -- YAML -------------------------------------------------------------------------------------------------------------


class _RecipeLoader(yaml.SafeLoader):
    """`safe_load`'s loader, refusing what a recipe never needs and an attacker would use: aliases and deep nesting.

    Aliases are refused outright rather than bounded: a recipe has no repeated structure worth sharing, the refusal
    happens at the first `*` before anything is expanded (a "billion laughs" file costs nothing), and every value stays
    on the line where it is written, so errors point at real lines."""

    def __init__(self, stream: str, source: str):
        super().__init__(stream)
        self.source = source
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            line = self.peek_event().start_mark.line + 1
            raise RecipeError(
                f"{self.source}: line {line}: YAML aliases (*name) are not allowed in a recipe; write the value out"
            )
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise RecipeError(f"{self.source}: line {line}: nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def check_unique_keys(self, node: yaml.Node, path: str = "") -> None:
        """A key written twice in one mapping is an error (plain `safe_load` keeps the last one silently)."""
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.check_unique_keys(item, f"{path}[{index}]")
        if not isinstance(node, yaml.MappingNode):
            return
        marks: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            plain = isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge"
            key = self.construct_object(key_node) if plain else None
            name = (f"{path}.{key}" if path else str(key)) if plain else path
            if plain:
                if key in marks:
                    first, second = marks[key], key_node.start_mark
                    where = (
                        f"lines {first.line + 1} and {second.line + 1}"
                        if first.line != second.line
                        else f"line {first.line + 1}, columns {first.column + 1} and {second.column + 1}"
                    )
                    raise RecipeError(f"{self.source}: key {_shown(name)} is written twice ({where}); keep one")
                marks[key] = key_node.start_mark
            self.check_unique_keys(value_node, name)


def _load_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load` with unique keys, no aliases and bounded nesting; errors name `source`."""
    loader = _RecipeLoader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        loader.check_unique_keys(node)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise RecipeError(f"{source}: not valid YAML: {error}") from None
    finally:
        loader.dispose()


def read_recipe_tree(path: str | Path) -> dict[str, Any]:
    """A recipe file as a plain dict, before overrides and validation (duplicate keys and aliases refused)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text") from None
    tree = _load_yaml(text, str(path))
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys (model, task, data, strategy, training)")
    return tree


# -- overrides --------------------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.lr=3e-5` → (["training", "lr"], 3e-05). Values parse as YAML, and `3e-5` is a number."""
    if "=" not in text:
        raise RecipeError(f"override {_shown(text)} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise RecipeError(f"override {_shown(text)} has an empty key")
    value = _load_yaml(raw, f"override {_shown(text)}") if raw.strip() else ""
    # YAML 1.1 reads "3e-5" as a string (no dot before the exponent); users mean the number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return path, value


def apply_overrides(tree: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Dotted overrides (`training.lr=3e-5`) applied in order to a recipe tree, in place; returns the tree.

    Values parse as YAML (and `3e-5` is a number), a string field keeps the text typed (`data.config=1.0` is "1.0"),
    and a null for a key the tree lacks leaves it absent: it is the default already."""
    for text in overrides:
        path, value = parse_override(text)
        if isinstance(value, int | float) and not isinstance(value, bool) and _is_string_field(path):
            value = text.split("=", 1)[1].strip()
        _set_key(tree, path, value, f"override {_shown(text)}")
    return tree


def _set_key(tree: dict[str, Any], path: list[str], value: Any, what: str) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            if value is None:
                return  # nothing to reset inside a section the tree lacks
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{what}: {'.'.join(path[: depth + 1])} is not a section")
        node = child
    if value is not None or path[-1] in node:
        node[path[-1]] = value


def _section_model(path: list[str]) -> type[BaseModel] | None:
    """The model of the section at `path` (["strategy", "head"] → HeadConfig), None where it is not a section."""
    model: type[BaseModel] | None = Recipe
    for part in path:
        field = model.model_fields.get(part) if model else None
        model = next((kind for kind in _types_in(field.annotation) if _is_model(kind)), None) if field else None
    return model


def _is_string_field(path: list[str]) -> bool:
    model = _section_model(path[:-1])
    field = model.model_fields.get(path[-1]) if model else None
    return field is not None and field.annotation in (str, str | None)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


# -- errors -----------------------------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    """`repr(value)`, cut to MAX_SHOWN_CHARS: an error never prints a whole large value."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 4] + " ..."


def _escaped(text: str, ascii_only: bool = True) -> str:
    """Each invisible character (and with `ascii_only` each non-ASCII one) as its escape: `epo\\u200bchs`."""
    return "".join(c if c.isprintable() and (c.isascii() or not ascii_only) else ascii(c)[1:-1] for c in text)


def _shown_key(key: str) -> tuple[str, str]:
    """The key as typed with each non-ASCII or invisible character escaped, cut to MAX_SHOWN_CHARS, and a note naming
    those characters (a Cyrillic 'е' looks like 'e' in the file and in a plain message)."""
    escaped = _escaped(key)
    if len(escaped) > MAX_SHOWN_CHARS:
        escaped = escaped[: MAX_SHOWN_CHARS - 4] + " ..."
    odd = sorted({c for c in key if not (c.isascii() and c.isprintable())}, key=key.index)
    named = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" for c in odd[:3])
    return escaped, f" (it contains a non-ASCII or invisible character: {named})" if odd else ""


def _unknown_key(loc: list[str], source: str) -> str:
    key, note = _shown_key(".".join(loc))
    model = _section_model(loc[:-1])
    close = difflib.get_close_matches(loc[-1], list(model.model_fields) if model else [], n=1, cutoff=0.6)
    suggestion = f": did you mean `{'.'.join([*loc[:-1], close[0]])}`?" if close else ""
    return (
        f"{source}: unknown key '{key}'{note}; check its spelling{suggestion} (see `hf-transfer schema` for every key)"
    )


def _format_error(error: dict[str, Any], source: str) -> str:
    loc = [str(part) for part in error["loc"]]
    if error["type"] == "extra_forbidden":
        return _unknown_key(loc, source)
    key = _shown_key(".".join(loc))[0] or "(top level)"
    if error["type"] == "missing":
        return f"{source}: missing required key {key!r}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and not loc:
        # A rule between keys of two sections: the message names the keys; the whole recipe would only bury it.
        return f"{source}: {message}"
    allowed = error.get("ctx", {}).get("expected")
    hint = f"; allowed: {allowed}" if allowed else ""
    return f"{source}: {key} = {_shown(error.get('input'))} is invalid: {message}{hint}"


def recipe_from_dict(tree: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a plain dict into a Recipe; errors name the source, the key path, the value and what is allowed."""
    try:
        return Recipe.model_validate(tree)
    except ValidationError as error:
        lines = [_format_error(e, source) for e in error.errors(include_url=False)]
        if len(lines) > MAX_ERROR_LINES:
            lines[MAX_ERROR_LINES - 1 :] = [f"{source}: ... and {len(lines) - MAX_ERROR_LINES + 1} more errors"]
        raise RecipeError("\n".join(lines)) from None


def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), output_dir: str | None = None
) -> Recipe:
    """Read a recipe YAML, apply dotted overrides and `--output-dir`, validate once."""
    tree = apply_overrides(read_recipe_tree(path), overrides)
    if output_dir is not None:
        _set_key(tree, ["training", "output_dir"], output_dir, f"{path}: --output-dir")
    # Invisible characters typed in an override stay visible in the message.
    source = str(path) + (f" (with overrides {_escaped(' '.join(overrides), ascii_only=False)})" if overrides else "")
    recipe = recipe_from_dict(tree, source)
    text = Path(path).read_text(encoding="utf-8")
    recipe._as_written = {"file": Path(path).name, "text": text, "overrides": list(overrides)}
    return recipe


def as_written(recipe: Recipe) -> dict[str, Any] | None:
    """The recipe as the user wrote it (file name, text, overrides), when it was loaded from a file."""
    return copy.deepcopy(recipe._as_written)


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of a recipe, for editor validation (`# yaml-language-server: $schema=...`)."""
    return Recipe.model_json_schema()
