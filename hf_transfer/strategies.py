"""STRATEGIES: how much of the pretrained network trains; each is a `model → model` transform before the loop."""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn
from transformers import PreTrainedModel

from .errors import StrategyError
from .pooled import is_pooled
from .recipe import Recipe

logger = logging.getLogger(__name__)

HEAD_MODULE_NAMES = ("classifier", "pooler", "pre_classifier", "score")
"""Modules a checkpoint did not train for this task: the classifier, and BERT's pooler / DistilBERT's pre_classifier
(untrained in sentence-transformers checkpoints). They train in every strategy."""

DEFAULT_PARTIAL_LAYERS = 3


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level names of the head modules present in this model (e.g. `classifier`, `bert.pooler`)."""
    found = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in HEAD_MODULE_NAMES and module is not None and any(True for _ in module.parameters()):
            if not any(name.startswith(parent + ".") for parent in found):
                found.append(name)
    return found


STACK_NAMES = ("layer", "layers", "blocks", "stages", "h")
"""Names of a backbone's stack of repeated blocks: BERT/ViT `encoder.layer`, ResNet/ConvNeXt `encoder.stages`, timm
`blocks`, GPT `h`, Llama `layers`."""


def encoder_layers(model: nn.Module) -> tuple[str, nn.Module]:
    """What a "layer" is: one block of the backbone's stack of repeated blocks, counted from the top (output side).
    The stack is the outermost ModuleList/Sequential with a stack name (`STACK_NAMES`): BERT's and ViT's
    `encoder.layer` (a transformer layer), ResNet's and ConvNeXt's `encoder.stages` (a stage of residual blocks),
    timm EfficientNet's `blocks` (a stage of 1–4 inverted-residual blocks). Otherwise the longest ModuleList."""
    named = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList | nn.Sequential)
        and len(module) > 1
        and name.rsplit(".", 1)[-1] in STACK_NAMES
    ]
    if named:
        return min(named, key=lambda item: item[0].count("."))
    best: tuple[str, nn.Module] | None = None
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
    if recipe.strategy.head.type == "lbfgs" and recipe.task not in ("text-classification", "image-classification"):
        raise StrategyError(
            f"strategy.head.type 'lbfgs' fits single-label classification, not task {recipe.task!r}; "
            "use 'linear' or 'mlp'"
        )
    _freeze_all_but(model, head_module_names(model))
    return model


def apply_partial(model: PreTrainedModel, recipe: Recipe) -> PreTrainedModel:
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


def apply_lora(model: PreTrainedModel, recipe: Recipe) -> nn.Module:
    """Low-rank adapters (PEFT) on the backbone's linear layers; the head trains in full (`modules_to_save`)."""
    from peft import LoraConfig, TaskType, get_peft_model

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
    image_model = "pixel_values" in getattr(model, "main_input_name", "") or recipe.task == "image-classification"
    config = LoraConfig(
        # The sequence-classification wrapper feeds input_ids; an image model takes pixel_values as they come.
        task_type=None if image_model else TaskType.SEQ_CLS,
        r=strategy.r,
        lora_alpha=strategy.alpha or 2 * strategy.r,
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
    if recipe.strategy.warmup_head_epochs and recipe.task == "image-classification":
        raise StrategyError(
            "strategy.warmup_head_epochs (LP-FT) is built for text models only; for images, train a `head` run "
            "first and fine-tune from its output folder (model: that folder)"
        )
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
