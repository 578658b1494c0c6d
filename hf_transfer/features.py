"""Frozen-backbone features: run the backbone once, then train the head on the pooled features instead of the inputs;
the pooled text model's features, the on-disk feature cache, and the heads fitted on features (each task's
`FeatureExtractor` says how its features are computed and keyed)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast
from datasets import Dataset, DatasetDict
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding
from transformers.modeling_outputs import SequenceClassifierOutput

from .errors import StrategyError
from .fileio import file_sha256
from .pooled import is_pooled
from .sampling import weighted_loss

if TYPE_CHECKING:
    from .recipe import HeadConfig, Recipe
    from .sources import Resolved
    from .tasks.spec import FeatureExtractor

logger = logging.getLogger(__name__)

FEATURE_CACHE_ENV = "HF_TRANSFER_FEATURE_CACHE"
CACHE_FORMAT = 1
"""Bumped whenever what a cached file holds changes, so older files stop matching any key."""
FEATURE_LAYER = "last_hidden_state"
"""The backbone output the head pools; part of the key so another layer can never be served from this one."""


def pooled_feature_head(model: nn.Module) -> nn.Module | None:
    """The pooled model's own head on cached features, when everything below its classifier is frozen (and so
    deterministic): then one forward pass per example replaces one per example per epoch. None otherwise."""
    if not is_pooled(model):
        return None
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    return FeatureHead(model) if trainable == {"classifier"} else None


def pooled_warmup_head(model: nn.Module) -> nn.Module:
    """The pooled model's own head on cached features, whatever else trains (LP-FT's warm-up)."""
    if not is_pooled(model):
        raise StrategyError(
            "strategy.warmup_head_epochs trains the head on pooled features: set strategy.pooling to 'mean' or 'cls'"
        )
    return FeatureHead(model)


def classifier_linear(classifier: nn.Module) -> nn.Linear:
    """The one linear layer of a classifier module (itself, for a plain `nn.Linear`)."""
    if isinstance(classifier, nn.Linear):
        return classifier
    return next(m for m in classifier.modules() if isinstance(m, nn.Linear))


class FeatureHead(nn.Module):
    """The pooled model's own dropout + classifier applied to cached features; its loss matches the full model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.config = model.config
        self.dropout = model.dropout
        self.classifier = model.classifier  # the same module: training it trains the full model's head
        self.loss_for = model.loss_for  # a bound method, not a submodule: the backbone stays out of this module

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.classifier(self.dropout(features))
        return SequenceClassifierOutput(loss=None if labels is None else self.loss_for(logits, labels), logits=logits)


