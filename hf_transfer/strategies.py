"""STRATEGIES: how much of the pretrained network trains; each is a `model → model` transform before the loop."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .anatomy import HEAD_MODULE_NAMES, encoder_layers, head_module_names, parameter_depths
from .contrastive import (
    ClassBlockSampler,
    ContrastiveModel,
    apply_contrastive,
    check_contrastive,
    epoch_rows,
    fit_head_on_tuned_features,
)
from .errors import StrategyError, TrainingError
from .features import FeatureCache, collate_features, feature_datasets, fit_logistic_head, warm_up_head
from .recipe import Recipe, TrainingConfig
from .tasks import TASKS, Encoded, Task

__all__ = ["HEAD_MODULE_NAMES", "STRATEGIES", "apply_strategy", "check_strategy", "count_parameters"]

logger = logging.getLogger(__name__)


DEFAULT_PARTIAL_LAYERS = 3
DEFAULT_LORA_R = 16


def unfreeze_schedule(model: nn.Module, recipe: Recipe) -> dict[str, int] | None:
    """`strategy.unfreeze_every` N: the epoch from which each trainable parameter trains — the head from 0, the top
    layer from N, the next one down from 2N, ... None when every parameter trains from the start."""
    every = recipe.strategy.unfreeze_every
    if not every:
        return None
    depths = parameter_depths(model)
    return {name: depths[name] * every for name, p in model.named_parameters() if p.requires_grad}


def _freeze_all_but(model: nn.Module, trainable_prefixes: list[str]) -> None:
    for name, parameter in model.named_parameters():
        parameter.requires_grad = any(name == p or name.startswith(p + ".") for p in trainable_prefixes)


def apply_head(model: PreTrainedModel, recipe: Recipe, task: Task) -> PreTrainedModel:
    """Feature extraction: the backbone is frozen, only the head trains."""
    _freeze_all_but(model, head_module_names(model))
    return model


def apply_partial(model: PreTrainedModel, recipe: Recipe, task: Task) -> PreTrainedModel:
    """Unlock the last N layers of the backbone, what sits above them (ViT's final norm, EfficientNet's conv_head) and
    the head; N = strategy.layers. Depths as `parameter_depths` counts them."""
    count = recipe.strategy.layers or DEFAULT_PARTIAL_LAYERS
    _, stack = encoder_layers(model)
    if count > len(stack):
        raise StrategyError(f"strategy.layers = {count} but {recipe.model!r} has only {len(stack)} layers")
    depths = parameter_depths(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = depths[name] <= count
    return model


def apply_lora(model: PreTrainedModel, recipe: Recipe, task: Task) -> nn.Module:
    """Low-rank adapters (PEFT) on the backbone's linear layers; the head trains in full (`modules_to_save`)."""
    from peft import LoraConfig, get_peft_model

    strategy = recipe.strategy
    targets = strategy.target_modules or "all-linear"
    heads = sorted({name.rsplit(".", 1)[-1] for name in head_module_names(model)})
    if isinstance(targets, list):
        adaptable = {n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
        unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in adaptable)]
        if unmatched:
            examples = sorted({n.rsplit(".", 1)[-1] for n in adaptable})
            raise StrategyError(
                f"strategy.target_modules {unmatched} match no linear or convolution layer of {recipe.model!r}; "
                f"their names: {examples}"
            )
    if targets == "all-linear" and not _linear_outside_head(model):
        # A convolutional backbone (ResNet, EfficientNet) has no linear layer but its classifier: adapt its 1×1
        # convolutions, which carry most of its weights (PEFT's LoRA handles Conv2d).
        targets = _pointwise_convolutions(model)  # full names: a 3×3 convolution may share a 1×1 one's leaf name
        if not targets:
            raise StrategyError(f"{recipe.model!r} has no linear or 1×1 convolution layers for LoRA")
    config = LoraConfig(
        # The sequence-classification wrapper feeds input_ids; other models take their inputs as they come.
        task_type=task.peft_task_type,
        r=strategy.r or DEFAULT_LORA_R,
        lora_alpha=strategy.alpha or 2 * (strategy.r or DEFAULT_LORA_R),
        lora_dropout=strategy.dropout,
        target_modules=targets,
        modules_to_save=heads,
    )
    return get_peft_model(model, config)


def _linear_outside_head(model: nn.Module) -> bool:
    heads = head_module_names(model)
    return any(
        isinstance(m, nn.Linear) and not any(n == h or n.startswith(h + ".") for h in heads)
        for n, m in model.named_modules()
    )


def _pointwise_convolutions(model: nn.Module) -> list[str]:
    heads = head_module_names(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and not any(name == h or name.startswith(h + ".") for h in heads)
    ]


def apply_full(model: PreTrainedModel, recipe: Recipe, task: Task) -> PreTrainedModel:
    """Everything trains."""
    for parameter in model.parameters():
        parameter.requires_grad = True
    return model


STRATEGIES: dict[str, Callable[[PreTrainedModel, Recipe, Task], nn.Module]] = {
    "head": apply_head,
    "partial": apply_partial,
    "lora": apply_lora,
    "full": apply_full,
    "contrastive": apply_contrastive,
}


