"""ONNX Runtime's fused transformer operators in a token model's exported graph, kept only where they keep its logits.

onnxscript's `optimize_for_ort` rewrites what torch.onnx's dynamo exporter writes into ONNX Runtime's contrib
operators: one `Attention` per layer (the Q, K and V projections packed into one matmul, then the scaled dot-product,
the softmax and the weighted sum in one kernel) and `BiasGelu`. It also writes `SkipLayerNormalization`, which is
undone here: ONNX Runtime 1.32's CPU kernel for it took 21 % of the int8 MiniLM's time over SST-2 test, the plain
Add and LayerNormalization it stands for 8 % (3.70 s against 4.47 s in all, 5 alternating runs). Two more steps let
the int8 quantiser take each fused attention whole (`QAttention`: the packed projection in int8 inside the same
kernel): the packed weight is folded into one initializer (the fusion leaves it as a Concat of three), and the padding
mask goes in as the key-padding `mask_index` (the graph's `attention_mask` as int32) instead of the additive bias the
exporter builds from it, which QAttention has no input for.

Every step is checked rather than trusted: the caller's `keeps(path)` (PyTorch's logits within the fp32 tolerance on
the recorded batches, padding included) decides. A graph whose mask rewrite does not keep them (a causal model's mask
is more than padding) is kept without it; one whose fusions do not, or that the rewriter cannot read, stays as
exported."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import one_line

logger = logging.getLogger(__name__)

CONTRIB_DOMAIN = "com.microsoft"
MASK_INPUT = "attention_mask"
MASK_INDEX = "attention_mask_int32"
ATTENTION_BIAS = 5
"""The position of `Attention`'s additive bias input (after input, weights, bias, mask_index, past)."""
NO_SIZE_LIMIT = 1 << 31
"""Constant folding's size limits, lifted: a packed Q/K/V weight (hidden × 3·hidden) is far past the defaults."""


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """The rewriter and the quantiser log each step on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def fused_graph(path: Path) -> Any:
    """The graph at `path` with ONNX Runtime's fused operators and every constant folded, as an onnx ModelProto."""
    import onnx_ir
    from onnxscript.optimizer import fold_constants
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, _ = optimize_for_ort(onnx_ir.load(path))
    fold_constants(model, input_size_limit=NO_SIZE_LIMIT, output_size_limit=NO_SIZE_LIMIT)
    proto = onnx_ir.to_proto(model)
    split_skip_layer_norms(proto)
    return proto


def split_skip_layer_norms(proto: Any) -> int:
    """Write each `SkipLayerNormalization` back as the Add (input + skip, + bias) and LayerNormalization it fuses,
    in place (see the module's docstring for why); one whose mean or inverse-deviation output is read stays. Returns
    how many were split."""
    from onnx import helper

    graph = proto.graph
    read = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    nodes, split = [], 0
    for node in graph.node:
        outputs = [*node.output, "", "", ""][:4]
        if (
            node.op_type != "SkipLayerNormalization"
            or node.domain != CONTRIB_DOMAIN
            or read & set(outputs[1:3]) - {""}
        ):
            nodes.append(node)
            continue
        x, skip, gamma, beta, bias = [*node.input, "", ""][:5]
        name = node.name or outputs[0]
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        total = outputs[3] if outputs[3] in read else f"{node.output[0]}_skip_sum"
        summed = f"{total}_no_bias" if bias else total
        nodes.append(helper.make_node("Add", [x, skip], [summed], name=f"{name}_add"))
        if bias:
            nodes.append(helper.make_node("Add", [summed, bias], [total], name=f"{name}_add_bias"))
        norm_inputs = [total, gamma, beta] if beta else [total, gamma]
        nodes.append(
            helper.make_node("LayerNormalization", norm_inputs, [outputs[0]], name=name, axis=-1, epsilon=epsilon)
        )
        split += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return split


def use_mask_index(proto: Any) -> int:
    """Give each fused `Attention` the graph's `attention_mask` as its key-padding `mask_index` in place of the
    additive bias, and drop a `qkv_hidden_sizes` that only repeats the default (equal sizes), in place: what
    QAttention can take. Returns how many nodes were rewired (0: no such input, or nothing to rewire)."""
    from onnx import TensorProto, helper

    graph = proto.graph
    if MASK_INPUT not in {value.name for value in graph.input}:
        return 0
    rewired = 0
    for node in graph.node:
        if node.op_type != "Attention" or node.domain != CONTRIB_DOMAIN:
            continue
        inputs = list(node.input)
        sizes = next((list(a.ints) for a in node.attribute if a.name == "qkv_hidden_sizes"), None)
        if len(inputs) <= ATTENTION_BIAS or not inputs[ATTENTION_BIAS] or any(inputs[3:ATTENTION_BIAS]):
            continue
        if sizes is not None and len(set(sizes)) != 1:
            continue
        kept = [a for a in node.attribute if a.name != "qkv_hidden_sizes"]
        del node.attribute[:]
        node.attribute.extend(kept)
        del node.input[:]
        node.input.extend([*inputs[:3], MASK_INDEX])
        rewired += 1
    if rewired:
        cast = helper.make_node("Cast", [MASK_INPUT], [MASK_INDEX], name="mask_index_from_attention_mask")
        cast.attribute.append(helper.make_attribute("to", TensorProto.INT32))
        graph.node.insert(0, cast)
    return rewired


def fused_operators(proto: Any) -> dict[str, int]:
    """How many of each ONNX Runtime contrib operator the graph holds."""
    return dict(sorted(Counter(n.op_type for n in proto.graph.node if n.domain == CONTRIB_DOMAIN).items()))


def fuse(path: Path, keeps: Callable[[Path], bool]) -> dict[str, Any]:
    """Replace the exported text graph at `path` by its fused form when `keeps` says that form gives PyTorch's logits
    (with the mask rewrite when it does too); returns what was fused — the contrib `operators` counted, and whether the
    attentions take `mask_index` (`attention_mask_index`) — or {} when the graph stays as exported."""
    try:
        import onnx
    except ImportError:
        return {}
    trial = path.with_name(f"{path.stem}.fusing{path.suffix}")
    try:
        with quiet_root_logger():
            proto = fused_graph(path)
        candidates = [proto]
        rewired = onnx.ModelProto()
        rewired.CopyFrom(proto)
        if use_mask_index(rewired):
            candidates.insert(0, rewired)
        for candidate in candidates:
            onnx.save(candidate, trial)
            if keeps(trial):
                operators = fused_operators(candidate)
                if not operators:
                    return {}
                os.replace(trial, path)
                return {"operators": operators, "attention_mask_index": candidate is rewired}
            logger.info("%s: a fused graph gave other logits than PyTorch's; trying the next", path.name)
        logger.warning("ONNX Runtime's fusions did not keep the logits; the graph stays as exported")
        return {}
    except Exception as error:  # the rewriter's many failure kinds: keep the graph as exported, and say why
        logger.warning("ONNX Runtime's fusions did not apply (%s); the graph stays as exported", one_line(error))
        return {}
    finally:
        trial.unlink(missing_ok=True)
