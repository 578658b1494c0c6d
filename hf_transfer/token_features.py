"""Per-token features of a frozen backbone: the hidden state of every labelled token (each word's first sub-word,
or every sub-word), computed once per sentence; the head's rows and batches on them; the token head itself."""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorForTokenClassification
from transformers.modeling_outputs import TokenClassifierOutput

from .errors import StrategyError
from .metrics import IGNORED


class TokenFeatureHead(nn.Module):
    """The token classifier's own dropout + classifier on cached token states; its loss is the model's (mean
    cross-entropy over the labelled tokens of the batch)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.config = model.config
        self.dropout = getattr(model, "dropout", None) or nn.Identity()
        self.classifier = model.classifier  # the same module: training it trains the full model's head

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> TokenClassifierOutput:
        logits = self.classifier(self.dropout(features))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORED)
        return TokenClassifierOutput(loss=loss, logits=logits)


def token_feature_head(model: nn.Module) -> nn.Module | None:
    """The head on cached token states, when only the classifier trains (the backbone is frozen); else None."""
    if not hasattr(model, "classifier") or hasattr(model, "peft_config"):
        return None
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    return TokenFeatureHead(model) if trainable == {"classifier"} else None


def token_warmup_head(model: nn.Module) -> nn.Module:
    """The token classifier on cached token states, whatever else trains (LP-FT's warm-up)."""
    if not isinstance(getattr(model, "classifier", None), nn.Module):
        raise StrategyError(
            f"strategy.warmup_head_epochs trains the model's `classifier` on cached token states, and "
            f"{type(model).__name__} has none; leave warmup_head_epochs out"
        )
    return TokenFeatureHead(model)


def labelled_tokens(split: Dataset) -> int:
    """How many token states a split's features hold: one per labelled token."""
    return sum(sum(1 for label in row if label != IGNORED) for row in split["labels"])


@torch.inference_mode()
def extract_token_features(
    accelerator: Accelerator, model: nn.Module, dataset: Dataset, tokenizer: Any, batch_size: int, desc: str
) -> torch.Tensor:
    """The last hidden state of every labelled token, `[labelled tokens, hidden]`, sentences in dataset order.
    Batches are sorted by length (little padding) and shared across processes."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i])
    keep = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    ordered = dataset.select(order).select_columns(keep)
    loader = DataLoader(
        ordered,
        batch_size=batch_size,
        collate_fn=DataCollatorForTokenClassification(tokenizer),
        shuffle=False,
        generator=torch.Generator(),  # not the global RNG: dropout masks after it stay the same cached or not
    )
    loader = accelerator.prepare(loader)
    backbone = getattr(model, model.base_model_prefix)
    model.eval()
    per_sentence: list[torch.Tensor] = []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_main_process):
        labels = batch.pop("labels")
        hidden = backbone(**batch).last_hidden_state
        hidden = accelerator.pad_across_processes(hidden, dim=1)
        labels = accelerator.pad_across_processes(labels, dim=1, pad_index=IGNORED)
        hidden, labels = accelerator.gather_for_metrics((hidden, labels))
        hidden, labels = hidden.float().cpu(), labels.cpu()
        per_sentence += [states[row != IGNORED] for states, row in zip(hidden, labels, strict=True)]
    restored: list[torch.Tensor | None] = [None] * len(order)
    for position, index in enumerate(order):
        restored[index] = per_sentence[position]
    return torch.cat(restored)  # type: ignore[arg-type]


class TokenRows(torch.utils.data.Dataset):
    """One row per sentence: its labelled tokens' states and their tag ids (a view into one flat tensor)."""

    def __init__(self, features: torch.Tensor, labels: list[list[int]]):
        self.features = features
        self.labels = [torch.tensor([label for label in row if label != IGNORED]) for row in labels]
        self.offsets = [0]
        for row in self.labels:
            self.offsets.append(self.offsets[-1] + len(row))
        if self.offsets[-1] != len(features):
            raise ValueError(f"{len(features)} token features for {self.offsets[-1]} labelled tokens")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return {"features": self.features[start:end], "labels": self.labels[index]}


def token_rows(features: torch.Tensor, split: Dataset) -> TokenRows:
    return TokenRows(features, split["labels"])


def collate_token_rows(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Sentences padded to the longest: states with zeros, tags with IGNORED (counted in neither loss nor metrics)."""
    width = max(len(r["labels"]) for r in rows)
    hidden = rows[0]["features"].shape[-1]
    features = torch.zeros(len(rows), width, hidden)
    labels = torch.full((len(rows), width), IGNORED, dtype=torch.long)
    for i, row in enumerate(rows):
        features[i, : len(row["labels"])] = row["features"]
        labels[i, : len(row["labels"])] = row["labels"]
    return {"features": features, "labels": labels}