def check_strategy(model: PreTrainedModel, recipe: Recipe, task: Task) -> None:
    """Every rule that depends on the task or the model, checked once before anything trains (rules between recipe
    keys alone are the recipe's validators)."""
    s, t = recipe.strategy, recipe.training
    if s.head.type == "lbfgs" and not task.single_label:
        raise StrategyError(
            f"strategy.head.type 'lbfgs' fits single-label classification, not task {task.name!r}; "
            "use 'linear' or 'mlp'"
        )
    if t.class_weights != "none" and not task.per_class_loss:
        raise TrainingError(
            f"training.class_weights applies to single-label and token classification, not task {task.name!r}: it "
            "weighs a cross-entropy over classes"
        )
    if t.balanced_sampler and not task.single_label:
        instead = "; weight the loss by class with training.class_weights instead" if task.per_class_loss else ""
        raise TrainingError(
            f"training.balanced_sampler applies to single-label classification, not task {task.name!r}: it draws "
            f"each row by its one class, and a row of this task has none{instead}"
        )
    if s.warmup_head_epochs:
        warmup_head = task.features.warmup_head
        if warmup_head is None:
            raise StrategyError(
                task.warmup_refusal or f"strategy.warmup_head_epochs (LP-FT) does not apply to task {task.name!r}"
            )
        warmup_head(model)  # refuses, naming the key, a model whose head cannot train on cached features
    if s.kind in STRATEGY_RULES:
        STRATEGY_RULES[s.kind](model, recipe, task)


def apply_strategy(model: PreTrainedModel, recipe: Recipe) -> nn.Module:
    """The strategy's model transform, after its rules: the model with exactly the chosen parameters trainable."""
    task = TASKS[recipe.task]
    check_strategy(model, recipe, task)
    model = STRATEGIES[recipe.strategy.kind](model, recipe, task)
    trainable, total = count_parameters(model)
    logger.info("strategy %s: %s of %s parameters trainable", recipe.strategy.kind, f"{trainable:,}", f"{total:,}")
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts. Modules PEFT saves whole count once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if "original_module" not in n)
    return trainable, total


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """BatchNorm layers whose parameters are frozen keep their running statistics (call after `model.train()`)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()


def optimizer_groups(model: torch.nn.Module, t: TrainingConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups of the trainable parameters: biases and norms without weight decay, and with
    `training.layer_lr_decay` one learning rate per depth (strategies.parameter_depths): lr × decay^(depth − 1), so
    the head and the top layer train at lr and the embeddings lowest."""
    depths = parameter_depths(model) if t.layer_lr_decay else {}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth, decayed = depths.get(name, 0), parameter.ndim >= 2  # biases and norms are not decayed
        lr = t.lr * (t.layer_lr_decay or 1.0) ** max(depth - 1, 0)
        group = groups.setdefault((depth, not decayed), {"params": [], "weight_decay": 0.0, "lr": lr})
        group["weight_decay"] = t.weight_decay if decayed else 0.0
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


def not_yet_unfrozen(model: torch.nn.Module, unfreeze_at: dict[str, int] | None, epoch: int) -> list[Any]:
    """Gradual unfreezing: the parameters whose turn has not come. They stay trainable, so DDP wraps and all-reduces
    them from the start and the optimizer holds them; dropping their gradients before each step means AdamW neither
    moves, decays nor keeps moments for them until their epoch."""
    if not unfreeze_at:
        return []
    waiting = [p for name, p in model.named_parameters() if unfreeze_at.get(name, 0) > epoch]
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    logger.info(
        "epoch %d: %d of %d trainable tensors train (strategy.unfreeze_every)",
        epoch,
        trainable - len(waiting),
        trainable,
    )
    return waiting


@dataclass
class Fit:
    """What the loop trains, as the strategy arranged it before the first epoch."""

    model: nn.Module
    """What the loop steps: the model, or its own head on features computed once."""
    saved_model: nn.Module
    """What the output folder holds (the whole model, whose head is the one trained)."""
    encoded: Encoded
    epochs: int
    """0 when the head was fitted in one go (L-BFGS): the loop then only scores it."""
    trained_on: str
    """`inputs`, or `features` (the backbone ran once per example; samples/s then measure the head alone)."""
    fitted: dict[str, float] = field(default_factory=dict)
    """A head fitted in one go: what its fit chose (L-BFGS: C)."""
    unfreeze_at: dict[str, int] | None = None
    """Gradual unfreezing: the epoch from which each trainable parameter trains."""
    loss_weight: torch.Tensor | None = None
    """Class weights of the loop's cross-entropy (`training.class_weights`), when the loop's loss is one."""
    selects_best: bool = True
    """False: no classifier to score between epochs (the loop keeps the last epoch and scores once, at the end)."""
    after_epochs: Callable[[Any], dict[str, float]] | None = None
    """A post-phase after the last epoch (the contrastive head's L-BFGS fit); returns what it chose."""


