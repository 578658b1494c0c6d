"""Recipes: typed models of the YAML file, dotted command-line overrides, validation with errors naming the key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError

TaskName = Literal["text-classification", "multi-label-classification", "text-regression", "image-classification"]
StrategyName = Literal["head", "partial", "lora", "full"]
SchedulerName = Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]
PoolingName = Literal["cls", "mean", "pooler"]
HeadType = Literal["linear", "mlp", "lbfgs"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    threshold: float = Field(default=0.5, gt=0, lt=1)
    """Multi-label decision threshold on the sigmoid."""
    image_extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    """`image-classification`: file types read from image folders; any other file is skipped and counted. GIF is
    left out on purpose: in photo datasets a .gif is usually a placeholder ("image not found") or an animation."""
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)

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
                raise ValueError(f"unknown split {unknown[0]!r}; allowed: train, validation, test")
            if "train" not in files:
                raise ValueError("a 'train' file is required")
        return files


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
    r: int = Field(default=16, gt=0)
    alpha: int | None = Field(default=None, gt=0)
    """LoRA scaling numerator; default 2 × r."""
    dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = None
    """LoRA targets; default per architecture (all linear layers of the encoder)."""
    unfreeze_every: int | None = Field(default=None, gt=0)
    """Gradual unfreezing (`partial`, `lora`, `full`): the head trains from the first epoch, then one more layer,
    top down, every N epochs; what sits below the layers (embeddings) comes last."""
    warmup_head_epochs: int | None = Field(default=None, gt=0)
    """LP-FT (`partial`, `lora`, `full` with `pooling: mean | cls`): train the head for N epochs on frozen pooled
    features first, then fine-tune with the chosen strategy from that head."""
    warmup_head_lr: float = Field(default=1e-3, gt=0)
    """Learning rate of the head warm-up (`warmup_head_epochs`)."""
    head: HeadConfig = Field(default_factory=HeadConfig)
    """The classifier on top of the (pooled) backbone: linear, mlp or lbfgs."""
    feature_cache: str | bool | None = None
    """`head` on pooled features: where features are cached on disk. A folder, `false` for no cache; default
    $HF_TRANSFER_FEATURE_CACHE, else <HF_HOME>/hf_transfer/features."""

    @model_validator(mode="after")
    def _layers_only_for_partial(self) -> StrategyConfig:
        if self.layers is not None and self.kind != "partial":
            raise ValueError(f"'layers' applies to kind 'partial' only, not {self.kind!r}")
        for name in ("unfreeze_every", "warmup_head_epochs"):
            if getattr(self, name) is not None and self.kind == "head":
                raise ValueError(f"'strategy.{name}' applies to kinds 'partial', 'lora' and 'full', not 'head'")
        # Compared with the default, not "was it set": a saved recipe.yaml spells out every default.
        lr_default = StrategyConfig.model_fields["warmup_head_lr"].default
        if self.warmup_head_lr != lr_default and not self.warmup_head_epochs:
            raise ValueError("'strategy.warmup_head_lr' is used only with 'strategy.warmup_head_epochs'")
        if self.head.type == "lbfgs" and self.kind != "head":
            raise ValueError(f"'strategy.head.type' 'lbfgs' fits frozen features: kind 'head' only, not {self.kind!r}")
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
    """Default: accuracy (single-label), f1_macro (multi-label), mse (regression)."""
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
    """Single-label classification: weight each class's loss. `balanced` = rows / (classes × rows of the class) on
    the train split; or {label name: weight}, unnamed labels weighing 1."""
    balanced_sampler: bool = False
    """Single-label classification: draw training rows with every class equally likely (with replacement, as many
    rows per epoch as train holds), instead of grouping by length."""

    @field_validator("class_weights", mode="before")
    @classmethod
    def _known_weights(cls, value: Any) -> Any:
        if value is None:
            return "none"
        if isinstance(value, dict):
            bad = [name for name, weight in value.items() if not isinstance(weight, int | float) or not weight > 0]
            if bad:
                raise ValueError(f"the weight of {bad[0]!r} must be a number > 0")
        elif value not in ("balanced", "none"):
            raise ValueError("use 'balanced', 'none' or a mapping {label name: weight}")
        return value


class HubConfig(_Section):
    repo_id: str
    space: str | None = None
    private: bool = False


class Recipe(_Section):
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
    }.get(task, "mse")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.lr=3e-5` → (["training", "lr"], 3e-05). Values parse as YAML, and `3e-5` is a number."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise RecipeError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise RecipeError(f"override {text!r}: value is not valid YAML ({error})") from None
    # YAML 1.1 reads "3e-5" as a string (no dot before the exponent); users mean the number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return path, value


def _apply_override(tree: dict[str, Any], path: list[str], value: Any, original: str) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"override {original!r}: {'.'.join(path[: depth + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _string_fields_keep_text(tree: dict[str, Any], overrides: list[tuple[list[str], Any, str]]) -> None:
    """A string field keeps the text the user typed (`data.config=1.0` stays "1.0", not 1.0)."""
    for path, value, raw in overrides:
        if isinstance(value, str) or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        model: type[BaseModel] | None = Recipe
        for part in path[:-1]:
            field = model.model_fields.get(part) if model else None
            annotation = field.annotation if field else None
            model = next((a for a in getattr(annotation, "__args__", (annotation,)) if _is_model(a)), None)
        field = model.model_fields.get(path[-1]) if model else None
        if field is not None and field.annotation in (str, str | None):
            _apply_override(tree, path, raw.split("=", 1)[1].strip(), raw)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _format_error(error: dict[str, Any], source: str) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return f"{source}: unknown key {key!r}; check its spelling (see `hf-transfer schema` for every key)"
    if kind == "missing":
        return f"{source}: missing required key {key!r}"
    message = error["msg"]
    allowed = error.get("ctx", {}).get("expected")
    hint = f"; allowed: {allowed}" if allowed else ""
    return f"{source}: {key} = {value!r} is invalid: {message}{hint}"


def recipe_from_dict(tree: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a plain dict into a Recipe; errors name the source, the key path, the value and what is allowed."""
    try:
        return Recipe.model_validate(tree)
    except ValidationError as error:
        lines = [_format_error(e, source) for e in error.errors(include_url=False)]
        raise RecipeError("\n".join(lines)) from None


def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), output_dir: str | None = None
) -> Recipe:
    """Read a recipe YAML, apply dotted overrides and `--output-dir`, validate once."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys (model, task, data, strategy, training)")
    parsed = []
    for text in overrides:
        key_path, value = parse_override(text)
        _apply_override(tree, key_path, value, text)
        parsed.append((key_path, value, text))
    _string_fields_keep_text(tree, parsed)
    if output_dir is not None:
        tree.setdefault("training", {})
        if not isinstance(tree["training"], dict):
            raise RecipeError(f"{path}: 'training' must be a section")
        tree["training"]["output_dir"] = output_dir
    source = str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return recipe_from_dict(tree, source)


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of a recipe, for editor validation (`# yaml-language-server: $schema=...`)."""
    return Recipe.model_json_schema()
