"""What the parts of a model are: the head modules a checkpoint did not train for this task, the stack of repeated
layers, and each parameter's depth below the top. Strategies, feature heads and advise read models through it."""

from __future__ import annotations

from torch import nn

from .errors import StrategyError

HEAD_MODULE_NAMES = ("classifier", "pooler", "pre_classifier", "score")
"""Modules a checkpoint did not train for this task: the classifier, and BERT's pooler / DistilBERT's pre_classifier
(untrained in sentence-transformers checkpoints). They train in every strategy."""


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