def plan_fit(
    accelerator: Any,
    recipe: Recipe,
    task: Task,
    model: nn.Module,
    encoded: Encoded,
    preprocessor: Any,
    class_weight: torch.Tensor | None,
    make_cache: Callable[[], FeatureCache | None],
    resume: bool,
) -> Fit:
    """The strategy's pre-phases: LP-FT's head warm-up, and a frozen backbone run once per example so the head trains
    (or, L-BFGS, is fitted) on cached features. Returns what the loop then trains."""
    s, t = recipe.strategy, recipe.training
    eval_batch = t.eval_batch_size or t.batch_size * 2
    if s.kind in FIT_PLANS:
        return FIT_PLANS[s.kind](accelerator, recipe, task, model, encoded, preprocessor, class_weight)
    augments = task.augments(recipe)
    feature_head = None if augments else task.features.head(model)
    if s.head.type == "lbfgs" and feature_head is None:
        why = (
            task.fixed_rows_hint if augments else "this model's classifier is not one linear layer on pooled features"
        )
        raise StrategyError(
            f"strategy.head.type 'lbfgs' fits features computed once per example, but {why} "
            "(or use head.type 'linear')"
        )
    cache = make_cache() if s.warmup_head_epochs or feature_head is not None else None
    if s.warmup_head_epochs and not resume:  # a resumed run restores its warmed-up head
        warm_up_head(
            accelerator,
            model,
            encoded.splits["train"],
            preprocessor,
            eval_batch,
            cache,
            recipe,
            class_weight,
            task.features,
        )
    if feature_head is None:
        if augments and s.kind == "head":
            logger.info("train rows change every epoch (augmentation): the frozen backbone runs every epoch")
        unfreeze_at = unfreeze_schedule(model, recipe)
        return Fit(model, model, encoded, t.epochs, "inputs", unfreeze_at=unfreeze_at, loss_weight=class_weight)
    # Feature extraction proper: the frozen backbone runs once per example, not once per example per epoch.
    model.to(accelerator.device)
    extractor = task.features
    features = feature_datasets(
        accelerator,
        model,
        encoded.splits,
        preprocessor,
        eval_batch,
        extractor.extract,
        cache,
        vectors=extractor.vectors,
        head_rows=extractor.head_rows,
    )
    collate = extractor.collate or collate_features
    fit = Fit(feature_head, model, Encoded(features, collate), t.epochs, "features", loss_weight=class_weight)
    if s.head.type == "lbfgs":  # fitted in one go: the loop has no epochs left to run
        weights = None if class_weight is None else dict(enumerate(class_weight.tolist()))
        metric = t.metric_for_best or task.metric_for_best
        fit.fitted = fit_logistic_head(
            accelerator, feature_head.classifier, features["train"], s.head, weights, metric
        )
        fit.epochs = 0
    return fit


def plan_contrastive(
    accelerator: Any,
    recipe: Recipe,
    task: Task,
    model: nn.Module,
    encoded: Encoded,
    preprocessor: Any,
    class_weight: torch.Tensor | None,
) -> Fit:
    """The contrastive phase: the loop steps the encoder under the contrastive loss, its batches in class blocks
    (ClassBlockSampler), and keeps the last epoch; then the head is fitted with L-BFGS on the tuned features."""
    s, t = recipe.strategy, recipe.training
    eval_batch = t.eval_batch_size or t.batch_size * 2
    global_batch = t.batch_size * accelerator.num_processes  # one forward pass: the rows one loss compares
    if global_batch % s.class_block:
        raise StrategyError(
            f"strategy.class_block = {s.class_block} must divide the batch of {global_batch} rows "
            "(training.batch_size × processes), so that no block of one class is cut between batches"
        )
    labels = list(encoded.splits["train"]["label"])
    if global_batch // s.class_block < 2 and len(set(labels)) > 1:
        raise StrategyError(
            f"a batch of {global_batch} rows in blocks of {s.class_block} holds one class only; raise "
            "training.batch_size or lower strategy.class_block"
        )

    def sampler(generator: torch.Generator) -> ClassBlockSampler:
        return ClassBlockSampler(labels, s.class_block, epoch_rows(s.epoch_rows, len(labels)), generator)

    train_model = ContrastiveModel(model, s.loss, s.margin)
    metric = t.metric_for_best or task.metric_for_best

    def fit_head(acc: Any) -> dict[str, float]:
        return fit_head_on_tuned_features(
            acc, model, encoded.splits["train"], preprocessor, eval_batch, recipe, class_weight, metric
        )

    batches = Encoded(encoded.splits, encoded.collator, sampler=sampler)
    return Fit(train_model, model, batches, t.epochs, "inputs", selects_best=False, after_epochs=fit_head)


STRATEGY_RULES: dict[str, Callable[[PreTrainedModel, Recipe, Task], None]] = {"contrastive": check_contrastive}
"""A strategy's own rules on the task and the model, checked before anything trains."""
FIT_PLANS: dict[str, Callable[..., Fit]] = {"contrastive": plan_contrastive}
"""A strategy's own plan of what the loop trains, in place of the shared one (frozen features, LP-FT)."""
