"""Frozen-backbone features: run the backbone once, then train the head on the pooled features instead of the text."""

from __future__ import annotations

import logging
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset, DatasetDict
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding
from transformers.modeling_outputs import SequenceClassifierOutput

from .tasks import is_pooled

logger = logging.getLogger(__name__)


def can_use_cached_features(model: nn.Module) -> bool:
    """True when everything below the classifier is frozen and deterministic: the project's pooled head model with
    only `classifier` trainable. Then one forward pass per example replaces one per example per epoch."""
    if not is_pooled(model):
        return False
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    return trainable == {"classifier"}


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


@torch.inference_mode()
def extract_features(
    accelerator: Accelerator, model: nn.Module, dataset: Dataset, tokenizer: Any, batch_size: int, desc: str
) -> torch.Tensor:
    """Pooled features for every row, in dataset order. Batches are sorted by length (little padding) and shared
    across processes; `gather_for_metrics` returns each row exactly once."""
    lengths = dataset["length"]
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i])
    not_inputs = [c for c in ("labels", "label", "length") if c in dataset.column_names]
    ordered = dataset.select(order).remove_columns(not_inputs)
    loader = accelerator.prepare(
        DataLoader(ordered, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer), shuffle=False)
    )
    backbone = getattr(model, model.base_model_prefix)
    pooled_model = accelerator.unwrap_model(model)
    model.eval()
    chunks = []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_main_process):
        hidden = backbone(**batch).last_hidden_state
        chunks.append(accelerator.gather_for_metrics(pooled_model.pool(hidden, batch.get("attention_mask"))).cpu())
    features = torch.cat(chunks).float()
    restored = torch.empty_like(features)
    restored[torch.tensor(order)] = features
    return restored


def feature_datasets(
    accelerator: Accelerator, model: nn.Module, tokenized: DatasetDict, tokenizer: Any, batch_size: int
) -> DatasetDict:
    """Every split as `features` + `labels`, computed once with the frozen backbone."""
    splits = {}
    for name, split in tokenized.items():
        features = extract_features(accelerator, model, split, tokenizer, batch_size, f"features: {name}")
        splits[name] = Dataset.from_dict({"features": features.numpy(), "labels": split["label"]})
        logger.info("computed %d feature vectors for split %r", len(split), name)
    return DatasetDict(splits).with_format("torch")


def collate_features(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"features": torch.stack([r["features"] for r in rows]), "labels": torch.stack([r["labels"] for r in rows])}
