"""STRATEGIES: how much of the pretrained network trains; each is a `model → model` transform before the loop."""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn
from transformers import PreTrainedModel

from .recipe import Recipe
from .tasks import is_pooled

logger = logging.getLogger(__name__)

HEAD_MODULE_NAMES = ("classifier", "pooler", "pre_classifier", "score")
"""Modules a checkpoint did not train for this task: the classifier, and BERT's pooler / DistilBERT's pre_classifier
(untrained in sentence-transformers checkpoints). They train in every strategy."""

DEFAULT_PARTIAL_LAYERS = 3


class StrategyError(ValueError):
    """A strategy setting that does not fit the model; the message names the recipe key."""


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level names of the head modules present in this model (e.g. `classifier`, `bert.pooler`)."""
    found = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in HEAD_MODULE_NAMES and module is not None and any(True for _ in module.parameters()):
            if not any(name.startswith(parent + ".") for parent in found):
                found.append(name)
    return found


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """What a "layer" is: the blocks of the backbone's longest stack of repeated modules — BERT's `encoder.layer`,
    DistilBERT's `transformer.layer`, GPT-style `h`/`layers`. Counting goes from the top (output side)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and not name.endswith(HEAD_MODULE_NAMES):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise StrategyError(f"cannot find the stack of layers in {type(model).__name__} for strategy.kind 'partial'")
    return best


def parameter_depths(model: nn.Module) -> dict[str, int]:
    """Every parameter's depth below the top, in layers (see `encoder_layers`): 0 for the head and whatever follows
    the stack, d for the d-th layer from the top (1 = the top layer), L + 1 for what precedes the stack
    (embeddings). Registration order tells what precedes from what follows."""
    stack_name, stack = encoder_layers(model)
    heads = head_module_names(model)
    depths, after_stack = {}, False
    for name, _ in model.named_parameters():
        if name.startswith(stack_name + "."):
            depths[name] = len(stack) - int(name[len(stack_name) + 1 :].split(".", 1)[0])
            after_stack = True
        elif after_stack or any(name.startswith(head + ".") for head in heads):
            depths[name] = 0
        else:
            depths[name] = len(stack) + 1
    return depths


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


def apply_head(model: PreTrainedModel, recipe: Recipe) -> PreTrainedModel:
    """Feature extraction: the backbone is frozen, only the head trains."""
    if recipe.strategy.head.type == "lbfgs" and recipe.task != "text-classification":
        raise StrategyError(
            f"strategy.head.type 'lbfgs' fits single-label classification, not task {recipe.task!r}; "
            "use 'linear' or 'mlp'"
        )
    _freeze_all_but(model, head_module_names(model))
    return model


def apply_partial(model: PreTrainedModel, recipe: Recipe) -> PreTrainedModel:
    """Unlock the last N layers of the backbone (+ the head); N = strategy.layers."""
    count = recipe.strategy.layers or DEFAULT_PARTIAL_LAYERS
    stack_name, stack = encoder_layers(model)
    if count > len(stack):
        raise StrategyError(f"strategy.layers = {count} but {recipe.model!r} has only {len(stack)} layers")
    unlocked = [f"{stack_name}.{i}" for i in range(len(stack) - count, len(stack))]
    _freeze_all_but(model, unlocked + head_module_names(model))
    return model


def apply_lora(model: PreTrainedModel, recipe: Recipe) -> nn.Module:
    """Low-rank adapters (PEFT) on the backbone's linear layers; the head trains in full (`modules_to_save`)."""
    from peft import LoraConfig, TaskType, get_peft_model

    strategy = recipe.strategy
    targets = strategy.target_modules or "all-linear"
    heads = sorted({name.rsplit(".", 1)[-1] for name in head_module_names(model)})
    if isinstance(targets, list):
        linear_names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear_names)]
        if unmatched:
            examples = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
            raise StrategyError(
                f"strategy.target_modules {unmatched} match no linear layer of {recipe.model!r}; "
                f"linear layer names: {examples}"
            )
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=strategy.r,
        lora_alpha=strategy.alpha or 2 * strategy.r,
        lora_dropout=strategy.dropout,
        target_modules=targets,
        modules_to_save=heads,
    )
    return get_peft_model(model, config)


def apply_full(model: PreTrainedModel, recipe: Recipe) -> PreTrainedModel:
    """Everything trains."""
    for parameter in model.parameters():
        parameter.requires_grad = True
    return model


STRATEGIES: dict[str, Callable[[PreTrainedModel, Recipe], nn.Module]] = {
    "head": apply_head,
    "partial": apply_partial,
    "lora": apply_lora,
    "full": apply_full,
}


def apply_strategy(model: PreTrainedModel, recipe: Recipe) -> nn.Module:
    """The only strategy-dependent step: returns the model with exactly the chosen parameters trainable."""
    if recipe.training.layer_lr_decay and recipe.strategy.kind == "head":
        raise StrategyError("training.layer_lr_decay applies to kinds 'partial', 'lora' and 'full', not 'head'")
    if recipe.strategy.warmup_head_epochs and not is_pooled(model):
        raise StrategyError(
            "strategy.warmup_head_epochs trains the head on pooled features: set strategy.pooling to 'mean' or 'cls'"
        )
    model = STRATEGIES[recipe.strategy.kind](model, recipe)
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