def _length_sorted_loader(
    accelerator: Accelerator, dataset: Dataset, tokenizer: Any, batch_size: int
) -> tuple[DataLoader, list[int]]:
    """Batches of similar length (little padding), shared across processes, and the order that sorts them."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i])
    not_inputs = [c for c in ("labels", "label", "length") if c in dataset.column_names]
    ordered = dataset.select(order).remove_columns(not_inputs)
    # Its own generator: iterating a loader draws a seed, and from the global RNG that would shift every dropout
    # mask after it, so a run whose features came from the cache would train differently from one that computed them.
    loader = DataLoader(
        ordered,
        batch_size=batch_size,
        collate_fn=DataCollatorWithPadding(tokenizer),
        shuffle=False,
        generator=torch.Generator(),
    )
    return accelerator.prepare(loader), order


def _in_dataset_order(chunks: list[torch.Tensor], order: list[int]) -> torch.Tensor:
    features = torch.cat(chunks).float()
    restored = torch.empty_like(features)
    restored[torch.tensor(order)] = features
    return restored


@torch.inference_mode()
def extract_features(
    accelerator: Accelerator, model: nn.Module, dataset: Dataset, tokenizer: Any, batch_size: int, desc: str
) -> torch.Tensor:
    """Pooled features for every row, in dataset order. Batches are sorted by length (little padding) and shared
    across processes; `gather_for_metrics` returns each row exactly once."""
    loader, order = _length_sorted_loader(accelerator, dataset, tokenizer, batch_size)
    backbone = getattr(model, model.base_model_prefix)
    pooled_model = accelerator.unwrap_model(model)
    model.eval()
    chunks = []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_main_process):
        hidden = backbone(**batch).last_hidden_state
        chunks.append(accelerator.gather_for_metrics(pooled_model.pool(hidden, batch.get("attention_mask"))).cpu())
    return _in_dataset_order(chunks, order)


def hidden_state_layer(index: int) -> str:
    """The cache's `layer` key of one hidden state: 0 is the embeddings' output, i the output of the i-th layer."""
    return f"hidden_states[{index}]"


@torch.inference_mode()
def extract_layer_features(
    accelerator: Accelerator, model: nn.Module, dataset: Dataset, tokenizer: Any, batch_size: int, desc: str
) -> torch.Tensor:
    """Pooled features of every hidden state, `[L + 1, rows, hidden]` in dataset order: index 0 is the embeddings'
    output, index i the output of the i-th layer (L = the top one). Pooled with the model's own `pool`, in the same
    length-sorted, process-shared batches as `extract_features`."""
    loader, order = _length_sorted_loader(accelerator, dataset, tokenizer, batch_size)
    backbone = getattr(model, model.base_model_prefix)
    pooled_model = accelerator.unwrap_model(model)
    model.eval()
    chunks = []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_main_process):
        states = backbone(**batch, output_hidden_states=True).hidden_states
        mask = batch.get("attention_mask")
        pooled = torch.stack([pooled_model.pool(hidden, mask) for hidden in states], dim=1)  # rows first: gatherable
        chunks.append(accelerator.gather_for_metrics(pooled).cpu())
    return _in_dataset_order(chunks, order).transpose(0, 1).contiguous()


def feature_cache_root(setting: str | bool | None) -> Path | None:
    """Where features are cached: `strategy.feature_cache` (a folder, or false for none), else the environment
    variable $HF_TRANSFER_FEATURE_CACHE (the same), else <HF_HOME>/hf_transfer/features."""
    if setting is None or setting is True:
        env = os.environ.get(FEATURE_CACHE_ENV, "").strip()
        if env.lower() in {"0", "false", "no", "off", "none"}:
            return None
        if env:
            return Path(env).expanduser()
        from huggingface_hub import constants

        return Path(constants.HF_HOME) / "hf_transfer" / "features"
    return None if setting is False else Path(setting).expanduser()


def tokenizer_digest(tokenizer: Any) -> str:
    """What decides the token ids: vocabulary, normalizer, pre-tokenizer, special tokens, truncation side. The
    truncation/padding state the backend keeps from its last call is left out: it changes without changing the
    tokenizer (max_length is a key of its own)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        tree = json.loads(backend.to_str())
        tree.pop("truncation", None)
        tree.pop("padding", None)
    else:
        tree = {"vocab": tokenizer.get_vocab()}
    tree["class"] = type(tokenizer).__name__
    tree["truncation_side"] = getattr(tokenizer, "truncation_side", "right")
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


def model_digest(model_source: Resolved) -> dict[str, Any]:
    """The weights' identity: the Hub commit when one served them, else the hashes of the weight and config files
    (a local folder may be retrained in place under the same name)."""
    record = {k: v for k, v in model_source.record.items() if k != "files"}
    if record.get("revision"):
        return record
    folder = Path(model_source.location)
    files = dict(model_source.record.get("files") or {})
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + [folder / "config.json"]:
        if path.is_file() and path.name not in files:
            files[path.name] = file_sha256(path)
    return {**record, "files": files}


def text_digest(split: Dataset) -> str:
    """The split's texts, in order. Labels are left out: features do not depend on them, so relabelled data (or
    another label mapping) reuses the features and takes its labels from the data."""
    columns = [c for c in ("text", "text_pair") if c in split.column_names]
    digest = hashlib.sha256(json.dumps(columns).encode())
    for column in columns:
        digest.update(json.dumps(list(split[column])).encode())
    return digest.hexdigest()


