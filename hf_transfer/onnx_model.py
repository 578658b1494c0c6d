"""The ONNX export in the torch model's place: called with the tensors a task's `predict` and `scores` feed the torch
model, it answers an object whose `.logits` is a torch tensor, so every task runs unchanged on ONNX Runtime."""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from .run_folder import RunFolder
from .runtimes import OnnxSession, load_onnx_session


class OnnxModel(torch.nn.Module):
    """An `OnnxSession` (guard included) behind the torch model's call: the same keyword tensors in, `.logits` out,
    and the model's `config`. A torch module only so Accelerate and transformers pipelines take it; it holds no
    weights."""

    def __init__(self, onnx: OnnxSession, config: Any) -> None:
        super().__init__()
        self.onnx = onnx
        self.config = config

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def can_generate(self) -> bool:
        return False

    def forward(self, **inputs: Any) -> SequenceClassifierOutput:
        arrays = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        # Only `logits` is read downstream; the transformers output class lets pipelines index it by name too.
        return SequenceClassifierOutput(logits=torch.from_numpy(self.onnx.logits(arrays)))


def multi_label(config: Any) -> bool:
    return getattr(config, "problem_type", None) == "multi_label_classification"


def load_onnx_model(folder: RunFolder, runtime: str, config: Any) -> OnnxModel:
    """The torch stand-in for a runtime `runtimes.choose_runtime` returned, guard included."""
    return OnnxModel(load_onnx_session(folder, runtime, multi_label(config)), config)