class FeatureCache:
    """Per-split pooled features on disk: `<root>/<model>/<split>-<key hash>.safetensors` and a JSON sidecar with
    the full key and the file's sha256. The sidecar is written last, so it vouches for a complete file."""

    def __init__(self, root: Path, key: dict[str, Any], texts: dict[str, str]):
        self.root = root
        self.key = key
        self.texts = texts

    @classmethod
    def for_run(
        cls,
        recipe: Recipe,
        model_source: Resolved,
        preprocessor: Any,
        pooling: str,
        splits: DatasetDict,
        model: nn.Module,
        extractor: FeatureExtractor,
        layer: str = FEATURE_LAYER,
    ) -> FeatureCache | None:
        """The cache for this run's features, or None when `strategy.feature_cache` (or the environment) is off.
        `layer` names the backbone output that is pooled (`hidden_state_layer(i)` for the i-th hidden state); the
        task's extractor adds what else its features depend on (tokenizer and length, or image processor)."""
        root = feature_cache_root(recipe.strategy.feature_cache)
        if root is None:
            return None
        key = {
            "format": CACHE_FORMAT,
            "model": model_source.hub_id,
            "model_source": model_digest(model_source),
            "layer": layer,
            "pooling": pooling,
            "dtype": str(next(model.parameters()).dtype),
            **extractor.cache_key(recipe, preprocessor, model),
        }
        return cls(root, key, {name: extractor.content_digest(split) for name, split in splits.items()})

    def split_key(self, split: str) -> dict[str, Any]:
        return {**self.key, "split": split, "texts": self.texts[split]}

    def paths(self, split: str) -> tuple[Path, Path]:
        digest = hashlib.sha256(json.dumps(self.split_key(split), sort_keys=True).encode()).hexdigest()[:32]
        folder = self.root / self.key["model"].replace("/", "--")
        stem = f"{split}-{digest}"
        return folder / f"{stem}.safetensors", folder / f"{stem}.json"

    def load(self, split: str, rows: int) -> torch.Tensor | None:
        """The cached features, or None on a miss; a file that is truncated, altered or mismatched counts as a
        miss (and is rebuilt by the caller), never as features."""
        path, sidecar = self.paths(split)
        if not sidecar.is_file():
            logger.info("feature cache miss: split %r (%s)", split, path)
            return None
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
            if record.get("key") != self.split_key(split):
                problem = "its key differs"
            else:
                blob = path.read_bytes()
                features = None
                if hashlib.sha256(blob).hexdigest() != record.get("sha256"):
                    problem = "checksum mismatch"
                else:
                    features = safetensors.torch.load(blob)["features"]
                    problem = "" if features.ndim == 2 and len(features) == rows else f"{len(features)} rows"
                if features is not None and not problem:
                    logger.info("feature cache hit: split %r, %d x %d from %s", split, *features.shape, path)
                    return features
        except (OSError, ValueError, KeyError, safetensors.SafetensorError) as error:
            problem = f"{type(error).__name__}: {error}"
        logger.warning("feature cache: %s is unusable (%s); rebuilding it", path, problem)
        return None

    def store(self, split: str, features: torch.Tensor) -> None:
        """Write atomically (temporary file, then rename); a cache that cannot be written is only a warning."""
        path, sidecar = self.paths(split)
        blob = safetensors.torch.save({"features": features.contiguous()})
        record = {"key": self.split_key(split), "sha256": hashlib.sha256(blob).hexdigest()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for target, data in ((path, blob), (sidecar, json.dumps(record, indent=2).encode())):
                temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                temporary.write_bytes(data)
                os.replace(temporary, target)
        except OSError as error:
            logger.warning("feature cache: cannot write %s (%s); continuing without caching", path, error)
            return
        logger.info("feature cache: stored split %r, %d x %d in %s", split, *features.shape, path)


def _cached_on_every_rank(accelerator: Accelerator, cache: FeatureCache, split: str, rows: int) -> torch.Tensor | None:
    """The main process vets the file first; the others read it only on its word, and all agree on the outcome."""
    features = cache.load(split, rows) if accelerator.is_main_process else None
    if accelerator.num_processes == 1:
        return features
    flag = torch.tensor([int(features is not None)], device=accelerator.device)
    if not int(broadcast(flag, from_process=0).item()):
        return None
    if not accelerator.is_main_process:
        features = cache.load(split, rows)
    loaded = accelerator.gather(torch.tensor([int(features is not None)], device=accelerator.device))
    return features if bool(loaded.all()) else None


def feature_datasets(
    accelerator: Accelerator,
    model: nn.Module,
    encoded: DatasetDict,
    preprocessor: Any,
    batch_size: int,
    extract: Any,
    cache: FeatureCache | None = None,
    *,
    vectors: Any = None,
    head_rows: Any = None,
) -> DatasetDict | dict[str, Any]:
    """Every split as `features` + `labels`, computed once with the frozen backbone (`extract`: the task's
    FeatureExtractor.extract), or read from the cache. `vectors` and `head_rows` are the extractor's hooks for
    features that are not one vector per row (one per token)."""
    splits = {}
    for name, split in encoded.items():
        count = vectors(split) if vectors else len(split)
        features = _cached_on_every_rank(accelerator, cache, name, count) if cache else None
        if features is None:
            features = extract(accelerator, model, split, preprocessor, batch_size, f"features: {name}")
            logger.info("computed %d feature vectors for split %r", len(features), name)
            if cache is not None and accelerator.is_main_process:
                cache.store(name, features)
        if head_rows is not None:
            splits[name] = head_rows(features, split)
            continue
        labels = split.with_format(None)["label"]  # image splits transform lazily: the labels without the images
        splits[name] = Dataset.from_dict({"features": features.numpy(), "labels": list(labels)})
    accelerator.wait_for_everyone()  # only the main process writes the cache; the others wait for it
    return splits if head_rows is not None else DatasetDict(splits).with_format("torch")


CV_SCORING = {
    "accuracy": "accuracy",
    "f1_macro": "f1_macro",
    "f1_micro": "f1_micro",
    "precision_macro": "precision_macro",
    "recall_macro": "recall_macro",
    "mcc": "matthews_corrcoef",
}
"""The run's metric → scikit-learn's scorer of the same quantity, for the cross-validation that chooses C."""
FEW_ROWS_FOR_CV = 50
"""With fewer train rows and no `strategy.head.C`, the L-BFGS head takes C = 1 instead of cross-validating a grid."""


def fit_logistic_head(
    accelerator: Accelerator,
    classifier: nn.Module,
    train_split: Dataset,
    head: HeadConfig,
    class_weight: dict[int, float] | None = None,
    metric: str = "accuracy",
) -> dict[str, float]:
    """Multinomial logistic regression on the train features with L-BFGS (scikit-learn), C chosen by stratified
    cross-validation on train only, scored by the run's own `metric` (the one that picks the best epoch elsewhere;
    log loss when scikit-learn has no counterpart), and written into the model's own linear classifier. Dropout
    before it is the identity in eval mode, so the saved model computes exactly the fitted probabilities."""
    import warnings

    import numpy as np
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    classifier = classifier_linear(classifier)
    rows = train_split[:]
    features, labels = rows["features"].double().numpy(), rows["labels"].numpy()
    classes, counts = np.unique(labels, return_counts=True)
    missing = sorted(set(range(classifier.out_features)) - set(classes.tolist()))
    if missing:
        raise StrategyError(f"strategy.head.type 'lbfgs': label ids {missing} have no training rows to fit")
    # One BLAS thread: beside torch's OpenMP workers, OpenBLAS threads fight for the same cores (measured on 2 busy
    # cores: 180 s for a 5-fold search that takes 3.6 s single-threaded).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # scikit-learn's defaults shift between releases (penalty, l1_ratios, scoring); the choices here are explicit.
        warnings.simplefilter("ignore", FutureWarning)
        if isinstance(head.C, float):
            model = LogisticRegression(C=head.C, max_iter=head.max_iter, class_weight=class_weight)
            model.fit(features, labels)
            chosen, how = head.C, "given"
        elif head.C is None and len(labels) < FEW_ROWS_FOR_CV:
            # Folds of a handful of rows tie across most of the grid and the first, smallest C (a constant predictor)
            # wins: measured on SST-2 at 8 rows per class, C = 1e-4 and 0.491 test accuracy. scikit-learn's default
            # C = 1 (SetFit's head too) scores better there (RESULTS.md, "Few examples per class").
            model = LogisticRegression(C=1.0, max_iter=head.max_iter, class_weight=class_weight)
            model.fit(features, labels)
            chosen, how = 1.0, f"scikit-learn's default: {len(labels)} train rows are too few to cross-validate C"
        else:
            folds = min(head.cv_folds, int(counts.min()))
            if folds < 2:
                raise StrategyError("strategy.head.C: a class has a single training row; give one C, not a grid")
            model = LogisticRegressionCV(
                Cs=head.C or 10,
                cv=StratifiedKFold(folds),
                scoring=CV_SCORING.get(metric, "neg_log_loss"),
                max_iter=head.max_iter,
                class_weight=class_weight,
            )
            model.fit(features, labels)
            chosen, how = float(np.ravel(model.C_)[0]), f"{folds}-fold cross-validation on train"
    weight = torch.as_tensor(model.coef_, dtype=torch.float64)
    bias = torch.as_tensor(model.intercept_, dtype=torch.float64)
    if len(classes) == 2:
        # scikit-learn keeps one row for two classes: P(1) = sigmoid(z) = softmax([0, z])[1], exactly.
        weight, bias = torch.cat([torch.zeros_like(weight), weight]), torch.cat([torch.zeros_like(bias), bias])
    with torch.no_grad():
        classifier.weight.copy_(weight.to(classifier.weight))
        classifier.bias.copy_(bias.to(classifier.bias))
        # Every rank fitted the same data; rank 0's fit is made the one fit, bit for bit.
        for parameter in classifier.parameters():
            parameter.copy_(broadcast(parameter.detach().clone(), from_process=0))
    logger.info("lbfgs head: C = %.4g (%s)", chosen, how)
    return {"C": chosen}


def collate_features(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"features": torch.stack([r["features"] for r in rows]), "labels": torch.stack([r["labels"] for r in rows])}


def warm_up_head(
    accelerator: Accelerator,
    model: torch.nn.Module,
    train_split: Any,
    preprocessor: Any,
    batch_size: int,
    cache: FeatureCache | None,
    recipe: Recipe,
    class_weight: torch.Tensor | None,
    extractor: FeatureExtractor,
) -> None:
    """LP-FT: train the head alone on the frozen backbone's features (pooled, or per token: the task's `extractor`
    says which; computed once, or read from the feature cache), so fine-tuning starts from a head that fits instead
    of a random one whose gradients would distort the backbone."""
    s, t = recipe.strategy, recipe.training
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: B = 0, the base model
    base.to(accelerator.device)
    head = extractor.warmup_head(base)
    splits = DatasetDict({"train": train_split})
    features = feature_datasets(
        accelerator,
        base,
        splits,
        preprocessor,
        batch_size,
        extractor.extract,
        cache,
        vectors=extractor.vectors,
        head_rows=extractor.head_rows,
    )
    rows = features["train"]
    batch_of = _batches_of(rows, extractor.collate, accelerator.device)
    optimizer = torch.optim.AdamW(
        [p for p in head.parameters() if p.requires_grad], lr=s.warmup_head_lr, weight_decay=t.weight_decay
    )
    generator = torch.Generator().manual_seed(t.seed)
    head.train()
    for _ in range(s.warmup_head_epochs):
        for indices in torch.randperm(len(rows), generator=generator).split(t.batch_size):
            batch = batch_of(indices)
            output = head(**batch)
            loss = output.loss if class_weight is None else weighted_loss(output.logits, batch["labels"], class_weight)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    with torch.no_grad():
        # Every rank ran the same steps on the same features; rank 0's head becomes everyone's, bit for bit.
        for parameter in head.parameters():
            parameter.copy_(broadcast(parameter.detach().clone(), from_process=0))
    logger.info("head warm-up: %d epochs on frozen features, last loss %.4f", s.warmup_head_epochs, loss.item())


def _batches_of(rows: Any, collate: Any, device: torch.device) -> Any:
    """indices -> the head's batch of those rows, on `device`. One vector per row: the split is held as tensors and
    indexed; rows of several vectors (a sentence's tokens) are batched by the extractor's `collate`, as in the loop."""
    if collate is None:
        whole = {name: column.to(device) for name, column in rows[:].items()}
        return lambda indices: {name: column[indices] for name, column in whole.items()}
    return lambda indices: {k: v.to(device) for k, v in collate([rows[i] for i in indices.tolist()]).items()}
